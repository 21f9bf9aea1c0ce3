"""The model families a loop can pair: which generator draws, which captioner describes.

Core only (imports neither torch nor Textual): the CLI's choices and help, `truthloop models`,
config validation and each family's defaults read from here. The torch side of each family lives
in `ml/families/`; hub ids live in `model_ids.py`.

A family's defaults are the settings its makers publish for its default checkpoint (steps,
guidance, size, negative prompt; a caption instruction and length). They are written into the
run's config when the run starts, so `run.json` records what was used and resume rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from truthloop.model_ids import CAPTIONER_MODEL_IDS, GENERATOR_MODEL_IDS

# The seed article's pair: everything that was there before families (fast paths included).
DEFAULT_GENERATOR = "sd"
DEFAULT_CAPTIONER = "clip-interrogator"


@dataclass(frozen=True)
class GeneratorFamily:
    name: str
    title: str
    # The diffusers pipeline class a checkpoint of this family loads as.
    pipeline: str
    # Settings written into the run's config (GenerateConfig fields) unless the user gave them.
    defaults: dict[str, Any]
    # Whether the family's pipeline uses a negative prompt at all (distilled models run without
    # classifier-free guidance and take none).
    takes_negative_prompt: bool
    # Whether --scheduler may swap the sampler (the UNet families' samplers are interchangeable;
    # flow-matching models are trained for theirs).
    swaps_scheduler: bool
    # --fp8 and `sweep --batch`'s compile by default, truthloop's own fast paths for the sd UNet
    # (config.check_pair refuses --fp8 elsewhere; `sweep --batch` turns --compile on by itself
    # only where every generator has them: measured faster there, docs/batching.md).
    fast_paths: bool
    licence: str
    download_gb: float
    memory_gb: float
    about: str
    # Draws its image token by token with a transformers model, not a diffusers pipeline
    # (`pipeline` names the model class): the checkpoint's own size and token count, no
    # sampler to swap, no negative prompt, no offloading, no lockstep batch (config.check_pair,
    # check_options_given and `sweep --batch` say so).
    autoregressive: bool = False
    # --compile is accepted: on CUDA the denoiser (sd's and SDXL's UNet, FLUX.2's and Z-Image's
    # transformer) and the VAE decoder are torch.compile'd, then graphed (other bits: opt-in,
    # recorded). config.check_pair refuses it where this is False.
    compiles: bool = False

    @property
    def default_model(self) -> str:
        return GENERATOR_MODEL_IDS[self.name]


@dataclass(frozen=True)
class CaptionerFamily:
    name: str
    title: str
    defaults: dict[str, Any]  # CaptionConfig fields
    # Whether the family reads a caption instruction (the vision-language models do).
    takes_instruction: bool
    # clip-interrogator's modes and label ranking apply only to it.
    interrogates: bool
    licence: str
    download_gb: float
    memory_gb: float
    about: str

    @property
    def default_model(self) -> str:
        return CAPTIONER_MODEL_IDS[self.name]


# The instruction the vision-language captioners get unless --instruction says otherwise: one
# sentence, since the caption becomes the next prompt (CLIP text encoders read 77 tokens).
DEFAULT_INSTRUCTION = "Describe this image in one sentence."

# Janus-Pro's weights are under DeepSeek's model licence (use-based restrictions, commercial use
# permitted), its code under MIT: deepseek-ai/Janus's README, "License" (read 2026-12-08). The hub
# pages of deepseek-ai/Janus-Pro-1B and of the transformers conversion deepseek-community/
# Janus-Pro-1B carry the tag "License: mit", which names the code's.
JANUS_PRO_LICENCE = "DeepSeek Model"
JANUS_PRO_ABOUT = ("DeepSeek's unified model: one checkpoint draws (image mode) and describes "
                   "(text mode); named on both sides it is loaded once")

GENERATORS: dict[str, GeneratorFamily] = {family.name: family for family in (
    GeneratorFamily(
        "sd", "Stable Diffusion 1.x / 2.x", "StableDiffusionPipeline",
        # The pipeline's own defaults and the seed script's negative prompt (config.py).
        defaults={},
        takes_negative_prompt=True, swaps_scheduler=True, fast_paths=True,
        licence="OpenRAIL++-M", download_gb=5.2, memory_gb=5.8,
        about="the seed article's model (SD2 768, v-prediction), from its sd2-community mirror",
        compiles=True,
    ),
    GeneratorFamily(
        "sdxl", "Stable Diffusion XL", "StableDiffusionXLPipeline",
        # The model card's plain call: no negative prompt (--negative-prompt gives one).
        defaults={"steps": 50, "guidance": 5.0, "width": None, "height": None,
                  "negative_prompt": ""},
        takes_negative_prompt=True, swaps_scheduler=True, fast_paths=False,
        licence="OpenRAIL++-M", download_gb=13.9, memory_gb=11.0,
        about="1024x1024; the generator of Hintze et al. 2025 and The Telephone Game's baseline",
        compiles=True,
    ),
    GeneratorFamily(
        "flux2-klein", "FLUX.2 [klein] 4B", "Flux2KleinPipeline",
        # Step- and guidance-distilled: 4 steps, no classifier-free guidance.
        defaults={"steps": 4, "guidance": 1.0, "width": None, "height": None,
                  "negative_prompt": ""},
        takes_negative_prompt=False, swaps_scheduler=False, fast_paths=False,
        licence="Apache-2.0", download_gb=16.0, memory_gb=20.0,
        about="Black Forest Labs' 4B distilled model (Qwen3 text encoder), 1024x1024",
        compiles=True,
    ),
    GeneratorFamily(
        "z-image", "Z-Image-Turbo", "ZImagePipeline",
        # Distilled: 8 steps, guidance 0 (diffusers >= 0.42 dropped the redundant terminal
        # timestep, so its 8 steps are the model card's 9: diffusers PR #13730).
        defaults={"steps": 8, "guidance": 0.0, "width": None, "height": None,
                  "negative_prompt": ""},
        takes_negative_prompt=True, swaps_scheduler=False, fast_paths=False,
        licence="Apache-2.0", download_gb=33.0, memory_gb=24.0,
        about="Tongyi-MAI's 6B distilled model (Qwen3 text encoder), 1024x1024",
        compiles=True,
    ),
    GeneratorFamily(
        # Its image mode: 576 image tokens (24x24), sampled with the checkpoint's classifier-free
        # guidance (generation_config.json: 5), decoded by its VQ decoder to 384x384. `steps`
        # records those tokens, one forward pass each (what the progress counts).
        "janus-pro", "Janus-Pro 1B (image mode)", "JanusForConditionalGeneration",
        defaults={"steps": 576, "guidance": 5.0, "width": None, "height": None,
                  "negative_prompt": ""},
        takes_negative_prompt=False, swaps_scheduler=False, fast_paths=False,
        licence=JANUS_PRO_LICENCE, download_gb=4.2, memory_gb=6.0,
        about=JANUS_PRO_ABOUT, autoregressive=True,
    ),
)}

CAPTIONERS: dict[str, CaptionerFamily] = {family.name: family for family in (
    CaptionerFamily(
        "clip-interrogator", "CLIP Interrogator (BLIP + CLIP-ranked flavors)", defaults={},
        takes_instruction=False, interrogates=True,
        licence="BSD-3-Clause (BLIP)", download_gb=1.9, memory_gb=3.0,
        about="the seed article's captioner: a BLIP caption plus flavor phrases",
    ),
    CaptionerFamily(
        "blip", "BLIP alone", defaults={"caption_max_length": 32},
        takes_instruction=False, interrogates=False,
        licence="BSD-3-Clause", download_gb=1.9, memory_gb=1.5,
        about="BLIP-large's caption, greedy, no flavors",
    ),
    CaptionerFamily(
        "florence-2", "Florence-2", defaults={"caption_max_length": 77,
                                              "instruction": "<DETAILED_CAPTION>"},
        takes_instruction=True, interrogates=False,
        licence="MIT", download_gb=1.6, memory_gb=2.0,
        about="Microsoft's 0.77B captioner; the instruction is a task token "
              "(<CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>)",
    ),
    CaptionerFamily(
        "llava-1.5", "LLaVA-1.5 7B", defaults={"caption_max_length": 77,
                                              "instruction": DEFAULT_INSTRUCTION},
        takes_instruction=True, interrogates=False,
        licence="Llama 2 Community", download_gb=14.1, memory_gb=15.0,
        about="the describer of Hintze et al. 2025 and The Telephone Game's baseline",
    ),
    CaptionerFamily(
        "qwen3-vl", "Qwen3-VL 2B Instruct", defaults={"caption_max_length": 77,
                                                     "instruction": DEFAULT_INSTRUCTION},
        takes_instruction=True, interrogates=False,
        licence="Apache-2.0", download_gb=4.3, memory_gb=5.5,
        about="Alibaba's small vision-language model",
    ),
    CaptionerFamily(
        "janus-pro", "Janus-Pro 1B (text mode)", defaults={"caption_max_length": 77,
                                                          "instruction": DEFAULT_INSTRUCTION},
        takes_instruction=True, interrogates=False,
        licence=JANUS_PRO_LICENCE, download_gb=4.2, memory_gb=6.0, about=JANUS_PRO_ABOUT,
    ),
)}


def shares_model(generator: str, captioner: str) -> bool:
    """Whether a pair's two sides are one family (janus-pro on both): one model serves both
    where both sides name one checkpoint (ml/backends.py loads it once)."""
    return generator == captioner and generator in GENERATORS and captioner in CAPTIONERS


def pair_label(config: dict[str, Any] | None) -> str:
    """"sdxl + llava-1.5" for a run.json config of any pair but the seed one ("" for that, and
    for a run from before the families)."""
    models = (config or {}).get("models") or {}
    generator = models.get("generator", DEFAULT_GENERATOR)
    captioner = models.get("captioner", DEFAULT_CAPTIONER)
    if (generator, captioner) == (DEFAULT_GENERATOR, DEFAULT_CAPTIONER):
        return ""
    return f"{generator} + {captioner}"
