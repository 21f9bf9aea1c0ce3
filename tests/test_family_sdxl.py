"""The sdxl generator family: truthloop's painter gives the image diffusers' own
StableDiffusionXLPipeline gives when called plainly, stops mid-image, shows its latents."""

from __future__ import annotations

from family_helpers import PROMPT, assert_a_missing_directory_is_one_line
from family_helpers import assert_previews_of_the_two_steps, assert_the_same_picture
from family_helpers import generate_config, generator_fixtures, paint, stop_at_step_two

# SDXL's published 50 steps take ~10 s on a busy 2-core CPU even for the tiny UNet; every other
# setting is the family's default (guidance 5.0, the model's own size).
STEPS = 3

tiny_dir, loaded = generator_fixtures("sdxl")


def _family_config(**changes):
    """The sdxl family's GenerateConfig at STEPS steps."""
    return generate_config("sdxl", steps=STEPS, **changes)


def test_the_loops_image_is_the_pipelines_plain_call(tiny_dir, loaded):
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe, record = loaded
    config = _family_config()
    assert (config.guidance, config.width, config.height) == (5.0, None, None)
    image = paint(pipe, "sdxl", config)

    plain = StableDiffusionXLPipeline.from_pretrained(tiny_dir)
    # The model card's call passes no negative prompt (SDXL then uses zeros, not "" encoded).
    assert config.negative_prompt == ""
    expected = plain(PROMPT, num_inference_steps=STEPS, guidance_scale=5.0,
                     generator=torch.Generator("cpu").manual_seed(config.seed)).images[0]
    assert_the_same_picture(image, expected, (64, 64))  # the tiny model's own size


def test_a_stop_inside_denoising_abandons_the_image_and_the_preview_sees_latents(loaded):
    pipe, _ = loaded
    steps, previews = stop_at_step_two(pipe, "sdxl", _family_config())
    assert steps == [(1, STEPS), (2, STEPS)]
    # One latent cell per pixel: the 64x64 image's latents are 1/vae_scale_factor of it.
    assert_previews_of_the_two_steps(previews, side=64 // pipe.vae_scale_factor)


def test_the_preview_of_a_zero_latent_is_sdxls_mean_colour():
    """SDXL's own coefficients (with their bias), not SD 1.x/2.x's: a zero latent is a grey."""
    import torch

    from truthloop.ml.families import sdxl

    width, height, rgb = sdxl.latent_rgb(None, torch.zeros(1, 4, 2, 3))
    assert (width, height) == (3, 2)
    assert tuple(rgb[:3]) == (141, 125, 127)


def test_loads_from_a_directory_and_a_missing_one_is_one_line(tmp_path, loaded):
    from diffusers import StableDiffusionXLPipeline

    pipe, record = loaded
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert_a_missing_directory_is_one_line("generator", "sdxl", tmp_path)


def test_full_size_is_sdxl_base_1_0():
    """The benchmark's architecture: SDXL base 1.0's published 3.5 B parameters (UNet 2.57 B)."""
    import torch

    from truthloop.ml.families import sdxl

    pipe = sdxl.full_size("meta", torch.float16)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    assert counts == {"unet": 2_567_463_684, "vae": 83_653_863,
                      "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}
    assert pipe.unet.dtype == torch.float16
    assert pipe.default_sample_size * pipe.vae_scale_factor == 1024


def test_no_watermark_is_stamped_even_where_invisible_watermark_is_installed(tiny_dir,
                                                                              monkeypatch):
    """diffusers' SDXL pipeline watermarks every image whenever the invisible-watermark package
    is installed (its default): a trajectory would then depend on an unrelated package. The
    loop's SDXL pipeline has no watermarker on a machine that has the package (here: diffusers
    told it has it, which without truthloop's choice fails to build the watermarker at all)."""
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl

    from truthloop.ml.families.painting import load_generator

    monkeypatch.setattr(pipeline_stable_diffusion_xl, "is_invisible_watermark_available",
                        lambda: True)
    pipe, _ = load_generator("sdxl", str(tiny_dir), "cpu")
    assert pipe.watermark is None
