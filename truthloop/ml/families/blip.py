"""BLIP alone: BlipForConditionalGeneration's unconditional caption (no text prompt), greedy (its
text decoder's generation config asks for one beam and no sampling).

clip-interrogator's caption is this caption plus CLIP-ranked flavor phrases; this family stops at
the caption. The model card's plain usage: `processor(image, return_tensors="pt")`, `generate`,
`processor.decode(out[0], skip_special_tokens=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.ml.families.captioning import pretrained

TINY_VERSION = 1

# BLIP-large's config.json (read 2026-12-06; the repo's config names only what differs from
# transformers' Blip*Config defaults, which are BLIP-base's text decoder and a ViT at 384):
# https://huggingface.co/Salesforce/blip-image-captioning-large/blob/main/config.json
_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
               num_attention_heads=16, image_size=384, patch_size=16, projection_dim=512,
               dropout=0.0)
_TEXT = dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
             num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
             bos_token_id=30522, eos_token_id=2, pad_token_id=0, sep_token_id=102)
# The processor's preprocessor_config.json: 384x384, CLIP's mean and std.
_IMAGE = dict(size={"height": 384, "width": 384},
              image_mean=[0.48145466, 0.4578275, 0.40821073],
              image_std=[0.26862954, 0.26130258, 0.27577711])


def dtype(device: str) -> Any:
    import torch

    # clip-interrogator and the model card's GPU example run it in float16.
    return torch.float16 if device == "cuda" else torch.float32


def build_tiny(out: Path) -> None:
    """The tiny BLIP clip-interrogator's tiny stack uses (tiny.py builds it; one BLIP for both)."""
    from truthloop.ml.tiny import _build_blip

    _build_blip(out)


load = pretrained("BlipForConditionalGeneration", "BlipProcessor")


def caption(model: Any, processor: Any, image: Any, instruction: str,
            max_new_tokens: int, generate: Any = None) -> str:
    """The unconditional caption (BLIP takes no instruction), as the model card calls it."""
    inputs = processor(images=image, return_tensors="pt").to(model.device, model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    return processor.decode(tokens[0], skip_special_tokens=True)


def caption_batch(model: Any, processor: Any, images: list[Any], instruction: str,
                  max_new_tokens: int, generate: Any = None) -> list[str]:
    """`caption`'s call for several images in one `generate` (every caption starts from the
    same [DEC] token, so nothing pads)."""
    inputs = processor(images=images, return_tensors="pt").to(model.device, model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    return processor.batch_decode(tokens, skip_special_tokens=True)


def _full_vocab(out: Path) -> Path:
    """A BERT vocabulary of BLIP's 30524 ids with the special tokens at their real ids ([PAD] 0,
    [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, [DEC] 30522, [ENC] 30523) and English words
    from CLIP's BPE list (open_clip ships it) in between: any id the decoder emits decodes."""
    from truthloop.ml.families.building import clip_words

    size = 30524
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += clip_words()[: size - 2 - len(vocab)]
    vocab += [f"[unused{i}]" for i in range(99, 99 + size - 2 - len(vocab))]
    vocab += ["[DEC]", "[ENC]"]
    path = out / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def full_size(device: str, dtype: Any) -> tuple[Any, Any]:
    """BLIP-large with random weights on `device` (benchmarks): ViT-L/16 at 384 and a 12-layer
    BERT decoder, 446.3 M distinct parameters (the hub's 1.88 GB float32 file, 469.7 M, stores
    the decoder's output layer, tied to its input embedding, a second time)."""
    import tempfile

    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    from truthloop.ml.families.building import made_then_cast

    config = BlipConfig(vision_config=_VISION, text_config=_TEXT, projection_dim=512,
                        image_text_hidden_size=256)
    model = made_then_cast(BlipForConditionalGeneration, config, device, dtype)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = BertTokenizer(str(_full_vocab(Path(scratch))), do_lower_case=True,
                                  bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(**_IMAGE), tokenizer=tokenizer)
    return model, processor
