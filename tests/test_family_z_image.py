"""The z-image generator family: truthloop's painter gives the image diffusers' own
ZImagePipeline gives when called plainly, stops mid-image, previews its latents, and the
benchmark's architecture is Z-Image-Turbo's."""

from __future__ import annotations

from family_helpers import PROMPT, assert_a_missing_directory_is_one_line
from family_helpers import assert_previews_of_the_two_steps
from family_helpers import assert_the_image_follows_prompt_and_seed, assert_the_same_picture
from family_helpers import generate_config, generator_fixtures, paint, stop_at_step_two

tiny_dir, loaded = generator_fixtures("z-image")


def test_the_loops_image_is_the_pipelines_plain_call(tiny_dir, loaded):
    import torch
    from diffusers import ZImagePipeline

    pipe, _ = loaded
    config = generate_config("z-image")
    # Distilled: no guidance, the model's own size; its step count is families.py's.
    assert (config.guidance, config.width, config.height) == (0.0, None, None)
    image = paint(pipe, "z-image", config)

    plain = ZImagePipeline.from_pretrained(tiny_dir)
    expected = plain(PROMPT, num_inference_steps=config.steps, guidance_scale=0.0,
                     generator=torch.Generator("cpu").manual_seed(config.seed)).images[0]
    # No size given: ZImagePipeline draws 1024x1024 whatever the checkpoint.
    assert_the_same_picture(image, expected, (1024, 1024))


def test_the_tiny_image_depends_on_the_prompt_and_the_seed(loaded):
    pipe, _ = loaded
    assert_the_image_follows_prompt_and_seed(pipe, "z-image", side=128)


def test_a_stop_inside_denoising_abandons_the_image_and_the_preview_sees_latents(loaded):
    pipe, _ = loaded
    config = generate_config("z-image", width=128, height=128)
    steps, previews = stop_at_step_two(pipe, "z-image", config)
    assert steps == [(1, config.steps), (2, config.steps)]
    # One pixel per latent cell: 1/vae_scale_factor of the 128x128 image (1/8 for the real VAE).
    assert_previews_of_the_two_steps(previews, side=128 // pipe.vae_scale_factor)


def test_the_preview_is_flux_vaes_linear_map():
    """A zero latent is mid-grey; a latent of one channel takes that channel's row of the map."""
    import torch

    from truthloop.ml.families import z_image

    width, height, rgb = z_image.latent_rgb(None, torch.zeros(1, 16, 2, 3))
    assert (width, height) == (3, 2) and len(rgb) == 2 * 3 * 3
    assert set(rgb) == {127}
    latent = torch.zeros(16, 1, 1)
    latent[12] = 4.0  # the channel whose row is (0.0892, 0.0831, 0.0881): bright grey
    assert tuple(z_image.latent_rgb(None, latent)[2]) == (172, 169, 172)


def test_loads_from_a_directory_and_a_missing_one_is_one_line(tmp_path, loaded):
    from diffusers import ZImagePipeline

    pipe, record = loaded
    assert isinstance(pipe, ZImagePipeline)
    assert_a_missing_directory_is_one_line("generator", "z-image", tmp_path)


def test_the_prompt_reaches_the_text_encoder_as_the_pipeline_sends_it(loaded):
    """Qwen3's chat template with thinking on (no empty reasoning block); only the prompt's real
    tokens go on to the transformer."""
    pipe, _ = loaded
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                              tokenize=False, add_generation_prompt=True,
                                              enable_thinking=True)
    assert text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    embeds, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert embeds[0].shape == (len(pipe.tokenizer(text).input_ids),
                               pipe.text_encoder.config.hidden_size)


def test_full_size_is_z_image_turbo():
    """The benchmark's architecture: the 6.15 B single-stream transformer, Qwen3-4B (4.02 B) and
    FLUX.1's 84 M VAE."""
    import torch

    from truthloop.ml.families import z_image

    pipe = z_image.full_size("meta", torch.bfloat16)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("transformer", "text_encoder", "vae")}
    assert counts == {"transformer": 6_154_908_736, "text_encoder": 4_022_468_096,
                      "vae": 83_819_683}
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae_scale_factor == 8
