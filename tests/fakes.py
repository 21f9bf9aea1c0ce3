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


# -- designed measures: embedders whose similarities are known in advance ----------------------
# Vectors live in one space of DIM axes; each design names its axes, so two vectors share only the
# axes it says and every cosine is exact arithmetic (up to the loop's 6-decimal rounding). Axis
# numbers depend only on the names (never on the order of use): every load of the backends, in
# any run of a sweep, puts a name on the same axis, as a real embedder would.
DIM = 1024


class Axes:
    """Axis numbers by name: the sorted names from `first` on."""

    def __init__(self, names, first: int = 0) -> None:
        self.numbers = {name: first + i for i, name in enumerate(sorted(set(names), key=repr))}
        if first + len(self.numbers) > DIM:
            raise ValueError("the design needs more axes than DIM")

    def __getitem__(self, name: object) -> int:
        return self.numbers[name]


def vector(parts: dict[int, float]) -> list[float]:
    """A unit vector from {axis: weight}."""
    norm = sum(w * w for w in parts.values()) ** 0.5
    out = [0.0] * DIM
    for axis, weight in parts.items():
        out[axis] += weight / norm
    return out


class DesignedEmbedder:
    """Image features by the prompt that drew the image (FakePainter colours an image by its
    prompt), text features by the text; both from the design's functions."""

    name = "designed (test)"

    def __init__(self, design, prompts):
        self.design = design
        self.prompt_by_colour = {_colour(f"{p}|{n}"): p for p in prompts for n in range(4)}

    def features(self, image):
        pixel = image.convert("RGB").getpixel((0, 0))
        if pixel == (1, 2, 3):  # the conventional fake start image
            return self.design.start_image_vector()
        return self.design.image_vector(self.prompt_by_colour[pixel])

    def text_features(self, prompts):
        return [self.design.text_vector(p) for p in prompts]


class SeedablePainter(FakePainter):
    """FakePainter that can be pointed at another seed (as the real painters can): the
    generator-only control draws each image with a new seed."""

    def __init__(self, seed: int = 42, seed_mode: str = "reseed", steps: int = 2):
        super().__init__(seed=seed, seed_mode=seed_mode, steps=steps)
        self.seeds: list[int] = []

    def start_trajectory(self, generate) -> None:
        self.seed, self.seed_mode = generate.seed, generate.seed_mode
        self._shared = random.Random(self.seed)

    def paint(self, prompt, on_step):
        self.seeds.append(self.seed)
        return super().paint(prompt, on_step)


def decay(g: int, rate: float, floor: float) -> float:
    import math

    return floor + (1.0 - floor) * math.exp(-rate * g)


class DriftDesign:
    """A trajectory that never repeats and drifts at known rates.

    Prompts "drift 0", "drift 1", ...: the image of "drift g" is captioned "drift g+1, caption
    g+1" (compared: "drift g+1" with --clauses 1). An image of generation G has cosine
    decay(G, image_rate, image_floor) to the start image, a compared prompt of iteration i
    decay(i, text_rate, text_floor) to the first one, and a caption has cosine `cross` to the
    image it describes (so cross_start = cross * that image's similarity to the start)."""

    def __init__(self, image_rate=0.15, image_floor=0.4, text_rate=0.3, text_floor=0.2,
                 cross=0.3, image_start=False, generations=80):
        self.image_rate, self.image_floor = image_rate, image_floor
        self.text_rate, self.text_floor = text_rate, text_floor
        self.cross, self.image_start, self.generations = cross, image_start, generations
        if generations > 80:
            raise ValueError("DriftDesign has axes for 80 generations")
        self.axes = DriftAxes()

    @staticmethod
    def prompt(g: int) -> str:
        return f"drift {g}"

    @staticmethod
    def caption(g: int) -> str:
        return f"drift {g}, caption {g}"

    def script(self) -> dict[str, str]:
        return {self.prompt(g): self.caption(g + 1) for g in range(self.generations)}

    def image_similarity(self, generation: int) -> float:
        return decay(generation, self.image_rate, self.image_floor)

    def text_similarity(self, iteration: int) -> float:
        return decay(iteration, self.text_rate, self.text_floor)

    def _image(self, generation: int) -> list[float]:
        a = self.image_similarity(generation)
        parts = {self.axes["image start"]: a}
        if generation:
            parts[self.axes[("image", generation)]] = (1 - a * a) ** 0.5
        return vector(parts)

    def start_image_vector(self):
        return self._image(0)

    def image_vector(self, prompt: str):
        g = int(prompt.split()[-1])
        return self._image(g + 1 if self.image_start else g)

    def text_vector(self, text: str):
        number = int(text.split(",")[0].split()[-1])
        if "," not in text:  # a compared prompt: iteration `number`
            b = self.text_similarity(number)
            parts = {self.axes["text start"]: b}
            if number:
                parts[self.axes[("text", number)]] = (1 - b * b) ** 0.5
            return vector(parts)
        # A caption: it describes the image of "drift number-1" (or the start image).
        described = self.start_image_vector() if number == 0 \
            else self.image_vector(self.prompt(number - 1))
        out = [self.cross * x for x in described]
        out[self.axes[("caption", number)]] += (1 - self.cross ** 2) ** 0.5
        return out

    def backends(self, config=None, painter=None):
        seed = config.generate.seed if config else 42
        seed_mode = config.generate.seed_mode if config else "reseed"
        script = self.script()
        captioner = FakeCaptioner(script, start=self.caption(0))
        return Backends(captioner=captioner,
                        painter=painter or SeedablePainter(seed, seed_mode),
                        embedder=DesignedEmbedder(self, script), device="cpu",
                        details={"clip_name": "designed (test)"})


class DriftAxes:
    """DriftDesign's axes, by formula: 0-80 images, 81-161 prompts, 162-242 captions."""

    def __getitem__(self, name):
        if name == "image start":
            return 0
        if name == "text start":
            return 81
        kind, g = name
        return {"image": 1, "text": 82, "caption": 162}[kind] + g


class NearDesign:
    """Prompts in families: "barn 3" and "barn 7" are two members of the family "barn". A
    member's text vector (and its image's vector) is cos(theta) along the family's axis plus
    sin(theta) along its own, so two members of a family have cosine `member_cosine` (0.98 by
    default: near repeats at threshold 0.95) and anything else cosine 0."""

    def __init__(self, script: dict[str, str], member_cosine: float = 0.98,
                 start_caption: str = "start, s"):
        self.script = script
        self.c = member_cosine ** 0.5  # cos(theta): two members have cos^2 = member_cosine
        self.start_caption = start_caption
        # "lost": what FakeCaptioner says of an image the script does not know
        texts = set(script) | {caption.split(",")[0] for caption in script.values()} | {"lost"}
        names = [("image", "<start>")]
        for kind in ("image", "text"):
            for text in texts:
                found = self.family(text)
                names += [(kind, *found), (kind, found[0])] if found else [(kind, text)]
        self.axes = Axes(names, first=250)  # past DriftDesign's axes: one space for both

    @staticmethod
    def family(text: str) -> tuple[str, str] | None:
        words = text.split(",")[0].split()
        if len(words) == 2 and words[0] in ("barn", "sea", "moon") and words[1].isdigit():
            return words[0], words[1]
        return None

    def _vector(self, kind: str, text: str):
        found = self.family(text)
        if found is None:
            return vector({self.axes[(kind, text)]: 1.0})
        family, member = found
        return vector({self.axes[(kind, family)]: self.c,
                       self.axes[(kind, family, member)]: (1 - self.c ** 2) ** 0.5})

    def start_image_vector(self):
        return vector({self.axes[("image", "<start>")]: 1.0})

    def image_vector(self, prompt: str):
        return self._vector("image", prompt)

    def text_vector(self, text: str):
        return self._vector("text", text.split(",")[0])

    def backends(self, config=None):
        seed = config.generate.seed if config else 42
        seed_mode = config.generate.seed_mode if config else "reseed"
        prompts = set(self.script) | {c.split(",")[0] for c in self.script.values()} | {"lost"}
        return Backends(captioner=FakeCaptioner(self.script, start=self.start_caption),
                        painter=SeedablePainter(seed, seed_mode),
                        embedder=DesignedEmbedder(self, prompts), device="cpu",
                        details={"clip_name": "designed (test)"})


# -- designed sweeps (a sweep worker builds backends by name: "fakes:<factory>") ----------------
# Starts whose trajectories reach known near attractors (threshold 0.95, members 0.98 apart):
#   "s1" -> barn 1 -> barn 2 -> barn 3 -> barn 4 ...        near fixed point "barn 1"
#   "s2" -> x2 -> barn 7 -> barn 8 -> barn 9 -> barn 10 ...  near fixed point "barn 7": the same
#                                                            place as "barn 1" (cosine 0.98)
#   "s3" -> sea 1 -> moon 1 -> sea 2 -> moon 2 -> sea 3 ...  near 2-cycle (sea 1, moon 1)
#   "s4" -> fixZ -> fixZ                                     exact fixed point
#   "s5" -> n 1 -> n 2 -> ...                                never repeats
# and "drift 0" -> drift 1 -> ... (DriftDesign), whose image drift rate is guidance / 10.
NEAR_SCRIPT = {
    "s1": "barn 1, a", **{f"barn {k}": f"barn {k + 1}, a" for k in range(1, 6)},
    "s2": "x2, b", "x2": "barn 7, b", **{f"barn {k}": f"barn {k + 1}, b" for k in range(7, 12)},
    "s3": "sea 1, c", **{f"sea {k}": f"moon {k}, c" for k in range(1, 8)},
    **{f"moon {k}": f"sea {k + 1}, c" for k in range(1, 8)},
    "s4": "fixZ, d", "fixZ": "fixZ, d",
    "s5": "n 1, e", **{f"n {k}": f"n {k + 1}, e" for k in range(1, 40)},
}


class StudyDesign:
    """NearDesign's script and DriftDesign's chain in one space (the report's sweeps)."""

    def __init__(self, image_rate: float):
        self.near = NearDesign(NEAR_SCRIPT)
        self.drift = DriftDesign(image_rate=image_rate)
        self.script = {**NEAR_SCRIPT, **self.drift.script()}

    def _designer(self, text: str):
        return self.drift if text.startswith("drift") else self.near

    def start_image_vector(self):
        return self.near.start_image_vector()

    def image_vector(self, prompt: str):
        return self._designer(prompt).image_vector(prompt)

    def text_vector(self, text: str):
        return self._designer(text).text_vector(text)


def study_factory(config, emit):
    design = StudyDesign(image_rate=config.generate.guidance / 10)
    prompts = set(design.script) | {c.split(",")[0] for c in design.script.values()} | {"lost"}
    return Backends(captioner=FakeCaptioner(design.script),
                    painter=SeedablePainter(config.generate.seed, config.generate.seed_mode),
                    embedder=DesignedEmbedder(design, prompts), device="cpu",
                    details={"clip_name": "designed (test)"})


def run_sweep(sweep_dir, base, prompts, seeds, grid, backend="fakes:study_factory"):
    """A sweep directory made and run in this process by the sweep worker (no Ray)."""
    from truthloop.store import atomic_write_json
    from truthloop.sweep.spec import make_spec, trajectories
    from truthloop.sweep.worker import TrajectoryWorker

    spec = make_spec(base, [], prompts, seeds, grid, backend=backend)
    sweep_dir.mkdir(parents=True)
    atomic_write_json(sweep_dir / "sweep.json", spec)
    worker = TrajectoryWorker(spec["backend"])
    trajs = trajectories(spec)
    for trajectory in trajs:
        outcome = worker.run({"run_dir": str(trajectory.run_dir(sweep_dir)),
                              "config": trajectory.config})
        assert outcome["status"] in ("converged", "max_iters"), outcome
    return trajs
