"""What the status line, the drift panel and `?` say (issue 30, item 14): the iteration in progress,
the sparkline's label and its explanation in the help, the CPU fallback said on the status line
(no toast over the footer), and a fork's run directory named as the others are. Each asserts
what is on screen."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fakes import FakeCaptioner, FakePainter, factory
from truthloop import events as ev
from tui.app import TruthLoopApp
from tui_helpers import SCRIPT, START, HoldAt, make_loop, screen_text, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"




class CaptionerHeldAt(FakeCaptioner):
    """Holds the loop inside its `call`-th caption until released (or the loop is stopped)."""

    def __init__(self, call: int):
        super().__init__(SCRIPT, start=START)
        self.call = call
        self.reached = threading.Event()
        self.release = threading.Event()

    def caption(self, image):
        caption = super().caption(image)
        if self.calls == self.call:
            self.reached.set()
            self.release.wait(10)
        return caption


# -- (a) the iteration in progress --------------------------------------------------------------
async def test_the_status_line_names_the_iteration_still_being_drawn(tmp_path):
    """The loop begins #2 (captioning #1's image) while #1's PNG is still being written: #1 is
    not done (its row and image say it is being drawn), so the status line names #1, not #2."""
    captioner = CaptionerHeldAt(call=3)  # #2's caption: #0 done, #1 drawn but not recorded
    loop = make_loop(tmp_path / "run", backend_factory=factory(captioner, FakePainter(steps=4)))
    app = TruthLoopApp(loop=loop, preview="halfcell", stable=True)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, captioner.reached.is_set)
            await wait_for(pilot, lambda: app.query_one("StatusBar").info.iteration == 2)
            status = screen_text(app).splitlines()[0]
            assert "iteration #1  1/20 done" in status, status
            assert "drawing #1…" in screen_text(app)  # what the image pane says meanwhile
            captioner.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "converged")
            status = screen_text(app).splitlines()[0]
            assert "iteration #4  5/20 done" in status, status  # the last one, once it is over
    finally:
        captioner.release.set()
        loop.control.stop()


async def test_a_view_following_a_run_names_the_iteration_being_drawn(tmp_path):
    hold = HoldAt(paint=3, step=1)  # drawing #2; #0 and #1 are in log.jsonl
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        assert hold.reached.wait(10)
        app = TruthLoopApp(run_dir=tmp_path / "run", preview="halfcell", stable=True,
                           poll_interval=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(app.run_screen.records) == 2)
            status = screen_text(app).splitlines()[0]
            assert "following  iteration #2  2/20 done" in status, status
    finally:
        hold.release.set()
        loop.control.stop()
        thread.join(10)


# -- (b) the sparkline's label, and `?` explains the drift panel --------------------------------
def drift_lines(app) -> list[str]:
    region = app.query_one("#drift").region
    return [line[region.x:region.right].rstrip()
            for line in screen_text(app).splitlines()[region.y:region.bottom]]


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
async def test_the_sparkline_says_what_it_plots(tmp_path, size):
    make_loop(tmp_path / "run").run()
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        lines = drift_lines(app)
        bars = lines[1:]  # under the label line
        assert bars and all(line[:1] in "▁▂▃▄▅▆▇█" for line in bars), lines
        if size == (120, 40):  # three rows: the axis's top, the name, its bottom
            assert len(bars) == 3 and bars[1].endswith(" ≈start img"), lines
            assert bars[0].split()[-1].startswith("0.") and bars[2].split()[-1].startswith("0.")
        else:  # one row, 22 columns: the short name, then the axis
            assert len(bars) == 1 and " img " in bars[0] and "–" in bars[0], lines
            assert len(bars[0].split()[0]) >= 8  # the bars keep their room


async def test_help_explains_the_drift_panel_and_scrolls_to_it_at_80x24(tmp_path):
    make_loop(tmp_path / "run").run()
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        await pilot.press("question_mark")
        await pilot.pause()
        text = screen_text(app)
        assert "truthloop — keys" in text and "esc / ? closes" in text  # on the box's border
        assert any(line.strip("│ ").startswith("b ") and "diff base: previous iteration" in line
                   for line in text.splitlines()), text  # the keys, from the top
        assert "the sparkline" not in text  # below the keys: scrolled to
        await pilot.press("end")
        await pilot.pause()
        text = screen_text(app)
        assert "the drift panel: CLIP cosine similarity" in text
        assert "▁▃▅▇ ≈start img  the sparkline: img to the start image" in text
        for name, what in (("img", "each drawn image, to the start image / the previous image"),
                           ("txt", "the compared prompt, to the first iteration's"),
                           ("cap", "the caption, to the start image / the image it describes")):
            assert any(line.strip("│ ").startswith(name) and what in line
                       for line in text.splitlines()), (name, text)
        assert "esc / ? closes" in text
        await pilot.press("escape")
        await pilot.pause()
        assert "the drift panel" not in screen_text(app)


# -- (c) the CPU fallback: on the status line, no toast over the footer -------------------------
@pytest.mark.parametrize("width", [80, 160])
async def test_the_cpu_fallback_is_said_on_the_status_line_not_over_the_footer(tmp_path, width,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    hold = HoldAt(paint=1, step=1)
    run_dir = Path("runs") / "20260101-000000-sample"
    loop = make_loop(run_dir, painter=FakePainter(steps=2, step_hook=hold))
    hold.control = loop.control
    app = TruthLoopApp(loop=loop, preview="halfcell")
    try:
        async with app.run_test(size=(width, 24)) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            app.run_screen.post_message(ev_message(ev.Notice(
                f"{ev.DEVICE_FALLBACK} (this torch is a CPU-only build)")))
            await wait_for(pilot, lambda: app.query_one("StatusBar").info.device)
            lines = screen_text(app).splitlines()
            assert "running on the CPU" not in "\n".join(lines)  # no toast, anywhere
            assert "? Help" in lines[-1] and "q Quit" in lines[-1]  # the footer, whole
            if width == 80:  # the short note beside the run directory
                assert "cpu (auto: no usable GPU)" in lines[1], lines[1]
            else:  # why, where it fits
                assert "device cpu (auto: this torch is a CPU-only build)" in lines[1], lines[1]
            where = lines[1].split("·")[0].strip()  # the run directory keeps its place, first
            assert where.endswith(run_dir.name) and where.startswith("r"), lines[1]
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "converged")
            assert "cpu (auto: " in screen_text(app).splitlines()[1]  # for the whole run
    finally:
        hold.release.set()
        loop.control.stop()


def ev_message(event):
    from tui import messages as m

    return m.from_event(event)


# -- (d) a fork's run directory, as the others are named -----------------------------------------
async def test_a_forks_status_line_names_its_run_directory_relative_to_here(tmp_path,
                                                                            monkeypatch):
    from fork_helpers import fake_forker, make_parent
    from tui.screens import LiveScreen
    from tui.screens.fork import ForkForm

    monkeypatch.chdir(tmp_path)
    parent = make_parent(Path("runs") / "20260101-000000-sample")
    app = TruthLoopApp(run_dir=parent, preview="none", forker=fake_forker())
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.run_screen
        await wait_for(pilot, lambda: view.state == "converged")
        assert screen_text(app).splitlines()[1].startswith(" runs/20260101-000000-sample")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, ForkForm))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
        fork = app.screen
        await wait_for(pilot, lambda: fork.state == "converged" and not fork.loop_active)
        assert fork.run_dir.is_absolute()  # made so by the fork: said relative all the same
        second = screen_text(app).splitlines()[1]
        assert second.startswith(f" runs/{fork.run_dir.name}"), second
        assert str(tmp_path) not in second and "…" not in second.split()[0]
