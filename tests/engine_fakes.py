"""Backend factory makers for truthloop.engine's child process: module-level, so they travel to
a spawned child by name (as cli._loading_factory does for the real models)."""

from __future__ import annotations

import os
import sys
import time

from fakes import FakeCaptioner, FakePainter, factory
from tui_helpers import SCRIPT, START


class SlowPainter(FakePainter):
    """Each denoising step takes 20 ms, so keys land mid-image."""

    def __init__(self) -> None:
        super().__init__(steps=10, step_hook=lambda step: time.sleep(0.02))


def scripted(control):
    """The fixed-point trajectory of tui_helpers.SCRIPT, drawn slowly."""
    return factory(FakeCaptioner(SCRIPT, start=START), SlowPainter())


def endless(control):
    """Captions never repeat: the loop runs until stopped or max_iters."""
    counter = iter(range(10**9))

    class Wandering(FakeCaptioner):
        def caption(self, image):
            return f"caption number {next(counter)}, wandering"

    return factory(Wandering({}, start=START), SlowPainter())


def noisy(control):
    """Writes to stdout and stderr (as libraries do) before loading: never onto the app's
    terminal."""
    print("NOISE ON STDOUT", flush=True)
    print("NOISE ON STDERR", file=sys.stderr, flush=True)
    os.write(2, b"NOISE FROM C\n")
    return scripted(control)


def dying(control):
    """The engine process dies without a word (a segfault, the OOM killer)."""

    def build(config, emit):
        os._exit(3)

    return build


def affinity_reporting(control):
    """Writes the engine's CPU affinity where TRUTHLOOP_TEST_AFFINITY says, then runs."""
    with open(os.environ["TRUTHLOOP_TEST_AFFINITY"], "w") as out:
        out.write(",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0))))
    return scripted(control)
