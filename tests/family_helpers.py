"""Shared setup of the model-family tests (tests/test_family_*.py): a family's defaults as a run
starts with them, its tiny checkpoint loaded the way the loop loads it, test images, and the checks
every family must pass alike (a stop mid-image, a missing directory, captions that are words).

Each test file still writes out the library's plain call it compares the loop against."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

PROMPT = "a red dog sitting in a field"


def noise_image(seed: int) -> Image.Image:
    """A 48x64 picture of random pixels: `seed` picks which."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _run_config(role: str, family: str) -> Any:
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig()
    setattr(config.models, role, family)
    apply_pair_defaults(config)
    return config


def generate_config(family: str, **changes: Any) -> Any:
    """The GenerateConfig a run of the generator `family` starts with (families.py's defaults),
    with `changes`."""
    return dataclasses.replace(_run_config("generator", family).generate, **changes)


def caption_config(family: str, **changes: Any) -> Any:
    """The CaptionConfig a run of the captioner `family` starts with (families.py's defaults),
    with `changes`."""
    return dataclasses.replace(_run_config("captioner", family).caption, **changes)


def generator_fixtures(family: str) -> tuple[Any, Any]:
    """Module-scoped fixtures `tiny_dir` (the family's tiny checkpoint) and `loaded` (its pipeline
    and source record, as the loop loads them); a test module binds both names."""

    @pytest.fixture(scope="module")
    def tiny_dir(truthloop_cache):
        from truthloop.ml.tiny import tiny_family_model

        return tiny_family_model("generator", family)

    @pytest.fixture(scope="module")
    def loaded(tiny_dir):
        from truthloop.ml.families.painting import load_generator

        return load_generator(family, tiny_dir, "cpu")

    return tiny_dir, loaded


def captioner_fixtures(family: str) -> tuple[Any, Any]:
    """Module-scoped fixtures `tiny_dir` (the family's tiny checkpoint) and `captioner` (loaded
    as the loop loads it, at the family's defaults); a test module binds both names."""

    @pytest.fixture(scope="module")
    def tiny_dir(truthloop_cache):
        from truthloop.ml.tiny import tiny_family_model

        return tiny_family_model("captioner", family)

    @pytest.fixture(scope="module")
    def captioner(tiny_dir):
        from truthloop.ml.families.captioning import load_captioner

        captioner, record = load_captioner(family, tiny_dir, "cpu", caption_config(family))
        return captioner

    return tiny_dir, captioner


def paint(pipe: Any, family: str, config: Any, prompt: str = PROMPT) -> Image.Image:
    """The loop's painter's image of `prompt`."""
    from truthloop.ml.families.painting import FamilyPainter

    return FamilyPainter(pipe, family, config, "cpu").paint(prompt, lambda step, total: None)


def assert_the_same_picture(image: Image.Image, expected: Image.Image,
                            size: tuple[int, int]) -> None:
    """`image` is `expected` pixel for pixel, both of `size`, and a picture (not a flat colour)."""
    assert image.size == expected.size == size
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert np.asarray(image).std() > 5


def assert_the_image_follows_prompt_and_seed(pipe: Any, family: str, side: int) -> None:
    """Another prompt or another seed: another image; the same ones: the same image."""

    def draw(prompt: str, seed: int) -> np.ndarray:
        config = generate_config(family, width=side, height=side, seed=seed)
        return np.asarray(paint(pipe, family, config, prompt)).astype(int)

    first = draw(PROMPT, 1)
    assert first.shape == (side, side, 3)
    assert not np.array_equal(first, draw("an old train at night", 1))
    assert not np.array_equal(first, draw(PROMPT, 2))
    assert np.array_equal(first, draw(PROMPT, 1))


def stop_at_step_two(pipe: Any, family: str,
                     config: Any) -> tuple[list[tuple[int, int]], list[tuple]]:
    """The loop's painter paints PROMPT with a preview every step and a stop request at step 2,
    which must abandon the image (StopRequested comes out of paint); the (step, total) pairs seen
    and the previews shown, (step, width, height, rgb) each."""
    from truthloop.loop import StopRequested
    from truthloop.ml.families.painting import FamilyPainter

    painter = FamilyPainter(pipe, family, config, "cpu")
    previews, steps = [], []
    painter.preview = lambda *shown: previews.append(shown)
    painter.preview_every = 1

    def on_step(step, total):
        steps.append((step, total))
        if step == 2:
            raise StopRequested()

    with pytest.raises(StopRequested):
        painter.paint(PROMPT, on_step)
    return steps, previews


def assert_previews_of_the_two_steps(previews: list[tuple], side: int) -> None:
    """stop_at_step_two's previews: steps 1 and 2, each a side x side picture of RGB bytes."""
    assert [(step, width, height) for step, width, height, _ in previews] == \
        [(1, side, side), (2, side, side)]
    assert all(len(rgb) == side * side * 3 for *_, rgb in previews)


def assert_a_missing_directory_is_one_line(kind: str, family: str, tmp_path: Path) -> None:
    """Loading the generator or captioner (`kind`) `family` from a directory that is not there
    fails with one line that names the directory."""
    from truthloop.ml.families.captioning import load_captioner
    from truthloop.ml.families.painting import load_generator
    from truthloop.ml.models import ModelUnavailable

    missing = str(tmp_path / f"no-such-{family}")
    with pytest.raises(ModelUnavailable) as error:
        if kind == "generator":
            load_generator(family, missing, "cpu")
        else:
            load_captioner(family, missing, "cpu", caption_config(family))
    message = str(error.value)
    assert missing in message and "no such directory" in message and "\n" not in message


def three_captions(captioner: Any, vocabulary: set[str]) -> list[str]:
    """The captions of noise images 1, 2 and 3: each non-empty words of `vocabulary`, and
    greedy (image 1 again gives its caption again)."""
    captions = [captioner.caption(noise_image(seed)) for seed in (1, 2, 3)]
    assert all(caption and set(caption.split()) <= vocabulary for caption in captions), captions
    assert captioner.caption(noise_image(1)) == captions[0]  # greedy: same image, same words
    return captions
