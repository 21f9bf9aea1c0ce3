"""What a new user tripped over in the terminal app (issue 21): 80x24 cuts, the sweep view's keys,
a stopped iteration's caption, the palette and the quit report of forks, the drift's axis, the
fork form of a tiny run, terminal replies read as keys, plurals. Each asserts what is on screen."""

from __future__ import annotations

import json
import threading

import pytest

from fakes import FakePainter
from tui.app import TruthLoopApp
from tui_helpers import HoldAt, make_loop, screen_text, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def live_app(loop, **kwargs):
    return TruthLoopApp(loop=loop, preview="halfcell", **kwargs)


# -- 1. 80x24 -------------------------------------------------------------------------------------
async def test_80x24_shows_the_run_directory_the_fed_prompt_and_a_wide_prompt_column(tmp_path):
    from tui_helpers import LONG

    def cut(caption):  # --clauses 3: the fed prompt is the caption's first three clauses
        return ", ".join(caption.split(", ")[:3])

    run_dir = tmp_path / "runs" / "20261201-101112-sample"
    script = {cut(LONG[n]): LONG[min(n + 1, 3)] for n in range(4)}
    loop = make_loop(run_dir, script=script, start=LONG[0])
    loop.config.loop.clauses = 3
    app = live_app(loop)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        await pilot.pause()
        status = app.query_one("#status")
        status.set(sec_per_iter=0.82, device="cpu (auto: no usable GPU)", memory="RSS 1.0 GiB")
        await pilot.pause()
        text = screen_text(app)
        second = text.splitlines()[1]
        # The run directory: shortened in the middle, its name whole at the end, on screen.
        assert "…" in second and "/20261201-101112-sample · " in second
        assert "0.82 s/it" in second and "RSS 1.0 GiB" in second
        # The caption panel: the fed line is in sight (it came after a caption of 70 words).
        assert "\n fed  a dog on a red mat in a sunlit room, an oil painting by" in text
        # The prompt column: at least 26 characters of the prompt on each row.
        assert "a dog on a red mat in a su" in text


async def test_the_c_toast_breaks_a_path_after_a_separator(tmp_path):
    run_dir = tmp_path / "runs" / "20261201-101112-a-rather-long-name"
    app = live_app(make_loop(run_dir))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        await pilot.press("c")
        await wait_for(pilot, lambda: bool(app._notifications))
        lines = list(app._notifications)[-1].message.splitlines()
        # The toast's body at 80 columns: 36 cells (40, less padding and border). Every line
        # but the last ends at a separator; joined, they are the whole path.
        assert len(lines) >= 2 and all(len(line) <= 36 for line in lines)
        assert all(line.endswith("/") for line in lines[:-1])
        assert "".join(lines) == str(run_dir / "images" / "0003.png")


def test_wrap_path_breaks_a_name_only_when_it_is_longer_than_a_line():
    from tui.screens.run import wrap_path

    assert wrap_path("/runs/x/images/0001.png", 12) == "/runs/x/\nimages/\n0001.png"
    assert wrap_path("/" + "n" * 20 + "/a.png", 10).splitlines() == [
        "/", "nnnnnnnnnn", "nnnnnnnnnn", "/a.png"]


@pytest.mark.parametrize("width", [80, 120])
async def test_sweep_table_shows_the_truth_column_with_an_ellipsis(tmp_path, width):
    from sweep_fakes import make_sweep
    from tui.sweep_view import SweepApp

    make_sweep(tmp_path / "sweep", ["h1", "c1"], [0], run=[0, 1])
    app = SweepApp(tmp_path / "sweep", preview="none", poll_interval=0.05)
    async with app.run_test(size=(width, 24)) as pilot:
        await pilot.pause(0.2)
        table = app.query_one("#sweep-table")
        assert table.max_scroll_x == 0  # nothing off to the side
        text = screen_text(app)
        header = text.splitlines()[1]
        assert "truth" in header and header.rstrip().endswith("truth")
        rows = text.splitlines()[2:4]
        assert "fixed: <script>" in rows[0] and rows[0].rstrip().endswith("…")
        assert "3-cycle: cyc3" in rows[1]


# -- 2. the sweep view's keys ------------------------------------------------------------------------
async def test_sweep_view_footer_and_help_say_what_q_escape_and_the_tables_keys_do(tmp_path):
    from sweep_fakes import make_sweep
    from tui.screens import HelpScreen, ViewScreen
    from tui.sweep_view import SweepApp

    make_sweep(tmp_path / "sweep", ["h1"], [0], run=[0])
    app = SweepApp(tmp_path / "sweep", preview="none", poll_interval=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "? Help" in screen_text(app).splitlines()[-1]
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = screen_text(app)
        assert "keys of the table" in text and "open the trajectory" in text
        assert "jump to the first running trajectory" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen)
                       and app.screen.state == "converged")
        footer = screen_text(app).splitlines()[-1]
        assert "q/esc Back to the sweep" in footer and "Quit" not in footer
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = screen_text(app)
        assert "q / escape  back to the sweep's table" in text
        assert "quit (asks first" not in text
        await pilot.press("escape")
        await pilot.press("q")
        await wait_for(pilot, lambda: not isinstance(app.screen, ViewScreen))
        assert app.is_running


# -- 3. after s -------------------------------------------------------------------------------------
async def test_after_a_stop_the_iteration_in_flight_stays_said_not_drawn(tmp_path):
    hold = HoldAt(paint=2, step=3)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop, stable=True)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            await wait_for(pilot, lambda: len(app.run_screen.records) == 2)
            await pilot.press("s")
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "stopped"
                           and not app.run_screen.loop_active)
            await pilot.pause()
            text = screen_text(app)
            assert "(drawing)" not in text and "step 3" not in text
            lines = text.splitlines()
            assert "■ stopped" in lines[0] and "iteration #0" in lines[0]
            assert "STOPPED" in text and "after 1 iteration (last complete: #0)" in text
            assert "#1 was not drawn" in text
            assert "#0 (last complete)" in text  # the image's title (its note is cut at 80)
            # Row #1 stays, with its prompt, marked; the caption panel shows its caption.
            row = next(line for line in lines if line.strip().startswith("1 "))
            assert "■stop" in row and "a cat sitting on a red mat" in row
            assert "#1 caption" in text and "■ stopped" in text and "before it was drawn" in text
    finally:
        hold.release.set()
        loop.control.stop()


# -- 4. palette and quitting with forks ---------------------------------------------------------------
async def test_compare_with_the_parent_is_offered_only_on_a_fork(tmp_path):
    from fork_helpers import make_fork, make_parent
    from test_tui import palette_titles

    parent = make_parent(tmp_path / "parent")
    fork = make_fork(parent, 1, tmp_path / "fork", seed=7)
    for run_dir, offered in ((parent, False), (fork, True)):
        app = TruthLoopApp(run_dir=run_dir, preview="none", stable=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.run_screen.state == "converged")
            titles = await palette_titles(pilot, "compare")
            assert ("Compare with the parent" in titles) is offered


def test_quitting_prints_each_fork_made_in_the_app(tmp_path, monkeypatch, capsys):
    from fork_helpers import fake_forker, make_parent
    from tui import app as app_module

    parent = make_parent(tmp_path / "parent")
    fork_loop = fake_forker()(parent, 1, {"seed": 7})

    def run(self):  # the user forked #1 with `f`, the fork ran, then quit
        self.extra_loops.append(fork_loop)
        thread = threading.Thread(target=fork_loop.run)
        thread.start()
        thread.join(10)

    monkeypatch.setattr(app_module.TruthLoopApp, "run", run)
    assert app_module.run_view(parent, preview="halfcell") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run directory: {parent}\nstate: converged")
    assert f"\n\nfork run directory: {fork_loop.run_dir}\nstate: converged" in out


# -- 5. drift -----------------------------------------------------------------------------------------
async def test_drift_says_its_axis_and_draws_no_cliff_for_a_tiny_change(tmp_path):
    from tui.widgets.drift import MIN_SPAN, Drift, axis

    assert axis([0.991, 0.989]) == pytest.approx((0.991 - MIN_SPAN, 0.991))
    assert axis([0.2, 0.9]) == (0.2, 0.9)
    app = TruthLoopApp(run_dir=make_parent_run(tmp_path), preview="none", stable=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        drift = app.query_one(Drift)
        drift.set_values([0.991, 0.990, 0.989, 0.989])
        await pilot.pause()
        region = drift.region
        lines = [line[region.x:region.right].rstrip()
                 for line in screen_text(app).splitlines()[region.y:region.bottom]]
        assert lines[0] == "drift ≈start 0.99→0.99 min 0.99"
        assert lines[1].endswith(" 0.99") and lines[-1].endswith(" 0.89")  # the axis, said
        for line in lines[1:]:  # all near the top: no cliff from 0.991 to 0.989
            assert set(line.split()[0]) <= set("▆▇█"), line


def make_parent_run(tmp_path):
    make_loop(tmp_path / "run").run()
    return tmp_path / "run"


# -- 6. the fork form of a tiny run -------------------------------------------------------------------
async def test_fork_form_of_a_tiny_run_shows_tiny_not_the_real_sd_model(tmp_path):
    from fork_helpers import fake_forker, make_parent
    from tui.screens.fork import ForkForm

    parent = make_parent(tmp_path / "parent")
    app = TruthLoopApp(run_dir=parent, preview="none", stable=True, forker=fake_forker())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, ForkForm))
        await pilot.pause()
        text = screen_text(app)
        assert "stable-diffusion" not in text
        assert "image model    tiny (random weights, as the parent's)" in text
        # The pair is on the form: a fork may swap the generator or the captioner.
        assert "generator      sd" in text and "captioner      clip-interrogator" in text
        assert "generator_model" not in app.screen.values()


# -- 7. terminal replies are not keys ------------------------------------------------------------------
LATE_REPLIES = ["\x1bP>|kitty(0.26.5)\x1b\\", "\x1b[6;13;6t", "\x1b[4;806;1300t",
                "\x1b_Gi=31;OK\x1b\\", "\x1b[?62;4;22c", "\x1b[?1u", "\x1b]11;rgb:0000/0000/0000\x1b\\"]


def parsed(chunks: list[str]) -> list:
    from tui.terminal import ReplyFilter

    parser = ReplyFilter()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + list(parser.feed(""))


def test_textuals_own_parser_turns_a_late_reply_into_keys():
    """Why the filter exists: Textual gives an unknown sequence back as its characters' keys."""
    from textual._xterm_parser import XTermParser

    parser = XTermParser()
    events = [*parser.feed("\x1b[?62;4;22c"), *parser.feed("")]
    keys = [event.key for event in events if hasattr(event, "key")]
    assert "question_mark" in keys and "c" in keys


@pytest.mark.parametrize("reply", LATE_REPLIES)
def test_a_late_reply_to_the_apps_queries_makes_no_key(reply):
    assert parsed([reply]) == []
    # Split anywhere across two reads, before a key the user pressed.
    for cut in range(1, len(reply)):
        keys = [getattr(event, "key", None) for event in parsed([reply[:cut], reply[cut:], "q"])]
        assert keys == ["q"], (reply, cut)


def test_keys_mouse_and_textuals_own_replies_still_come_through():
    from textual import events

    got = parsed(["?", "\x1b[A", "\x1b[<0;5;5M", "\x1b[48;24;80;480;800t", "\x1b", "x"])
    assert [type(event) for event in got] == [events.Key, events.Key, events.MouseDown,
                                              events.Resize, events.Key]
    assert [getattr(event, "key", None) for event in got] == ["question_mark", "up", None, None,
                                                              "alt+x"]


def test_the_escape_key_still_comes_through_between_reads():
    import time

    from textual import constants
    from tui.terminal import HOLD_ESC, ReplyFilter

    parser = ReplyFilter()
    assert list(parser.feed("\x1b")) == []  # held: it may be the start of a reply
    time.sleep(HOLD_ESC + 0.01)
    events = list(parser.tick())
    time.sleep(constants.ESCAPE_DELAY + 0.01)
    events += list(parser.tick())
    assert [event.key for event in events] == ["escape"]


async def test_a_late_reply_opens_no_help_in_view(tmp_path):
    from tui.screens import HelpScreen
    from tui.terminal import ReplyFilterDriver

    app = TruthLoopApp(run_dir=make_parent_run(tmp_path), preview="none", stable=True)
    assert app.get_driver_class() is ReplyFilterDriver
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for reply in LATE_REPLIES:
            for event in parsed([reply]):
                app.post_message(event)
        await pilot.pause(0.2)
        assert not isinstance(app.screen, HelpScreen)
        for event in parsed(["?"]):  # the key itself still opens it
            app.post_message(event)
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))


# -- 8. plurals ------------------------------------------------------------------------------------------
def test_exit_report_says_1_iteration(tmp_path):
    from tui.app import exit_report

    loop = make_loop(tmp_path / "run", max_iters=1)
    loop.run()
    report = exit_report(tmp_path / "run")
    assert "within 1 iteration (--max-iters)" in report and "iterations" not in report
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "max_iters"
