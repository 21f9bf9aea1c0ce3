"""Helpers for the TUI tests and screenshots: fake-backed loops, gates, waiting on app state."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from truthloop.config import RunConfig
from truthloop.loop import LoopControl, TruthLoop

from fakes import FakeCaptioner, FakePainter, factory, start_image

# A trajectory that settles into a fixed point at iteration 3 (prompt of #4 == prompt of #3).
SCRIPT = {
    "a cat sitting on a mat": "a cat sitting on a red mat, oil painting, soft light",
    "a cat sitting on a red mat, oil painting, soft light":
        "a dog sitting on a red mat, oil painting, by greg rutkowski",
    "a dog sitting on a red mat, oil painting, by greg rutkowski":
        "a dog on a red mat, oil painting",
    "a dog on a red mat, oil painting": "a dog on a red mat, oil painting",
}
START = "a cat sitting on a mat"

# The same trajectory with captions of real length: clip-interrogator's best mode gives 60-75
# words (a BLIP caption, then artists, mediums, movements and flavors, comma separated). The
# snapshots and screenshots use these, so 80x24 is tried with what users see.
LONG = [
    "a cat sitting on a mat in a sunlit room, a photorealistic painting by Carl Larsson, "
    "trending on cgsociety, american scene painting, soft window light, warm colors, cozy "
    "interior, highly detailed fur, sharp focus, golden hour, wooden floor, potted plants in "
    "the background, peaceful atmosphere, 8k resolution, intricate details, cinematic "
    "composition, depth of field, masterpiece, volumetric lighting, ultra realistic, "
    "artstation hq",
    "a cat sitting on a red mat in a sunlit room, an oil painting by Carl Larsson, trending on "
    "artstation, american scene painting, soft window light, warm colors, cozy interior, "
    "highly detailed fur, sharp focus, golden hour, wooden floor, potted plants in the "
    "background, peaceful atmosphere, brush strokes, canvas texture, intricate details, "
    "cinematic composition, depth of field, masterpiece, volumetric lighting, artstation hq",
    "a dog sitting on a red mat in a sunlit room, an oil painting by greg rutkowski, trending "
    "on artstation, american scene painting, soft window light, warm colors, cozy interior, "
    "highly detailed fur, sharp focus, golden hour, wooden floor, potted plants in the "
    "background, peaceful atmosphere, brush strokes, canvas texture, intricate details, "
    "cinematic composition, depth of field, award winning, volumetric lighting, behance hd",
    "a dog on a red mat in a sunlit room, an oil painting by greg rutkowski, trending on "
    "artstation, american scene painting, soft window light, warm colors, cozy interior, "
    "highly detailed fur, sharp focus, golden hour, wooden floor, potted plants in the "
    "background, peaceful atmosphere, brush strokes, canvas texture, intricate details, "
    "cinematic composition, depth of field, award winning, featured on pixiv, "
    "volumetric lighting, behance hd, unreal engine",
]
LONG_SCRIPT = {LONG[0]: LONG[1], LONG[1]: LONG[2], LONG[2]: LONG[3], LONG[3]: LONG[3]}


def make_config(max_iters: int = 20, clauses: int = 0, steps: int = 4) -> RunConfig:
    config = RunConfig()
    config.models.models = "tiny"
    config.loop.max_iters = max_iters
    config.loop.clauses = clauses
    config.generate.steps = steps
    config.input_image = "start.png"
    return config


def make_loop(run_dir: Path, script: dict[str, str] | None = None, start: str = START,
              gate: threading.Event | None = None, painter: FakePainter | None = None,
              backend_factory=None, max_iters: int = 20) -> TruthLoop:
    captioner = FakeCaptioner(SCRIPT if script is None else script, start=start)
    painter = painter or FakePainter(steps=4)
    return TruthLoop(make_config(max_iters=max_iters), run_dir,
                     backend_factory or factory(captioner, painter, gate),
                     control=LoopControl(), input_image=start_image())


def make_long_loop(run_dir: Path, **kwargs) -> TruthLoop:
    """A loop whose captions are as long as clip-interrogator's best mode writes them."""
    return make_loop(run_dir, script=LONG_SCRIPT, start=LONG[0], **kwargs)


class HoldAt:
    """A painter step hook that holds the loop at (paint number, step) until released or stopped."""

    def __init__(self, paint: int, step: int):
        self.paint, self.step = paint, step
        self.calls = 0
        self.release = threading.Event()
        self.reached = threading.Event()
        self.control: LoopControl | None = None

    def __call__(self, step: int) -> None:
        if step == 1:
            self.calls += 1
        if self.calls == self.paint and step == self.step:
            self.reached.set()
            while not self.release.wait(0.02):
                if self.control is not None and self.control.stop_requested:
                    return


def screen_text(app) -> str:
    """The whole screen as the user sees it (modal screens over the ones below), as text."""
    import io

    from rich.console import Console

    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(),
                      color_system=None, record=True, legacy_windows=False, force_terminal=True)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


async def wait_for(pilot, condition, timeout: float = 60.0) -> None:
    """Let the app run until `condition()` holds (no fixed sleeps). The timeout only ends a hang:
    a busy 2-core machine may take many seconds for what a quiet one does at once."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await pilot.pause(0.01)
    await pilot.pause()


# -- scenarios shared by the snapshot tests and screenshots/make.py ------------------------------
FINAL = ("converged", "stopped", "error", "max_iters")


def scenario(name: str, run_dir: Path):
    """(app, run_before) for one of the main states; deterministic with stable=True + halfcell.
    Captions of real length (LONG_SCRIPT)."""
    from tui.app import TruthLoopApp

    def make_loop(run_dir: Path, **kwargs) -> TruthLoop:
        return make_long_loop(run_dir, **kwargs)

    if name == "running":
        hold = HoldAt(paint=3, step=2)
        loop = make_loop(run_dir, painter=FakePainter(steps=4, step_hook=hold))
        hold.control = loop.control

        async def run_before(pilot):
            await wait_for(pilot, lambda: hold.reached.is_set() and pilot.app.run_screen.records
                           and len(pilot.app.run_screen.records) == 3
                           and pilot.app.query_one("StatusBar").info.step == 1)
    elif name == "paused":
        hold = HoldAt(paint=1, step=2)
        loop = make_loop(run_dir, painter=FakePainter(steps=4, step_hook=hold))
        hold.control = loop.control

        async def run_before(pilot):
            await wait_for(pilot, hold.reached.is_set)
            await pilot.press("space")
            hold.release.set()
            await wait_for(pilot, lambda: pilot.app.run_screen.state == "paused")
            for _ in range(2):
                await pilot.press("n")
                await wait_for(pilot, lambda: pilot.app.run_screen.state == "paused")
            await wait_for(pilot, lambda: len(pilot.app.run_screen.records) == 2
                           and not pilot.app.run_screen.records[-1].pending)
    elif name == "converged":
        loop = make_loop(run_dir)

        async def run_before(pilot):
            await wait_for(pilot, lambda: pilot.app.run_screen.state == "converged")
    elif name == "error":
        def broken(config, emit):
            from truthloop import events as ev

            emit(ev.Loading("loading Stable Diffusion"))
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        loop = make_loop(run_dir, backend_factory=broken)

        async def run_before(pilot):
            await wait_for(pilot, lambda: pilot.app.run_screen.state == "error"
                           and not pilot.app.run_screen.loop_active)
    else:
        raise ValueError(name)
    return TruthLoopApp(loop=loop, preview="halfcell", stable=True), run_before


SCENARIOS = ("running", "paused", "converged", "error")
