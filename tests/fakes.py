"""Deterministic stand-ins for the models, for the loop's own logic (no torch, instant).

FakePainter draws a flat colour from a hash of the prompt (and of its random stream in shared
mode); FakeCaptioner names that colour through a table of captions, so a test can script any
trajectory: the caption of an image depends only on the prompt that drew it.
"""

from __future__ import annotations

import hashlib
import random
import threading
from typing import Callable

from PIL import Image

from truthloop.loop import Backends


def _colour(text: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(text.encode()).digest()
    return digest[0], digest[1], digest[2]


class FakePainter:
    def __init__(self, seed: int = 42, seed_mode: str = "reseed", steps: int = 4,
                 step_hook: Callable[[int], None] | None = None):
        self.seed, self.seed_mode, self.steps = seed, seed_mode, steps
        self._shared = random.Random(seed)
        self.step_hook = step_hook
        self.painted: list[str] = []

    def paint(self, prompt: str, on_step):
        rng = self._shared if self.seed_mode == "shared" else random.Random(self.seed)
        noise = rng.randrange(4)  # shared mode: the same prompt can give another image
        for step in range(1, self.steps + 1):
            if self.step_hook:
                self.step_hook(step)
            on_step(step, self.steps)
        self.painted.append(prompt)
        return Image.new("RGB", (16, 16), _colour(f"{prompt}|{noise}"))

    def rng_state(self):
        if self.seed_mode != "shared":
            return None
        return repr(self._shared.getstate())

    def set_rng_state(self, state):
        if self.seed_mode == "shared" and state:
            import ast

            self._shared.setstate(ast.literal_eval(state))


class FakeCaptioner:
    """caption(image) = script[prompt that drew it]; unknown images get `default`."""

    def __init__(self, script: dict[str, str], start: str = "start caption, a, b",
                 default: str = "lost, in, noise"):
        self.by_colour = {}
        for prompt, caption in script.items():
            for noise in range(4):
                self.by_colour[_colour(f"{prompt}|{noise}")] = caption
        self.start, self.default = start, default
        self.calls = 0

    def caption(self, image):
        self.calls += 1
        pixel = image.getpixel((0, 0))
        if pixel == (1, 2, 3):  # the conventional fake start image
            return self.start
        return self.by_colour.get(pixel, self.default)


class FakeEmbedder:
    def features(self, image):
        r, g, b = image.convert("RGB").getpixel((0, 0))
        norm = (r * r + g * g + b * b) ** 0.5 or 1.0
        return [r / norm, g / norm, b / norm]


def start_image() -> Image.Image:
    return Image.new("RGB", (16, 16), (1, 2, 3))


def factory(captioner, painter, gate: threading.Event | None = None):
    """A BackendFactory; `gate` lets a test hold the loop in its loading stage."""

    def build(config, emit):
        if gate is not None:
            gate.wait(10)
        return Backends(captioner=captioner, painter=painter, embedder=FakeEmbedder())

    return build
