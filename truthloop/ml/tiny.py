"""Tiny random-weight checkpoints, built offline on disk, loaded through the real loading path.

They exercise every library call the real stack makes (diffusers' StableDiffusionPipeline,
transformers' BLIP, open_clip's CLIP inside clip-interrogator) in seconds on a CPU. Their weights
are random: they show the machinery, not any truth. `build_tiny_models` writes them once into the
user cache; `models.py` then loads them exactly as it loads hub ids or local directories.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from truthloop.paths import cache_dir

# Bump when the recipe changes, so an old cache is rebuilt rather than silently reused.
TINY_VERSION = 3
TINY_CLIP_ARCH = "truthloop-tiny-clip"
TINY_SEED = 0

# Words the tiny BLIP can say. Random weights pick among them, so captions look like text and carry
# the odd tokens ("arafed") real BLIP output has.
_TINY_WORDS = (
    "a an the of on in with and at by man woman dog cat car house tree sky sea field golf course "
    "train office worker phone photo painting portrait stock white background standing sitting "
    "looking red blue green yellow black old young small large arafed there is two people street "
    "city mountain river flower fruit bowl table window light dark night day fire extinguisher "
    "sports close up view"
).split()


@dataclass(frozen=True)
class TinyModels:
    """Where the tiny checkpoints are, in the forms the real loaders take."""

    root: Path
    generator_model: str        # a diffusers directory (StableDiffusionPipeline.save_pretrained)
    caption_model: str   # a transformers directory (BLIP model + processor)
    clip_model: str      # "ARCH/checkpoint-file", as for any open_clip model


def tiny_root() -> Path:
    return cache_dir() / f"tiny-v{TINY_VERSION}"


def build_tiny_models(root: Path | None = None) -> TinyModels:
    """Build the tiny checkpoints if missing (a few seconds, offline) and return their locations."""
    root = Path(root) if root is not None else tiny_root()
    _build_once(root, _build_all)
    register_tiny_clip(root)
    return TinyModels(
        root=root,
        generator_model=str(root / "sd"),
        caption_model=str(root / "blip"),
        clip_model=f"{TINY_CLIP_ARCH}/{root / 'clip' / 'open_clip_model.safetensors'}",
    )


def tiny_family_model(kind: str, family: str, root: Path | None = None) -> str:
    """The tiny checkpoint of a generator or captioner family (`kind`: "generator" or
    "captioner"), built on first use beside the sd + clip-interrogator ones."""
    tiny = build_tiny_models(root)
    if kind == "generator" and family == "sd":
        return tiny.generator_model
    if kind == "captioner" and family in ("clip-interrogator", "blip"):
        return tiny.caption_model  # BLIP alone is clip-interrogator's BLIP
    from truthloop.ml.families import captioner_module, generator_module

    module = generator_module(family) if kind == "generator" else captioner_module(family)
    out = tiny.root / "families" / f"{family}-v{module.TINY_VERSION}"
    _build_once(out, module.build_tiny)
    return str(out)


def tiny_embedder_model(name: str, version: int, build: Any, root: Path | None = None) -> str:
    """The tiny checkpoint of a named drift embedder (ml/embedders.py: `build(dir, tiny_root)`,
    `version` its recipe's), built on first use beside the sd + clip-interrogator ones."""
    tiny = build_tiny_models(root)
    out = tiny.root / "embedders" / f"{name}-v{version}"
    _build_once(out, lambda staging: build(staging, tiny.root))
    return str(out)


def tiny_words() -> list[str]:
    """The words the tiny BLIP can say, each once, in order: a tiny text model's vocabulary."""
    return sorted(set(_TINY_WORDS))


def _build_once(root: Path, build: Any) -> None:
    """Run `build(dir)` into `root` unless it is complete already."""
    done = root / "COMPLETE"
    if done.exists():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename: a killed build never leaves a half model behind,
    # and two processes racing both end with a complete directory.
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        import torch

        torch.manual_seed(TINY_SEED)
        build(staging)
        (staging / "COMPLETE").write_text("ok\n")
        try:
            os.replace(staging, root)
        except OSError:
            if not done.exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def register_tiny_clip(root: Path) -> None:
    """Make the tiny architecture known to open_clip by name, as its built-in configs are."""
    import open_clip

    config_dir = root / "clip" / "configs"
    if TINY_CLIP_ARCH not in open_clip.list_models():
        open_clip.add_model_config(config_dir)


def _build_all(root: Path) -> None:
    import torch

    torch.manual_seed(TINY_SEED)
    tokenizer_dir = root / "clip-tokenizer"
    _write_clip_tokenizer(tokenizer_dir)
    _build_sd(root / "sd", tokenizer_dir)
    _build_blip(root / "blip")
    _build_clip(root / "clip")


def _write_clip_tokenizer(out: Path) -> None:
    """open_clip ships CLIP's BPE vocabulary; write it in the files transformers' CLIPTokenizer reads.

    Same ids as open_clip's tokenizer, so the SD text encoder and the CLIP ranker see one vocabulary.
    """
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    out.mkdir(parents=True, exist_ok=True)
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): index for token, index in simple.encoder.items()}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(simple.bpe_ranks.items(), key=lambda item: item[1])
    lines = ["#version: 0.2"] + [f"{a} {b}" for (a, b), _ in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _build_sd(out: Path, tokenizer_dir: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # Shaped like SD2: v-prediction with DDIM, a VAE that downsamples, cross-attention on the text.
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            projection_dim=32,
        )
    )
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                              model_max_length=77)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


def _build_blip(out: Path) -> None:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", ","]
    words = specials + sorted(set(_TINY_WORDS))
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    ids = {word: index for index, word in enumerate(words)}
    image_processor = BlipImageProcessor(
        size={"height": 32, "width": 32},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
            image_size=32, patch_size=8, projection_dim=32,
        ),
        text_config=dict(
            vocab_size=len(words), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
            num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64,
            projection_dim=32, bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"],
            pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"],
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    model = BlipForConditionalGeneration(config)
    # Random init puts every logit near zero and greedy decoding would repeat one token; a wider
    # output layer makes the tiny captions vary with the image, as real ones do.
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _build_clip(out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{TINY_CLIP_ARCH}.json").write_text(json.dumps(model_cfg, indent=2))
    model = open_clip.CLIP(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=open_clip.CLIPVisionCfg(**model_cfg["vision_cfg"]),
        text_cfg=open_clip.CLIPTextCfg(**model_cfg["text_cfg"]),
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
