"""The terminal app must not slow the engine (issue 20): the real app in a pseudo-terminal, live
preview on, against the same command headless, with the tiny models on the CPU.

Before the engine had a process of its own, the app's drawing held the GIL the engine's thread
needed: on this kind of 2-core machine denoising took ~1.44x as long in the app (1.89 s against
1.31 s per image), and 1.21x with the drawing throttled but the engine still in the app's
process. On 2 cores the clock is noisy (a headless run alone varied 0.79-0.99 s per image here),
so the ratio's bound is generous, 1.25x the headless runs on either side, and a round that
misses it is measured again (up to 3), so a burst of load does not fail it while a slowdown in
every round does. What keeps the engine fast is asserted without a clock: it runs in a process
of its own, and the app's own CPU share while it watches stays small. bench/bench_tui.py measures
the same on the GPU box, with key latencies.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from bench_tui import (AppInPty, cpu_seconds, headless, run_command,  # noqa: E402
                       stage_medians)

BOUND = 1.25
CPU_BOUND = 0.5
MODELS = ["--models", "tiny", "--mode", "fast", "--steps", "30"]
SKIP, TIMED = 2, 6


def headless_generate(work: Path, name: str) -> float:
    run_dir = work / name
    assert headless(run_command(work, MODELS, SKIP + TIMED, run_dir), work / f"{name}.log",
                    timeout=300) == 0, (work / f"{name}.log").read_text()[-500:]
    return stage_medians(run_dir, SKIP, TIMED)["generate"]


def app_run(work: Path, name: str) -> dict:
    """The app's run: its median denoising time, the app process's own CPU share (its engine
    child not counted) and the pid that wrote the run."""
    run_dir = work / name
    command = run_command(work, MODELS, SKIP + TIMED, run_dir) + ["--preview", "halfcell"]
    app = AppInPty(command, 120, 40)
    try:
        assert app.wait_records(run_dir, SKIP, 300), app.text_since(app.started)[-500:]
        cpu, wall = cpu_seconds(app.proc.pid), time.monotonic()
        assert app.wait_records(run_dir, SKIP + TIMED, 300), app.text_since(app.started)[-500:]
        cpu_share = (cpu_seconds(app.proc.pid) - cpu) / (time.monotonic() - wall)
        # The app drew the run as it went: the live preview and the denoising counter.
        screen = app.text_since(app.started)
        assert re.search(r"\(drawing\)\s+step \d+", screen) and "denoise" in screen
        app_pid = app.proc.pid
    finally:
        app.close()
    return {"generate": stage_medians(run_dir, SKIP, TIMED)["generate"], "cpu": cpu_share,
            "writer": json.loads((run_dir / "summary.json").read_text())["pid"], "pid": app_pid}


@pytest.mark.timeout(1200)  # up to 3 rounds of 3 runs on a busy 2-core machine
def test_the_app_costs_the_engine_no_speed(tmp_path, tiny_models):
    ratios = []
    for attempt in range(3):
        before = headless_generate(tmp_path, f"headless-{attempt}a")
        app = app_run(tmp_path, f"app-{attempt}")
        after = headless_generate(tmp_path, f"headless-{attempt}b")
        if attempt == 0:
            # What keeps the engine fast, asserted without a clock race: it is not in the app's
            # interpreter, and drawing the run costs the app little CPU (~0.15 of a core here;
            # with the engine in the app's own process, ~1.9).
            assert app["writer"] != app["pid"], "the engine ran in the app's process"
            assert app["cpu"] <= CPU_BOUND, \
                f"the app used {app['cpu']:.2f} of a core while it watched"
        ratios.append(round(app["generate"] / statistics.mean([before, after]), 3))
        if ratios[-1] <= BOUND:
            break
    assert min(ratios) <= BOUND, \
        f"denoising in the app took {ratios} x its headless time (bound {BOUND})"
