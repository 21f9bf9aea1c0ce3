"""`--compile`'s paths through real inductor on this CPU, with the tiny checkpoints (issue 29): does
inductor lower the graphs a GPU call will compile, and do they decode and draw what the eager path
does? Before a GPU call spends minutes compiling the full-size models, this runs the same code
paths at tiny size: a captioner family's compiled decode step (fastdecode.compiled_step under
DecodeSteps, as StaticDecoding installs it on CUDA, without the graph capture) for three captions,
no recompile allowed after the first; a generator family's batched call (BatchedFamilyPainter,
padded) through its compiled denoiser and VAE decoder (painting.speed_up), twice.

Inductor's CPU backend writes C++ (a GPU's kernels are Triton's; the graphs, decompositions and
lowering before codegen are the same). Needs a C++ compiler; the seconds mean nothing for a GPU.

    python3 bench/inductor_cpu_dry_run.py [llava-1.5 qwen3-vl florence-2 sdxl flux2-klein z-image]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # family_helpers: the configs the tests use

CAPTIONERS = ("llava-1.5", "qwen3-vl", "florence-2")
GENERATORS = ("sdxl", "flux2-klein", "z-image")


def captioner(family: str) -> str:
    import torch

    from family_helpers import caption_config, noise_image
    from truthloop.ml.families import fastdecode
    from truthloop.ml.families.captioning import FamilyCaptioner, load_captioner
    from truthloop.ml.tiny import tiny_family_model

    loaded, _ = load_captioner(family, tiny_family_model("captioner", family), "cpu",
                               caption_config(family, caption_max_length=24))
    images = [noise_image(seed) for seed in (1, 2, 3)]
    plain = FamilyCaptioner(family, loaded.model, loaded.processor, loaded.config, fast=False)
    expected = [plain.caption(image) for image in images]
    fast = FamilyCaptioner(family, loaded.model, loaded.processor, loaded.config)
    fast.fast = fastdecode.StaticDecoding(fast.model, graphs=True, compiled=False, capture=False)
    fast.fast.steps.forward = fastdecode.compiled_step(fast.model)
    torch._dynamo.reset()
    start = time.perf_counter()
    got = [fast.caption(images[0])]
    compiled_s = time.perf_counter() - start
    torch._dynamo.config.error_on_recompile = True
    try:
        got += [fast.caption(image) for image in images[1:]]
    finally:
        torch._dynamo.config.error_on_recompile = False
    same = sum(a == b for a, b in zip(got, expected))
    return (f"{family}: first caption with the compile {compiled_s:.1f} s; "
            f"{same} of {len(images)} captions the plain call's")


def generator(family: str) -> str:
    import numpy as np
    import torch

    from family_helpers import PROMPT, generate_config
    from truthloop.ml.families.batched import BatchedFamilyPainter
    from truthloop.ml.families.painting import (FamilyPainter, load_generator, speed_up,
                                                undo_speed_up)
    from truthloop.ml.generate import RandomStream
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cpu")
    config = generate_config(family, steps=2, width=64, height=64, compile=True)
    batched = BatchedFamilyPainter(FamilyPainter(pipe, family, config, "cpu"))
    prompts = [PROMPT, "an old train at night"]

    def draw() -> list:
        streams = [RandomStream(config, "cpu") for _ in prompts]
        return [np.asarray(image).astype(int) for image in batched.paint(
            prompts, [stream.generator() for stream in streams], lambda s, t: None, pad_to=3)]

    eager = draw()
    torch._dynamo.reset()
    speed_up(pipe, cuda_graphs=True, compile=True)
    try:
        start = time.perf_counter()
        first = draw()
        compiled_s = time.perf_counter() - start
        second = draw()
    finally:
        undo_speed_up(pipe)
    moved = max(int(np.abs(a - b).max()) for a, b in zip(first + second, eager + eager))
    return (f"{family}: first batch of 2 (padded to 3) with the compile {compiled_s:.1f} s; "
            f"largest move from the eager batch {moved}/255")


def main() -> int:
    from truthloop.ml.backends import quiet_libraries

    quiet_libraries()
    for family in sys.argv[1:] or [*CAPTIONERS, *GENERATORS]:
        try:
            line = captioner(family) if family in CAPTIONERS else generator(family)
        except Exception as error:  # one family failing must not hide the others
            line = f"{family}: FAILED {type(error).__name__}: {str(error)[:300]}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
