"""`truthloop view` of a long run (issue 30, items 4 and 5): opening it does the work of the panes
once, not once per iteration (a 2,000-iteration run took 18 s before its newest row showed), and
home / end go to the first / the newest iteration (the log table's own end key shadowed it).

The work is counted, never timed: how often the sparkline is recomputed, the cursor moved, the
panes refreshed and a row built while N records load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from truthloop.record import Record
from truthloop.store import RunWriter, json_bytes
from tui.app import TruthLoopApp
from tui.screens.run import RunScreen
from tui.widgets.drift import Drift
from tui.widgets.log_table import LogTable
from tui_helpers import make_loop, screen_text, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def prompt(index: int) -> str:
    return f"a cat number {index} on a mat"


def long_run(run_dir: Path, iterations: int) -> Path:
    """A finished run (max_iters) of `iterations` records: a fake loop's first two, then records
    written the way the loop writes them, each with its own prompt and one image linked."""
    make_loop(run_dir, max_iters=2).run()
    writer = RunWriter.reopen(run_dir)
    try:
        first = run_dir / "images" / "0000.png"
        for index in range(2, iterations):
            image = f"images/{index:04d}.png"
            os.link(first, run_dir / image)
            writer.append_record(Record(index=index, caption=prompt(index),
                                        compared=prompt(index), fed_prompt=prompt(index),
                                        seed=42, image=image, sim_prev=0.9,
                                        sim_start=0.9 - index / (2 * iterations),
                                        timings={"caption": 1.0, "generate": 2.0,
                                                 "total": 3.0}))
    finally:
        writer.close()
    return run_dir


def count_calls(monkeypatch, cls: type, name: str, counts: dict[str, int]) -> None:
    original = getattr(cls, name)
    key = f"{cls.__name__}.{name}"
    counts[key] = 0

    def counted(*args, **kwargs):
        counts[key] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, name, counted)


async def load_work(monkeypatch, run_dir: Path, iterations: int) -> dict[str, int]:
    """What opening the run did, counted until its newest row is selected and the app is idle."""
    counts: dict[str, int] = {}
    with monkeypatch.context() as patch:
        count_calls(patch, Drift, "show_records", counts)  # the sparkline and its label
        count_calls(patch, LogTable, "move_cursor", counts)  # each one finds the row's region
        count_calls(patch, RunScreen, "refresh_views", counts)  # caption panel and images
        count_calls(patch, LogTable, "add_row", counts)
        app = TruthLoopApp(run_dir=run_dir, preview="halfcell", stable=True)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.query_one(LogTable)
            await wait_for(pilot, lambda: table.row_count == iterations
                           and table.cursor_row == iterations - 1)
            await pilot.pause()
            assert app.run_screen.current_index == iterations - 1
            assert prompt(iterations - 1) in screen_text(app)  # the newest row, on screen
            return dict(counts)


async def test_opening_a_long_run_redraws_the_panes_once_not_once_per_iteration(
        tmp_path, monkeypatch):
    small = await load_work(monkeypatch, long_run(tmp_path / "small", 10), 10)
    large = await load_work(monkeypatch, long_run(tmp_path / "large", 300), 300)
    rows = small.pop("LogTable.add_row"), large.pop("LogTable.add_row")
    # None of this grows with the run (it was once per record: 300 sparklines, 300 cursor moves
    # that each went over every row so far, 300 refreshes of the caption panel and the images).
    assert large == small
    assert large["Drift.show_records"] <= 2 and large["LogTable.move_cursor"] <= 2
    # Each row is built once (it was twice: at a guessed width, then at the table's own).
    assert rows == (10, 300)


async def test_a_run_that_grows_by_several_records_at_once_is_followed_in_one_pass(
        tmp_path, monkeypatch):
    run_dir = long_run(tmp_path / "run", 20)
    counts: dict[str, int] = {}
    count_calls(monkeypatch, Drift, "show_records", counts)
    app = TruthLoopApp(run_dir=run_dir, preview="halfcell", stable=True, poll_interval=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(LogTable)
        await wait_for(pilot, lambda: table.row_count == 20 and table.cursor_row == 19)
        before = counts["Drift.show_records"]
        lines = b"".join(
            json_bytes(Record(index=index, caption=prompt(index), compared=prompt(index),
                              fed_prompt=prompt(index), image="images/0000.png",
                              sim_prev=0.9, sim_start=0.5).to_json()) + b"\n"
            for index in range(20, 30))
        with open(run_dir / "log.jsonl", "ab") as log:
            log.write(lines)  # ten iterations in one append
        await wait_for(pilot, lambda: table.row_count == 30 and table.cursor_row == 29)
        await pilot.pause()
        assert app.run_screen.current_index == 29
        text = screen_text(app)
        assert prompt(29) in text and "(browsing)" not in text
        # One poll, one sparkline (two if a poll read the append half-written), not ten.
        assert counts["Drift.show_records"] - before <= 2


async def test_end_follows_the_newest_iteration_and_home_goes_to_the_first(tmp_path):
    run_dir = long_run(tmp_path / "run", 100)
    app = TruthLoopApp(run_dir=run_dir, preview="halfcell", stable=True)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(LogTable)
        await wait_for(pilot, lambda: table.row_count == 100 and table.cursor_row == 99)
        await pilot.press(*["up"] * 5)
        await pilot.pause()
        text = screen_text(app)
        assert "#94  (browsing)" in text and prompt(94) in text
        await pilot.press("end")  # was the log table's own key: it scrolled sideways, nothing
        await pilot.pause()
        text = screen_text(app)
        assert "(browsing)" not in text and "#99" in text
        assert app.run_screen.current_index == 99 and table.cursor_row == 99
        await pilot.press("home")
        await pilot.pause()
        text = screen_text(app)
        assert "#0  (browsing)" in text and "a cat sitting on a mat" in text
        assert app.run_screen.current_index == 0 and table.cursor_row == 0
        await pilot.press("end")
        await pilot.pause()
        assert "(browsing)" not in screen_text(app) and table.cursor_row == 99
        await pilot.press("question_mark")
        await pilot.pause()
        help_text = screen_text(app)
        lines = [line.strip(" │") for line in help_text.splitlines()]
        assert any(line.startswith("home ") and line.endswith(" the first iteration")
                   for line in lines)
        assert any(line.startswith("end ") and line.endswith(" follow the newest iteration again")
                   for line in lines)


async def test_resuming_a_long_run_in_the_app_shows_its_history_in_one_pass(
        tmp_path, monkeypatch):
    from truthloop.loop import TruthLoop

    run_dir = tmp_path / "run"
    factory = make_loop(run_dir, max_iters=2).backend_factory
    long_run(run_dir, 300)
    counts: dict[str, int] = {}
    count_calls(monkeypatch, Drift, "show_records", counts)
    loop = TruthLoop.for_resume(run_dir, factory, max_iters=301)
    app = TruthLoopApp(loop=loop, preview="none", stable=True)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.query_one(LogTable)
            await wait_for(pilot, lambda: table.row_count >= 300)
            await wait_for(pilot, lambda: not app.run_screen.loop_active)
            await pilot.pause()
            assert table.row_count == 301 and prompt(299) in str(table.get_row_at(299))
    finally:
        loop.control.stop()
    # The 300 earlier records in one pass, then the new iteration's own (it was one per record).
    assert counts["Drift.show_records"] <= 6
