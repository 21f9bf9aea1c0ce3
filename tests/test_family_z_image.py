"""The z-image generator family: truthloop's painter gives the image diffusers' own
ZImagePipeline gives when called plainly, stops mid-image, previews its latents, and the
benchmark's architecture is Z-Image-Turbo's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

PROMPT = "a red dog sitting in a field"


@pytest.fixture(scope="module")
def tiny_dir(truthloop_cache):
    from truthloop.ml.tiny import tiny_family_model

    return tiny_family_model("generator", "z-image")


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from truthloop.ml.families.painting import load_generator

    return load_generator("z-image", tiny_dir, "cpu")


def _family_config(**changes):
    """The GenerateConfig a run of the z-image family starts with (families.py's defaults)."""
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig()
    config.models.generator = "z-image"
    apply_pair_defaults(config)
    return dataclasses.replace(config.generate, **changes)


def test_the_loops_image_is_the_pipelines_plain_call(tiny_dir, loaded):
    import torch
    from diffusers import ZImagePipeline

    from truthloop.ml.families.painting import FamilyPainter

    pipe, _ = loaded
    config = _family_config()
    # Distilled: no guidance, the model's own size; its step count is families.py's.
    assert (config.guidance, config.width, config.height) == (0.0, None, None)
    image = FamilyPainter(pipe, "z-image", config, "cpu").paint(PROMPT, lambda s, t: None)

    plain = ZImagePipeline.from_pretrained(tiny_dir)
    expected = plain(PROMPT, num_inference_steps=config.steps, guidance_scale=0.0,
                     generator=torch.Generator("cpu").manual_seed(config.seed)).images[0]
    # No size given: ZImagePipeline draws 1024x1024 whatever the checkpoint.
    assert image.size == expected.size == (1024, 1024)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert np.asarray(image).std() > 5  # a picture, not a flat colour


def test_the_tiny_image_depends_on_the_prompt_and_the_seed(loaded):
    from truthloop.ml.families.painting import FamilyPainter

    pipe, _ = loaded

    def draw(prompt, seed):
        config = _family_config(width=128, height=128, seed=seed)
        painter = FamilyPainter(pipe, "z-image", config, "cpu")
        return np.asarray(painter.paint(prompt, lambda s, t: None)).astype(int)

    first = draw(PROMPT, 1)
    assert first.shape == (128, 128, 3)
    assert not np.array_equal(first, draw("an old train at night", 1))
    assert not np.array_equal(first, draw(PROMPT, 2))
    assert np.array_equal(first, draw(PROMPT, 1))


def test_a_stop_inside_denoising_abandons_the_image_and_the_preview_sees_latents(loaded):
    from truthloop.loop import StopRequested
    from truthloop.ml.families.painting import FamilyPainter

    pipe, _ = loaded
    painter = FamilyPainter(pipe, "z-image", _family_config(width=128, height=128), "cpu")
    previews, steps = [], []
    painter.preview = lambda step, width, height, rgb: previews.append((step, width, height, rgb))
    painter.preview_every = 1

    def on_step(step, total):
        steps.append((step, total))
        if step == 2:
            raise StopRequested()

    with pytest.raises(StopRequested):
        painter.paint(PROMPT, on_step)
    total = painter.config.steps
    assert steps == [(1, total), (2, total)]
    # One pixel per latent cell: 1/vae_scale_factor of the 128x128 image (1/8 for the real VAE).
    side = 128 // pipe.vae_scale_factor
    assert [(step, width, height) for step, width, height, _ in previews] == \
        [(1, side, side), (2, side, side)]
    assert all(len(rgb) == side * side * 3 for *_, rgb in previews)


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

    from truthloop.ml.families.painting import load_generator
    from truthloop.ml.models import ModelUnavailable

    pipe, record = loaded
    assert isinstance(pipe, ZImagePipeline)
    missing = str(tmp_path / "no-such-z-image")
    with pytest.raises(ModelUnavailable) as error:
        load_generator("z-image", missing, "cpu")
    message = str(error.value)
    assert missing in message and "no such directory" in message and "\n" not in message


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
