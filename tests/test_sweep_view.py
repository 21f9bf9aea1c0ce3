"""`truthloop view SWEEP_DIR`: the sweep table follows the directory, shows captions literally,
and Enter opens a trajectory's own view."""

from __future__ import annotations

import pytest

from faulthelpers import assert_one_clean_error_line, run_main
from sweep_fakes import make_sweep
from truthloop.sweep.worker import TrajectoryWorker
from tui_helpers import screen_text, wait_for
from tui.screens import ViewScreen
from tui.sweep_view import SweepApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def cell(app: SweepApp, number: int, column: str) -> str:
    return app.query_one("#sweep-table").get_cell(str(number), column).plain


async def test_table_follows_the_sweep_and_enter_opens_a_trajectory(tmp_path):
    sweep_dir = tmp_path / "sweep"
    trajs = make_sweep(sweep_dir, ["h1", "c1", "n1"], [0], run=[0])
    app = SweepApp(sweep_dir, preview="none", poll_interval=0.05)
    async with app.run_test(size=(120, 30)) as pilot:
        assert [cell(app, n, "state") for n in range(3)] == ["converged", "pending", "pending"]
        # The hostile caption is shown as text: tags and brackets kept, nothing interpreted.
        truth = cell(app, 0, "truth")
        assert truth.startswith("fixed: <script>alert(1)</script> [bol") and "\x1b" not in truth

        # Enter on a trajectory that has not started: nothing to open.
        await pilot.press("down", "enter")
        await pilot.pause()
        assert not isinstance(app.screen, ViewScreen)

        # The sweep goes on while we watch: the table follows.
        worker = TrajectoryWorker("sweep_fakes:attractor_factory")
        worker.run({"run_dir": str(trajs[1].run_dir(sweep_dir)), "config": trajs[1].config})
        await wait_for(pilot, lambda: cell(app, 1, "state") == "converged")
        assert cell(app, 1, "truth").startswith("3-cycle: cyc3")
        assert cell(app, 1, "it") == "5"

        assert "1 pending" in str(app.query_one("#sweep-header").render())

        # Enter: the trajectory's own run view, over the table; Escape and q come back.
        for back in ("escape", "q"):
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen)
                           and app.screen.state == "converged")
            assert app.screen.run_dir == trajs[1].run_dir(sweep_dir)
            assert len(app.screen.records) == 6  # c1's five images and the repeat
            await pilot.press(back)
            await wait_for(pilot, lambda: not isinstance(app.screen, ViewScreen))
            assert app.is_running
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0




@pytest.mark.parametrize("size", [(120, 30), (80, 24)], ids=["120x30", "80x24"])
async def test_a_damaged_run_reads_as_damaged_and_opening_it_says_why(tmp_path, size):
    """A run.json cut short (its summary still says converged): the row says damaged and why,
    and its run view says what is wrong, pointing at no error.log (there is none)."""
    sweep_dir = tmp_path / "sweep"
    trajs = make_sweep(sweep_dir, ["h1", "a1"], [0], run=[0, 1])
    run_dir = trajs[1].run_dir(sweep_dir)
    with open(run_dir / "run.json", "r+b") as handle:
        handle.truncate(200)
    app = SweepApp(sweep_dir, preview="none", poll_interval=0.05)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert [cell(app, n, "state") for n in range(2)] == ["converged", "damaged"]
        lines = screen_text(app).splitlines()
        assert "(1 converged, 1 damaged)" in lines[0]
        row = next(line for line in lines[2:] if "damaged" in line)
        assert "fixed" not in row and "run.json is" in row, row  # why, in its one line
        said = " ".join(cell(app, 1, column) for column in ("caption", "truth"))
        if size == (120, 30):
            assert said.startswith("run.json is not valid: Expecting"), said
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen)
                       and app.screen.state == "error")
        text = " ".join(line.strip() for line in screen_text(app).splitlines())
        assert "run.json is not valid: Expecting" in text, text
        assert "error.log" not in text and "resume" not in text
        if size == (120, 30):  # (at 80x24 the banner's four rows end inside the long path)
            assert "run directory left as it was" in text


def test_view_of_a_sweep_needs_a_terminal(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    make_sweep(sweep_dir, ["a1"], [0], run=[])
    assert run_main(["view", str(sweep_dir)]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "needs a terminal")


def test_a_grid_over_pairs_reads_as_the_pair_first():
    from tui.sweep_view import SweepApp

    row = {"settings": {"generator": "flux2-klein", "captioner": "blip", "clauses": 1,
                        "control": ""}}
    assert SweepApp.grid(row) == "flux2-klein + blip clauses=1 control=none"
    assert SweepApp.grid({"settings": {"clauses": 0}}) == "clauses=0"


async def test_the_table_keeps_following_while_help_is_open(tmp_path):
    """The poll timer and resizes reach the sweep's table under another screen (it raised
    NoMatches when a poll fired with help open, on a busy machine)."""
    from tui.screens import HelpScreen

    make_sweep(tmp_path / "sweep", ["h1"], [0], run=[0])
    app = SweepApp(tmp_path / "sweep", preview="none", poll_interval=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        app.poll()
        app._fit()
        assert app.table.row_count == 1


async def test_a_poll_or_resize_due_while_the_view_closes_does_nothing(tmp_path):
    """Textual removes the screens before it stops the app's timers: a tick or a deferred fit
    that comes then must not look for the table (NoMatches, in a busy CI run, on quitting)."""
    make_sweep(tmp_path / "sweep", ["h1"], [0], run=[0])
    app = SweepApp(tmp_path / "sweep", preview="none", poll_interval=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
    assert not app.screen_stack  # closed: no screen, no table
    app.poll()
    app._fit()
