"""Fake batched models for the lockstep engine (no torch, instant): the same images and captions
as fakes.FakePainter / FakeCaptioner give a single run, so a batch can be checked against runs
alone, and every call's batch is recorded."""

from __future__ import annotations

import ast
import random

from PIL import Image

from fakes import FakeCaptioner, FakeEmbedder, _colour


class FakeStream:
    def __init__(self, generate):
        self.seed, self.seed_mode = generate.seed, generate.seed_mode
        self._shared = random.Random(self.seed)

    def noise(self) -> int:
        rng = self._shared if self.seed_mode == "shared" else random.Random(self.seed)
        return rng.randrange(4)  # as FakePainter draws it

    def rng_state(self):
        return repr(self._shared.getstate()) if self.seed_mode == "shared" else None

    def set_rng_state(self, state):
        if self.seed_mode == "shared" and state:
            self._shared.setstate(ast.literal_eval(state))


class FakeBatchModels:
    device = "cpu"
    details = None
    loaded = None
    has_embedder = True

    def __init__(self, script, start="start caption, a, b", steps=2):
        self.captioner = FakeCaptioner(script, start=start)
        self.embedder = FakeEmbedder()
        self.steps = steps
        self.calls: list[tuple] = []  # ("paint", prompts, pad_to) / ("caption"|"features", n)

    def stream(self, config):
        return FakeStream(config.generate)

    def paint(self, prompts, streams, on_step, pad_to):
        self.calls.append(("paint", list(prompts), pad_to))
        for step in range(1, self.steps + 1):
            on_step(step, self.steps)
        return [Image.new("RGB", (16, 16), _colour(f"{p}|{s.noise()}"))
                for p, s in zip(prompts, streams)]

    def caption(self, images):
        self.calls.append(("caption", len(images)))
        return [self.captioner.caption(image) for image in images]

    def features(self, images):
        self.calls.append(("features", len(images)))
        return [self.embedder.features(image) for image in images]


def factory(models):
    return lambda config, emit: models


# `truthloop sweep --batch N --backend batch_fakes:attractor_factory`: the sweep's designed
# attractors (sweep_fakes), one at a time (embeddings) and batched (the worker adds _batched).
def attractor_factory(config, emit):
    import sweep_fakes

    return sweep_fakes.attractor_factory(config, emit)


def attractor_factory_batched(config, emit):
    import sweep_fakes

    models = FakeBatchModels(sweep_fakes.SCRIPT)
    models.captioner = sweep_fakes.ScriptCaptioner()
    models.embedder = sweep_fakes.PromptEmbedder()
    return models
