"""Fake backends with designed attractors, built by name inside a Ray worker process
(`--backend sweep_fakes:attractor_factory`; the tests put this folder on PYTHONPATH).

Captions depend only on the prompt that drew an image (fakes.FakePainter colours an image by its
prompt; the captioner reads the colour back), so every start's trajectory is known in advance:

    start "a1" -> a2 -> fixA                       fixed point        (motif "sea")
    start "b1" -> cycB1 -> cycB2 -> cycB1          2-cycle            (motif "sea")
    start "c1" -> c2 -> cyc3x -> cyc3y -> cyc3z    3-cycle            (motif "city")
    start "d1" -> cyc3y -> cyc3z -> cyc3x          the same 3-cycle, entered at another phase
    start "e1" -> fixE                             fixed point        (motif "city")
    start "n1" -> n2 -> n3 -> ...                  never repeats (hits --max-iters 8)
    start "h1" -> HOSTILE                          fixed point on a caption full of markup

Start images: a flat colour from START_COLOURS is captioned as its start prompt.
"""

from __future__ import annotations

import os
import time

import fakes
from truthloop.loop import Backends

HOSTILE = "<script>alert(1)</script> [bold red]boom[/bold red] \x1b[31m"

SCRIPT = {
    "a1": "a2", "a2": "fixA", "fixA": "fixA",
    "b1": "cycB1", "cycB1": "cycB2", "cycB2": "cycB1",
    "c1": "c2", "c2": "cyc3x", "cyc3x": "cyc3y", "cyc3y": "cyc3z", "cyc3z": "cyc3x",
    "d1": "cyc3y",
    "e1": "fixE", "fixE": "fixE",
    # Captions are untrusted text: markup and HTML in a truth must come out literally.
    "h1": HOSTILE, HOSTILE: HOSTILE,
} | {f"n{i}": f"n{i + 1}" for i in range(1, 40)}

START_COLOURS = {(10, 20, 30): "a1", (40, 50, 60): "d1", (70, 80, 90): "e1"}

# The attractors a sweep over every start must find: canonical prompts -> motif.
ATTRACTORS = {("fixA",): "sea", ("cycB1", "cycB2"): "sea",
              ("cyc3x", "cyc3y", "cyc3z"): "city", ("fixE",): "city"}

FAMILY = {"sea": [1.0, 0.0, 0.0, 0.0], "city": [0.0, 0.0, 1.0, 0.0]}


def family(prompt: str) -> str:
    for key, motif in ATTRACTORS.items():
        if prompt in key:
            return motif
    return "other"


def _vector(prompt: str) -> list[float]:
    """Unit vector: the prompt's motif direction plus a small prompt-specific tilt."""
    base = FAMILY.get(family(prompt), [0.0, 1.0, 0.0, 0.0])
    tilt = (sum(map(ord, prompt)) % 7) / 100.0
    vector = [base[0], base[1], base[2], base[3] + tilt]
    norm = sum(x * x for x in vector) ** 0.5
    return [x / norm for x in vector]


class ScriptCaptioner(fakes.FakeCaptioner):
    def __init__(self) -> None:
        super().__init__(SCRIPT)
        self.by_colour.update(START_COLOURS)

    def caption(self, image):
        return self.by_colour.get(image.getpixel((0, 0)), self.default)


class SweepPainter(fakes.FakePainter):
    """FakePainter that a sweep worker can point at another trajectory. With TRUTHLOOP_FAKE_DIR
    set, it sleeps the seconds in that folder's `delay` file before each image (so a test can
    kill a worker mid-trajectory) and appends one line per image to its `paints.log`."""

    def __init__(self, seed: int, seed_mode: str):
        super().__init__(seed=seed, seed_mode=seed_mode, steps=2)

    def start_trajectory(self, generate) -> None:
        import random

        self.seed, self.seed_mode = generate.seed, generate.seed_mode
        self._shared = random.Random(self.seed)

    def paint(self, prompt, on_step):
        folder = os.environ.get("TRUTHLOOP_FAKE_DIR")
        if folder:
            try:
                with open(os.path.join(folder, "delay")) as delay:
                    time.sleep(float(delay.read()))
            except (OSError, ValueError):
                pass
        image = super().paint(prompt, on_step)
        if folder:
            with open(os.path.join(folder, "paints.log"), "a") as handle:
                handle.write(f"{os.getpid()}\t{prompt}\n")
        return image


class PromptEmbedder:
    """Image features: the vector of the prompt that drew the image; text features likewise."""

    def __init__(self) -> None:
        self.prompt_of = {}
        for prompt in SCRIPT:
            for noise in range(4):
                self.prompt_of[fakes._colour(f"{prompt}|{noise}")] = prompt

    def features(self, image):
        prompt = self.prompt_of.get(image.convert("RGB").getpixel((0, 0)), "")
        return _vector(prompt)

    def text_features(self, prompts):
        return [_vector(p) for p in prompts]


def attractor_factory(config, emit):
    return Backends(captioner=ScriptCaptioner(),
                    painter=SweepPainter(config.generate.seed, config.generate.seed_mode),
                    embedder=PromptEmbedder(), device="cpu",
                    details={"clip_name": "fake"})


def start_image(prompt: str):
    from PIL import Image

    colour = next(c for c, p in START_COLOURS.items() if p == prompt)
    return Image.new("RGB", (16, 16), colour)


def make_sweep(sweep_dir, prompts: list[str], seeds: list[int], run: bool | list[int] = True):
    """A sweep directory over these start prompts, its trajectories run in this process by the
    sweep worker (no Ray): all of them, or those numbered in `run`. Returns the trajectories."""
    from truthloop.config import RunConfig
    from truthloop.store import atomic_write_json
    from truthloop.sweep.spec import make_spec, trajectories
    from truthloop.sweep.worker import TrajectoryWorker

    base = RunConfig()
    base.loop.max_iters = 8
    spec = make_spec(base, [], prompts, seeds, {}, backend="sweep_fakes:attractor_factory")
    sweep_dir.mkdir(parents=True)
    atomic_write_json(sweep_dir / "sweep.json", spec)
    worker = TrajectoryWorker(spec["backend"])
    trajs = trajectories(spec)
    for trajectory in trajs:
        if run is not True and trajectory.number not in run:
            continue
        outcome = worker.run({"run_dir": str(trajectory.run_dir(sweep_dir)),
                              "config": trajectory.config})
        assert outcome["status"] in ("converged", "max_iters"), outcome
    assert worker.loads <= 1  # one model load for every trajectory and seed
    return trajs
