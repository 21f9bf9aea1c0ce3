"""FLUX.2 [klein] 4B: Black Forest Labs' step- and guidance-distilled flow transformer, drawn
through diffusers' Flux2KleinPipeline (a Qwen3 text encoder whose layers 9, 18 and 27 are stacked
into the prompt embedding, 512 padded prompt tokens, 4 steps, no classifier-free guidance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.config import GenerateConfig

# Bump when build_tiny's recipe changes.
TINY_VERSION = 1


def dtype(device: str) -> Any:
    import torch

    # Black Forest Labs load it in bfloat16 (the model card's example); fp32 on the CPU.
    return torch.bfloat16 if device == "cuda" else torch.float32


def pipeline_kwargs(config: GenerateConfig) -> dict[str, Any]:
    # Prompt length (512) and text-encoder layers are the pipeline's own defaults.
    return {}


def latent_rgb(pipe: Any, latents: Any) -> None:
    # No cheap preview. Inside the loop FLUX.2's latents are a sequence of 128-channel tokens
    # (32 VAE channels x 2x2 patches, batch-normalised); unpacking needs the image's grid, which
    # the step callback does not carry (a non-square image's rows and columns cannot be told from
    # the token count), and the only published linear map to RGB for those 32 channels is
    # ComfyUI's hand-fit table, not one from the model's makers.
    return None


def build_tiny(out: Path) -> None:
    """A random-weight Flux2KleinPipeline: the real classes, a 28-layer Qwen3 of width 16 (the
    pipeline reads hidden states 9, 18 and 27), a one-block VAE, one double and one single
    transformer block. With no size given it draws 128x128 (the pipeline's default is 128 latent
    cells per side times the VAE's scale, 1 here): 4 steps in a second or two on 2 CPU cores."""
    from diffusers import (
        AutoencoderKLFlux2,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3ForCausalLM

    from truthloop.ml.families import tiny_qwen
    from truthloop.ml.families.building import widen_to_read_the_prompt

    tokenizer = tiny_qwen.build_tokenizer()
    text_encoder = Qwen3ForCausalLM(tiny_qwen.tiny_text_config(tokenizer, num_hidden_layers=28))
    hidden = text_encoder.config.hidden_size
    latent_channels = 4
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, sample_size=128, use_quant_conv=False, use_post_quant_conv=False,
        # Attention over every latent cell at full resolution would be most of the tiny cost.
        mid_block_add_attention=False,
    )
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=latent_channels * 4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=1, joint_attention_dim=3 * hidden,
        timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )
    widen_to_read_the_prompt(text_encoder, transformer)
    pipe = Flux2KleinPipeline(scheduler=_scheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer, is_distilled=True)
    pipe.save_pretrained(out)


def _scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The checkpoint's scheduler_config.json (as FLUX.2 [dev]'s): resolution-dependent shift.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )


# The default checkpoint's architecture, transcribed from its config files:
# transformer: https://huggingface.co/black-forest-labs/FLUX.2-klein-4B/blob/main/transformer/config.json
#   (the same numbers as diffusers' scripts/convert_flux2_to_diffusers.py "klein-4b")
# text encoder: Qwen3-4B (tiny_qwen.QWEN3_4B)
# vae: https://huggingface.co/black-forest-labs/FLUX.2-klein-4B/blob/main/vae/config.json
#   (AutoencoderKLFlux2's defaults: 32 latent channels, 2x2 patches, blocks 128-256-512-512)
FULL_TRANSFORMER = dict(
    patch_size=1, in_channels=128, out_channels=None, num_layers=5, num_single_layers=20,
    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=7680,
    timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000, eps=1e-6, guidance_embeds=False,
)


def full_size(device: str, dtype: Any) -> Any:
    """The real FLUX.2 [klein] 4B architecture with random weights, made on `device` in `dtype`
    (GPU benchmarks: nothing is downloaded). The tokenizer is the tiny one: prompts are padded to
    the same 512 tokens the real one gives the text encoder and the transformer."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from truthloop.ml.families import tiny_qwen
    from truthloop.ml.families.building import made_on

    with made_on(device, dtype):
        transformer = Flux2Transformer2DModel(**FULL_TRANSFORMER)
        vae = AutoencoderKLFlux2()
        text_encoder = Qwen3ForCausalLM(Qwen3Config(**tiny_qwen.QWEN3_4B))
    return Flux2KleinPipeline(scheduler=_scheduler(), vae=vae, text_encoder=text_encoder.eval(),
                              tokenizer=tiny_qwen.build_tokenizer(), transformer=transformer,
                              is_distilled=True)

