"""Full-size random-weight checkpoints of the seed stack, built offline (no downloads).

Same architectures as the default models in truthloop.model_ids (SD2 at 768, v-prediction; BLIP
large; open_clip ViT-L-14), so FLOPs and memory are the real ones; the weights are
random, so captions and images mean nothing. They are written to disk and then loaded through
truthloop.ml.models, the same path real ids take.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def build_all(root: Path, log=print) -> dict[str, str]:
    root = Path(root)
    done = root / "COMPLETE"
    paths = {"sd": str(root / "sd2"), "blip": str(root / "blip-large"),
             "clip": f"ViT-L-14/{root / 'vit-l-14' / 'open_clip_model.safetensors'}"}
    if done.exists():
        return paths
    import torch

    torch.manual_seed(0)
    from truthloop.ml.tiny import _write_clip_tokenizer

    tokenizer_dir = root / "clip-tokenizer"
    _write_clip_tokenizer(tokenizer_dir)
    for name, build in (("sd2", _build_sd2), ("blip-large", _build_blip_large),
                        ("vit-l-14", _build_vit_l14)):
        start = time.perf_counter()
        build(root / name, tokenizer_dir)
        log(f"built {name} in {time.perf_counter() - start:.1f}s")
    done.write_text("ok\n")
    return paths


def build_family(root: Path, role: str, family: str, log=print) -> str:
    """A generator or captioner family's full-size architecture with random weights, written
    with the library's own save_pretrained to ROOT/FAMILY (once), for runs that load it from
    disk as a real checkpoint is loaded (`--generator-model DIR`, `--caption-model DIR`)."""
    out = Path(root) / family
    if (out / "COMPLETE").exists():
        return str(out)
    import torch

    from truthloop.ml.families import captioner_module, generator_module

    start = time.perf_counter()
    device = _init_device()
    if role == "generator":
        module = generator_module(family)
        module.full_size(device, module.dtype("cuda")).save_pretrained(out)
    else:
        module = captioner_module(family)
        model, processor = module.full_size(device, module.dtype("cuda"))
        model.save_pretrained(out)
        processor.save_pretrained(out)
    del module
    if device == "cuda":
        torch.cuda.empty_cache()
    (out / "COMPLETE").write_text("ok\n")
    log(f"built {family} in {time.perf_counter() - start:.1f}s")
    return str(out)


def _init_device():
    import torch

    # Random init of ~2 B parameters is minutes on a CPU and seconds on a GPU.
    return "cuda" if torch.cuda.is_available() else "cpu"


def _build_sd2(out: Path, tokenizer_dir: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    device = _init_device()
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                              "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                            "CrossAttnUpBlock2D"),
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True, upcast_attention=False,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=768,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
            projection_dim=512, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
        ))
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                              model_max_length=77, pad_token="!")
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
    )
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out)


def _bert_vocab(size: int) -> list[str]:
    """A BERT-style vocab of `size` entries with real English word pieces (from CLIP's BPE list)."""
    from open_clip.tokenizer import SimpleTokenizer

    words = []
    seen = set()
    for token in SimpleTokenizer().encoder:
        if token.endswith("</w>"):
            word = token[:-4]
            if word.isalpha() and word.isascii() and word not in seen:
                seen.add(word)
                words.append(word)
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += words[: size - 2 - len(vocab)]
    vocab += [f"[unused{i}]" for i in range(99, 99 + size - 2 - len(vocab))]
    return vocab + ["[DEC]", "[ENC]"]


def _build_blip_large(out: Path, tokenizer_dir: Path) -> None:
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    out.mkdir(parents=True, exist_ok=True)
    vocab = _bert_vocab(30524)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(
            size={"height": 384, "width": 384},
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711]),
        tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=384, patch_size=16,
                           projection_dim=512),
        text_config=dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024,
                         intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=512, bos_token_id=30522, eos_token_id=2,
                         pad_token_id=0, sep_token_id=102),
        projection_dim=512,
    )
    with torch.device(_init_device()):
        model = BlipForConditionalGeneration(config)
    model.to(torch.float16).save_pretrained(out)
    processor.save_pretrained(out)


def _build_vit_l14(out: Path, tokenizer_dir: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model = open_clip.create_model("ViT-L-14", pretrained=None, device=_init_device())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
