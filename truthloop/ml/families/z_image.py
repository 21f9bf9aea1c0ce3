"""Z-Image-Turbo: Tongyi-MAI's 6B distilled single-stream transformer, drawn through diffusers'
ZImagePipeline (a Qwen3 text encoder's second-to-last hidden states, the FLUX.1 VAE, 9 scheduler
steps = 8 model evaluations, guidance 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.config import GenerateConfig

# Bump when build_tiny's recipe changes.
TINY_VERSION = 1

# FLUX.1's 16 latent channels -> RGB, the cheap linear approximation InvokeAI uses for FLUX and
# for Z-Image ("Z-Image uses FLUX-compatible VAE with 16 latent channels"), in the latent space the
# pipeline denoises in (scaled and shifted, as the transformer sees it). Apache-2.0, from
# https://github.com/invoke-ai/InvokeAI/blob/main/invokeai/app/util/step_callback.py
# Rows: latent channels 0..15; columns: R, G, B; the result is in about [-1, 1].
LATENT_RGB = (
    (-0.0412, 0.0149, 0.0521),
    (0.0056, 0.0291, 0.0768),
    (0.0342, -0.0681, -0.0427),
    (-0.0258, 0.0092, 0.0463),
    (0.0863, 0.0784, 0.0547),
    (-0.0017, 0.0402, 0.0158),
    (0.0501, 0.1058, 0.1152),
    (-0.0209, -0.0218, -0.0329),
    (-0.0314, 0.0083, 0.0896),
    (0.0851, 0.0665, -0.0472),
    (-0.0534, 0.0238, -0.0024),
    (0.0452, -0.0026, 0.0048),
    (0.0892, 0.0831, 0.0881),
    (-0.1117, -0.0304, -0.0789),
    (0.0027, -0.0479, -0.0043),
    (-0.1146, -0.0827, -0.0598),
)


def dtype(device: str) -> Any:
    import torch

    # Tongyi-MAI load it in bfloat16 (the model card's and diffusers' example); fp32 on the CPU.
    return torch.bfloat16 if device == "cuda" else torch.float32


def pipeline_kwargs(config: GenerateConfig) -> dict[str, Any]:
    # CFG normalisation and truncation only matter with guidance > 0; the pipeline's own
    # defaults stand, as in the model card's call.
    return {}


def latent_rgb(pipe: Any, latents: Any) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of the first of (B, 16, h, w) latents, one pixel per latent
    cell (1/8 of the image's side for the real VAE): a 16x3 matrix product and a small copy."""
    import torch

    with torch.inference_mode():
        latent = latents[0] if latents.dim() == 4 else latents
        coefs = torch.tensor(LATENT_RGB, dtype=torch.float32, device=latent.device)
        rgb = torch.einsum("chw,cr->hwr", latent.float(), coefs)
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu()
    return pixels.shape[1], pixels.shape[0], pixels.numpy().tobytes()


def build_tiny(out: Path) -> None:
    """A random-weight ZImagePipeline: the real classes, a 2-layer Qwen3 of width 16, a 6-block
    VAE of 4 channels (32x downsampling), a 1+1+1-layer transformer of width 32. The pipeline's
    default size is 1024x1024 whatever the checkpoint, so the tiny VAE is built to decode that in
    under a second on a CPU (its latents are 32x32, 256 image tokens)."""
    from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    from truthloop.ml.families import tiny_qwen
    from truthloop.ml.families.building import widen_to_read_the_prompt

    tokenizer = tiny_qwen.build_tokenizer()
    text_encoder = Qwen3Model(tiny_qwen.tiny_text_config(tokenizer, num_hidden_layers=2))
    blocks = 6
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(4,) * blocks, layers_per_block=0, latent_channels=16,
        norm_num_groups=2, sample_size=1024, mid_block_add_attention=False,
        use_quant_conv=False, use_post_quant_conv=False,
        # FLUX.1's latent scale and shift, which the pipeline undoes before decoding.
        scaling_factor=0.3611, shift_factor=0.1159,
    )
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=1,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
        cap_feat_dim=text_encoder.config.hidden_size, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[1536, 512, 512],
    )
    widen_to_read_the_prompt(text_encoder, transformer)
    pipe = ZImagePipeline(scheduler=_scheduler(), vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(out)


def _scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The checkpoint's scheduler_config.json: a fixed shift of 3.
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                           use_dynamic_shifting=False)


# The default checkpoint's architecture, transcribed from its config files (read in copies
# "Duplicate from Tongyi-MAI/Z-Image-Turbo" on the hub, e.g.
# https://huggingface.co/srcphag/Z-Image-Turbo/blob/main/transformer/config.json; text encoder:
# Qwen3-4B, tiny_qwen.QWEN3_4B; vae: FLUX.1's AutoencoderKL,
# https://huggingface.co/Floncer/projecteee/blob/main/vae/config.json)
FULL_TRANSFORMER = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
    n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
    cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)
FULL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
    use_post_quant_conv=False, mid_block_add_attention=True, force_upcast=True,
)


def full_size(device: str, dtype: Any) -> Any:
    """The real Z-Image-Turbo architecture with random weights, made on `device` in `dtype`
    (GPU benchmarks: nothing is downloaded). The tokenizer is the tiny one: the transformer sees
    only a prompt's real tokens, so give it prompts of the length a real prompt tokenizes to."""
    from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from truthloop.ml.families import tiny_qwen
    from truthloop.ml.families.building import made_on

    with made_on(device, dtype):
        transformer = ZImageTransformer2DModel(**FULL_TRANSFORMER)
        vae = AutoencoderKL(**FULL_VAE)
        text_encoder = Qwen3Model(Qwen3Config(**tiny_qwen.QWEN3_4B))
    return ZImagePipeline(scheduler=_scheduler(), vae=vae, text_encoder=text_encoder.eval(),
                          tokenizer=tiny_qwen.build_tokenizer(), transformer=transformer)

