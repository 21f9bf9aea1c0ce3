"""Stable Diffusion XL (base 1.0) through diffusers' StableDiffusionXLPipeline.

Two CLIP text encoders (CLIP ViT-L and OpenCLIP ViT-bigG, whose pooled output and the image's
size conditioning feed the UNet's added embedding), an Euler sampler, a VAE at 1/8 of the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_VERSION = 1

# SDXL's latent -> RGB approximation (ComfyUI's comfy/latent_formats.py, class SDXL:
# https://github.com/comfyanonymous/ComfyUI/blob/master/comfy/latent_formats.py). It maps the
# scaled latents the sampler holds (what diffusers' callback sees) to about [-1, 1]. SD 1.x/2.x's
# coefficients (ml/latent_preview.py) do not fit: SDXL's VAE was retrained.
LATENT_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)

# The real checkpoint's configs, as its files on the hub give them (read 2026-12-06):
# https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/unet/config.json
# (and vae/, text_encoder/, text_encoder_2/, scheduler/scheduler_config.json, model_index.json;
# the same files are in the repo's duplicates, e.g. huggingface.co/remg1997/xl-1.0).
_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, use_linear_projection=True, norm_num_groups=32, norm_eps=1e-5,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    # 6 size numbers x 256 + the 1280-wide pooled text embedding of text_encoder_2.
    projection_class_embeddings_input_dim=2816,
)
_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True,
)
_TEXT_ENCODER = dict(  # CLIP ViT-L/14's text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=768, layer_norm_eps=1e-5,
)
_TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14's text tower, with its projection
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
    projection_dim=1280, layer_norm_eps=1e-5,
)
_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", interpolation_type="linear", timestep_spacing="leading",
    steps_offset=1, use_karras_sigmas=False,
)
# CLIP's own token ids (the tokenizer from tiny.py is CLIP's real BPE vocabulary).
_CLIP_IDS = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def dtype(device: str) -> Any:
    import torch

    # The model card loads it in float16 (its VAE upcasts itself to decode: force_upcast).
    return torch.float16 if device == "cuda" else torch.float32


def pipeline_kwargs(config: Any) -> dict[str, Any]:
    return {}


def latent_rgb(pipe: Any, latents: Any) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of the first latent, one pixel per latent cell."""
    import torch

    with torch.inference_mode():
        latent = latents[0].float()
        coefs = torch.tensor(LATENT_RGB, dtype=torch.float32, device=latent.device)
        bias = torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32, device=latent.device)
        rgb = torch.einsum("chw,cr->hwr", latent, coefs) + bias
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu()
    return pixels.shape[1], pixels.shape[0], pixels.numpy().tobytes()


def _tokenizers(tokenizer_dir: Path) -> tuple[Any, Any]:
    """SDXL's two CLIP tokenizers: one vocabulary; the second pads with "!" (id 0), as the
    checkpoint's tokenizer_2 does (its text encoder was trained that way)."""
    from transformers import CLIPTokenizer

    from truthloop.ml.tiny import _write_clip_tokenizer

    _write_clip_tokenizer(tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")
    return tokenizer, tokenizer_2


def _pipeline(unet: dict, vae: dict, text_encoder: dict, text_encoder_2: dict,
              tokenizer_dir: Path, device: str = "cpu") -> Any:
    """The pipeline from configs, its weights created on `device` (random)."""
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = _tokenizers(tokenizer_dir)
    with torch.device(device):
        models = dict(
            unet=UNet2DConditionModel(**unet),
            vae=AutoencoderKL(**vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**text_encoder, **_CLIP_IDS)),
            text_encoder_2=CLIPTextModelWithProjection(
                CLIPTextConfig(**text_encoder_2, **_CLIP_IDS)),
        )
    # The scheduler keeps its sigmas on the CPU (not on `device`, which may be "meta").
    return StableDiffusionXLPipeline(
        **models, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        scheduler=EulerDiscreteScheduler(**_SCHEDULER), force_zeros_for_empty_prompt=True,
        add_watermarker=False,  # as models.load_pipeline loads it (the benches draw with this)
    )


def build_tiny(out: Path) -> None:
    """SDXL's architecture shrunk: two text encoders of width 32 (their pooled output and the
    six size numbers feed the UNet's added embedding), a 2-level UNet, a VAE at 1/2; 64x64."""
    import tempfile

    tiny_text = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                     projection_dim=32, layer_norm_eps=1e-5)
    unet = dict(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4),
        cross_attention_dim=64,  # both encoders' hidden states side by side: 32 + 32
        use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=64,
        scaling_factor=0.13025, force_upcast=True,
    )
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        pipe = _pipeline(unet, vae, tiny_text, tiny_text, Path(tokenizer_dir))
    pipe.save_pretrained(out)


def full_size(device: str, dtype: Any) -> Any:
    """SDXL base 1.0's architecture with random weights, on `device` (benchmarks): UNet 2.57 B,
    text encoders 123 M + 695 M, VAE 84 M parameters. The tokenizers are CLIP's real BPE."""
    import tempfile

    with tempfile.TemporaryDirectory() as tokenizer_dir:
        pipe = _pipeline(_UNET, _VAE, _TEXT_ENCODER, _TEXT_ENCODER_2, Path(tokenizer_dir),
                         device)
    pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
