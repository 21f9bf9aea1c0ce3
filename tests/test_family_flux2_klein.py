"""The flux2-klein generator family: truthloop's painter gives the image diffusers' own
Flux2KleinPipeline gives when called plainly, stops mid-image, and the benchmark's architecture
is FLUX.2 [klein] 4B's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

PROMPT = "a red dog sitting in a field"


@pytest.fixture(scope="module")
def tiny_dir(truthloop_cache):
    from truthloop.ml.tiny import tiny_family_model

    return tiny_family_model("generator", "flux2-klein")


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from truthloop.ml.families.painting import load_generator

    return load_generator("flux2-klein", tiny_dir, "cpu")


def _family_config(**changes):
    """The GenerateConfig a run of the flux2-klein family starts with (families.py's defaults)."""
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig()
    config.models.generator = "flux2-klein"
    apply_pair_defaults(config)
    return dataclasses.replace(config.generate, **changes)


def test_the_loops_image_is_the_pipelines_plain_call(tiny_dir, loaded):
    import torch
    from diffusers import Flux2KleinPipeline

    from truthloop.ml.families.painting import FamilyPainter

    pipe, _ = loaded
    config = _family_config()
    assert (config.steps, config.guidance, config.width, config.height) == (4, 1.0, None, None)
    image = FamilyPainter(pipe, "flux2-klein", config, "cpu").paint(PROMPT, lambda s, t: None)

    plain = Flux2KleinPipeline.from_pretrained(tiny_dir)
    # The model card's call; the pipeline's first positional argument is a reference image.
    expected = plain(prompt=PROMPT, num_inference_steps=4, guidance_scale=1.0,
                     generator=torch.Generator("cpu").manual_seed(config.seed)).images[0]
    # No size given: the pipeline's default, 128 latent cells a side at the tiny VAE's scale 1.
    assert image.size == expected.size == (128, 128)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert np.asarray(image).std() > 5  # a picture, not a flat colour


def test_the_tiny_image_depends_on_the_prompt_and_the_seed(loaded):
    from truthloop.ml.families.painting import FamilyPainter

    pipe, _ = loaded

    def draw(prompt, seed):
        config = _family_config(width=64, height=64, seed=seed)
        painter = FamilyPainter(pipe, "flux2-klein", config, "cpu")
        return np.asarray(painter.paint(prompt, lambda s, t: None)).astype(int)

    first = draw(PROMPT, 1)
    assert first.shape == (64, 64, 3)
    assert not np.array_equal(first, draw("an old train at night", 1))
    assert not np.array_equal(first, draw(PROMPT, 2))
    assert np.array_equal(first, draw(PROMPT, 1))


def test_a_stop_inside_denoising_abandons_the_image(loaded):
    from truthloop.loop import StopRequested
    from truthloop.ml.families.painting import FamilyPainter

    pipe, _ = loaded
    painter = FamilyPainter(pipe, "flux2-klein", _family_config(width=64, height=64), "cpu")
    previews, steps = [], []
    painter.preview = lambda *shown: previews.append(shown)
    painter.preview_every = 1

    def on_step(step, total):
        steps.append((step, total))
        if step == 2:
            raise StopRequested()

    with pytest.raises(StopRequested):
        painter.paint(PROMPT, on_step)
    assert steps == [(1, 4), (2, 4)]
    # FLUX.2's packed latents have no cheap preview (flux2_klein.latent_rgb says why).
    assert previews == []


def test_loads_from_a_directory_and_a_missing_one_is_one_line(tmp_path, loaded):
    from diffusers import Flux2KleinPipeline

    from truthloop.ml.families.painting import load_generator
    from truthloop.ml.models import ModelUnavailable

    pipe, record = loaded
    assert isinstance(pipe, Flux2KleinPipeline) and pipe.config.is_distilled
    missing = str(tmp_path / "no-such-klein")
    with pytest.raises(ModelUnavailable) as error:
        load_generator("flux2-klein", missing, "cpu")
    message = str(error.value)
    assert missing in message and "no such directory" in message and "\n" not in message


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
