"""The sdxl generator family: truthloop's painter gives the image diffusers' own
StableDiffusionXLPipeline gives when called plainly, stops mid-image, shows its latents."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

PROMPT = "a red dog sitting in a field"
# SDXL's published 50 steps take ~10 s on a busy 2-core CPU even for the tiny UNet; every other
# setting is the family's default (guidance 5.0, the model's own size).
STEPS = 3


@pytest.fixture(scope="module")
def tiny_dir(truthloop_cache):
    from truthloop.ml.tiny import tiny_family_model

    return tiny_family_model("generator", "sdxl")


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from truthloop.ml.families.painting import load_generator

    return load_generator("sdxl", tiny_dir, "cpu")


def _family_config(**changes):
    """The GenerateConfig a run of the sdxl family starts with (families.py's defaults)."""
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig()
    config.models.generator = "sdxl"
    apply_pair_defaults(config)
    return dataclasses.replace(config.generate, steps=STEPS, **changes)


def test_the_loops_image_is_the_pipelines_plain_call(tiny_dir, loaded):
    import torch
    from diffusers import StableDiffusionXLPipeline

    from truthloop.ml.families.painting import FamilyPainter

    pipe, record = loaded
    config = _family_config()
    assert (config.guidance, config.width, config.height) == (5.0, None, None)
    image = FamilyPainter(pipe, "sdxl", config, "cpu").paint(PROMPT, lambda step, total: None)

    plain = StableDiffusionXLPipeline.from_pretrained(tiny_dir)
    # The model card's call passes no negative prompt (SDXL then uses zeros, not "" encoded).
    assert config.negative_prompt == ""
    expected = plain(PROMPT, num_inference_steps=STEPS, guidance_scale=5.0,
                     generator=torch.Generator("cpu").manual_seed(config.seed)).images[0]
    assert image.size == expected.size == (64, 64)  # the tiny model's own size
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert np.asarray(image).std() > 5  # a picture, not a flat colour


def test_a_stop_inside_denoising_abandons_the_image_and_the_preview_sees_latents(loaded):
    from truthloop.loop import StopRequested
    from truthloop.ml.families.painting import FamilyPainter

    pipe, _ = loaded
    painter = FamilyPainter(pipe, "sdxl", _family_config(), "cpu")
    previews, steps = [], []
    painter.preview = lambda step, width, height, rgb: previews.append((step, width, height, rgb))
    painter.preview_every = 1

    def on_step(step, total):
        steps.append((step, total))
        if step == 2:
            raise StopRequested()

    with pytest.raises(StopRequested):
        painter.paint(PROMPT, on_step)
    assert steps == [(1, STEPS), (2, STEPS)]
    # One latent cell per pixel: the 64x64 image's latents are 1/vae_scale_factor of it.
    side = 64 // pipe.vae_scale_factor
    assert [(step, width, height) for step, width, height, _ in previews] == \
        [(1, side, side), (2, side, side)]
    assert all(len(rgb) == side * side * 3 for *_, rgb in previews)


def test_the_preview_of_a_zero_latent_is_sdxls_mean_colour():
    """SDXL's own coefficients (with their bias), not SD 1.x/2.x's: a zero latent is a grey."""
    import torch

    from truthloop.ml.families import sdxl

    width, height, rgb = sdxl.latent_rgb(None, torch.zeros(1, 4, 2, 3))
    assert (width, height) == (3, 2)
    assert tuple(rgb[:3]) == (141, 125, 127)


def test_loads_from_a_directory_and_a_missing_one_is_one_line(tmp_path, loaded):
    from diffusers import StableDiffusionXLPipeline

    from truthloop.ml.families.painting import load_generator
    from truthloop.ml.models import ModelUnavailable

    pipe, record = loaded
    assert isinstance(pipe, StableDiffusionXLPipeline)
    missing = str(tmp_path / "no-such-sdxl")
    with pytest.raises(ModelUnavailable) as error:
        load_generator("sdxl", missing, "cpu")
    message = str(error.value)
    assert missing in message and "no such directory" in message and "\n" not in message


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
