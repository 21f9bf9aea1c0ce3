"""The flux2-klein generator family: truthloop's painter gives the image diffusers' own
Flux2KleinPipeline gives when called plainly, stops mid-image, and the benchmark's architecture
is FLUX.2 [klein] 4B's."""

from __future__ import annotations

from family_helpers import PROMPT, assert_a_missing_directory_is_one_line
from family_helpers import assert_the_image_follows_prompt_and_seed, assert_the_same_picture
from family_helpers import generate_config, generator_fixtures, paint, stop_at_step_two

tiny_dir, loaded = generator_fixtures("flux2-klein")


def test_the_loops_image_is_the_pipelines_plain_call(tiny_dir, loaded):
    import torch
    from diffusers import Flux2KleinPipeline

    pipe, _ = loaded
    config = generate_config("flux2-klein")
    assert (config.steps, config.guidance, config.width, config.height) == (4, 1.0, None, None)
    image = paint(pipe, "flux2-klein", config)

    plain = Flux2KleinPipeline.from_pretrained(tiny_dir)
    # The model card's call; the pipeline's first positional argument is a reference image.
    expected = plain(prompt=PROMPT, num_inference_steps=4, guidance_scale=1.0,
                     generator=torch.Generator("cpu").manual_seed(config.seed)).images[0]
    # No size given: the pipeline's default, 128 latent cells a side at the tiny VAE's scale 1.
    assert_the_same_picture(image, expected, (128, 128))


def test_the_tiny_image_depends_on_the_prompt_and_the_seed(loaded):
    pipe, _ = loaded
    assert_the_image_follows_prompt_and_seed(pipe, "flux2-klein", side=64)


def test_a_stop_inside_denoising_abandons_the_image(loaded):
    pipe, _ = loaded
    config = generate_config("flux2-klein", width=64, height=64)
    steps, previews = stop_at_step_two(pipe, "flux2-klein", config)
    assert steps == [(1, 4), (2, 4)]
    # FLUX.2's packed latents have no cheap preview (flux2_klein.latent_rgb says why).
    assert previews == []


def test_loads_from_a_directory_and_a_missing_one_is_one_line(tmp_path, loaded):
    from diffusers import Flux2KleinPipeline

    pipe, record = loaded
    assert isinstance(pipe, Flux2KleinPipeline) and pipe.config.is_distilled
    assert_a_missing_directory_is_one_line("generator", "flux2-klein", tmp_path)


def test_the_prompt_reaches_the_text_encoder_as_the_pipeline_sends_it(loaded):
    """Qwen3's chat template with thinking off, padded to the pipeline's 512 tokens."""
    pipe, _ = loaded
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                              tokenize=False, add_generation_prompt=True,
                                              enable_thinking=False)
    assert text == (f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
                    "<think>\n\n</think>\n\n")
    embeds, _ = pipe.encode_prompt(prompt=PROMPT, device="cpu")
    # Hidden states of layers 9, 18 and 27, side by side.
    assert embeds.shape == (1, 512, 3 * pipe.text_encoder.config.hidden_size)


def test_full_size_is_flux2_klein_4b():
    """The benchmark's architecture: a 3.88 B transformer (the "4B"), Qwen3-4B (4.02 B) as the
    text encoder and the 84 M FLUX.2 VAE: 15.96 GB in bfloat16, the checkpoint's download."""
    import torch

    from truthloop.ml.families import flux2_klein

    pipe = flux2_klein.full_size("meta", torch.bfloat16)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("transformer", "text_encoder", "vae")}
    assert counts == {"transformer": 3_875_544_576, "text_encoder": 4_022_468_096,
                      "vae": 84_046_115}
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.config.is_distilled
    assert pipe.default_sample_size * pipe.vae_scale_factor == 1024
