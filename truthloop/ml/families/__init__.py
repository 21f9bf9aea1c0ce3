"""The torch side of each model family (families.py is its table): one module per family.

A generator family's module (sdxl, flux2_klein, z_image) gives
    TINY_VERSION: int                       bump when build_tiny's recipe changes
    dtype(device) -> torch.dtype            what it computes in on that device
    build_tiny(out: Path) -> None           a random-weight pipeline, save_pretrained(out)
    pipeline_kwargs(config) -> dict         the family's own call arguments (beyond prompt,
                                            steps, guidance, size, generator, callback)
    latent_rgb(pipe, latents) -> (w, h, rgb bytes) | None   a cheap live preview, or None
    full_size(device, dtype) -> pipeline    the real architecture, random weights (benchmarks)
and `painting.py` loads and runs it through the library's own pipeline.

A captioner family's module (blip, florence2, llava, qwen3_vl) gives
    TINY_VERSION, dtype(device), build_tiny(out)
    load(path, dtype) -> (model, processor)                 from_pretrained, nothing else
                                                            (captioning.pretrained makes it)
    caption(model, processor, image, instruction, max_new_tokens, generate=None) -> str
                                            decoded as the model's generation config says (the
                                            checkpoint's; captioning.FamilyCaptioner turns
                                            sampling off) by `generate` (None: model.generate;
                                            the fast path's: fastdecode.FastDecoding.generate)
    caption_batch(model, processor, images, instruction, max_new_tokens, generate=None)
        -> list[str]                        the same call for several images in one generate
                                            (prompts padded on the left)
    full_size(device, dtype) -> (model, processor)          (benchmarks)
and `captioning.py` loads and runs it (`fastdecode.py`: the static KV cache, the graphed
decode steps and truthloop's greedy loop it runs `generate` with).

A unified family's module (janus_pro) is both: the captioner's functions, and for its generator
side (families.GeneratorFamily.autoregressive: a transformers model drawn token by token, not a
diffusers pipeline)
    image_tokens(model) -> int              the forward passes an image takes
    draw(model, processor, prompt, guidance, on_token, generation_config) -> PIL image
    drawing_from(generator, device)         a context: the run's random stream is the one the
                                            library samples from
and `painting.py`'s TokenPainter runs it; ml/backends.py loads it once for both sides.

The sd generator and the clip-interrogator captioner keep their own modules (ml/models.py,
ml/generate.py, ml/interrogate.py and the fast paths).
"""

from __future__ import annotations

import importlib
from types import ModuleType

GENERATOR_MODULES = {
    "sdxl": "truthloop.ml.families.sdxl",
    "flux2-klein": "truthloop.ml.families.flux2_klein",
    "z-image": "truthloop.ml.families.z_image",
    "janus-pro": "truthloop.ml.families.janus_pro",
}
CAPTIONER_MODULES = {
    "blip": "truthloop.ml.families.blip",
    "florence-2": "truthloop.ml.families.florence2",
    "llava-1.5": "truthloop.ml.families.llava",
    "qwen3-vl": "truthloop.ml.families.qwen3_vl",
    "janus-pro": "truthloop.ml.families.janus_pro",
}


def generator_module(name: str) -> ModuleType:
    return importlib.import_module(GENERATOR_MODULES[name])


def captioner_module(name: str) -> ModuleType:
    return importlib.import_module(CAPTIONER_MODULES[name])
