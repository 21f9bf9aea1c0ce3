"""Pilot tests of the TUI with the instant fake backends (and one run on the tiny real models)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from fakes import FakePainter
from truthloop import events as ev
from truthloop.record import Record
from truthloop.store import read_run
from tui.app import TruthLoopApp
from truthloop.diff import caption_diff as core_caption_diff
from tui.widgets.caption import ADDED, REMOVED, diff_text
from tui.screens import ConfirmQuit, HelpScreen
from tui.widgets.caption import CaptionPanel
from tui_helpers import FINAL, HoldAt, make_loop, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


MARKUP = "[bold]x[/] [link=http://evil]click[/link], \x1b[31mred\x1b[0m, [/]"


def done(app):
    return [r for r in app.run_screen.records if not r.pending]


def live_app(loop, **kwargs):
    return TruthLoopApp(loop=loop, preview="halfcell", stable=True, **kwargs)


# -- import hygiene ----------------------------------------------------------------------------------
def test_tui_does_not_import_torch_and_cli_does_not_import_textual():
    code = ("import sys, tui, tui.app; assert 'torch' not in sys.modules, 'torch'; "
            "import truthloop.cli; ")
    subprocess.run([sys.executable, "-c", code], check=True)
    code = ("import sys, truthloop.cli, truthloop.loop, truthloop.store; "
            "assert 'textual' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- diff --------------------------------------------------------------------------------------------
def caption_diff(old, new):
    """The core diff as the caption panel draws it."""
    segments, stats = core_caption_diff(old, new)
    return diff_text(segments), stats


def test_diff_of_a_known_caption_pair():
    old = "a cat sitting on a mat, oil painting, trending on artstation"
    new = "a dog sitting on a red mat, oil painting, by greg rutkowski, 4k"
    text, stats = caption_diff(old, new)
    assert text.plain == ("a [-cat-] {+dog+} sitting on a {+red+} mat, oil painting, "
                          "[-trending on artstation-] {+by greg rutkowski+}, {+4k+}")
    assert (stats.changed, stats.added, stats.removed) == (2, 1, 0)
    styled = {text.plain[span.start:span.end]: str(span.style) for span in text.spans}
    assert styled["cat"] == REMOVED and "strike" in REMOVED
    assert styled["dog"] == ADDED and "underline" in ADDED
    removed_only, stats = caption_diff("a, b, c", "a, c")
    assert removed_only.plain == "a, [-b-], c" and stats.removed == 1
    same, stats = caption_diff("a, b", "a,b")
    assert same.plain == "a, b" and stats.same


def test_markup_and_escapes_in_captions_render_literally():
    text, _ = caption_diff("plain", MARKUP)
    assert "[bold]x[/]" in text.plain and "[link=http://evil]" in text.plain
    assert "\x1b" not in text.plain and "\\x1b[31m" in text.plain
    record = Record(index=1, caption=MARKUP, compared=MARKUP, fed_prompt=MARKUP)
    base = Record(index=0, caption="[/]", compared="[/]", fed_prompt="[/]")
    panel = CaptionPanel.build(record, base, "previous #0")
    assert "[link=http://evil]click[/link]" in panel.plain and "\x1b" not in panel.plain


async def test_markup_captions_in_a_live_run(tmp_path):
    script = {MARKUP: MARKUP}
    loop = make_loop(tmp_path / "run", script=script, start=MARKUP, max_iters=4)
    app = live_app(loop)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state in FINAL)
        assert app.run_screen.state == "converged"
        assert app.run_screen.records[0].caption == MARKUP
        table = app.query_one("#log")
        cell = table.get_cell("0", "prompt")
        assert cell.plain.startswith("[bold]x[/] [li")
        await pilot.resize_terminal(60, 16)
        await pilot.pause()
        await pilot.resize_terminal(200, 60)
        await pilot.pause()


# -- live controls -----------------------------------------------------------------------------------
async def test_pause_then_step_advances_exactly_one_iteration(tmp_path):
    hold = HoldAt(paint=1, step=2)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, hold.reached.is_set)
        await pilot.press("space")
        assert app.run_screen.state == "pausing"
        hold.release.set()
        await wait_for(pilot, lambda: app.run_screen.state == "paused")
        assert len(done(app)) == 0 and loop.control.paused
        for expected in (1, 2):
            await pilot.press("n")
            await wait_for(pilot, lambda: app.run_screen.state == "paused")
            await wait_for(pilot, lambda: len(done(app)) == expected)
            await pilot.pause(0.1)  # nothing more may happen while paused
            assert len(done(app)) == expected
            assert len(read_run(tmp_path / "run").records) == expected
        await pilot.press("space")
        assert app.run_screen.state in ("running", "converged")
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        assert "CONVERGED" in str(app.query_one("#banner").render())


async def test_stop_ends_the_run_with_a_consistent_run_dir(tmp_path):
    hold = HoldAt(paint=2, step=3)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, hold.reached.is_set)
        await pilot.press("s")
        await wait_for(pilot, lambda: app.run_screen.state == "stopped" and not app.run_screen.loop_active)
        assert "STOPPED" in str(app.query_one("#banner").render())
        # One iteration as on disk; the one in flight keeps its row, marked not drawn.
        assert len(done(app)) == 1 and app.query_one("#log").row_count == 2
        assert app.query_one("#log").get_cell("1", "repeat").plain == "■stop"
    view = read_run(tmp_path / "run")
    assert view.status == "stopped" and len(view.records) == 1 and not view.problems
    assert app.return_code in (None, 0)


async def test_loop_ending_after_the_app_closed_is_not_a_crash(tmp_path):
    """The loop's worker may report its end after the app's screens are gone (quit or SIGHUP
    while the summary is still being written): the flags run_live reads are set, nothing is
    drawn. (A CI run caught Textual's ScreenStackError here.)"""
    from types import SimpleNamespace

    from textual.worker import Worker, WorkerState

    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=2))
    app = live_app(loop)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: not app.run_screen.loop_active)
    assert not app.screen_stack
    ended = SimpleNamespace(group="loop", error=RuntimeError("late failure"))
    app.run_screen.on_worker_state_changed(Worker.StateChanged(ended, WorkerState.ERROR))
    assert app.failed and app.run_screen.state == "error" and not app.run_screen.loop_active


async def test_quit_asks_while_running_then_stops_cleanly(tmp_path):
    hold = HoldAt(paint=2, step=2)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, hold.reached.is_set)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmQuit) and app.run_screen.loop_active
        await pilot.press("q")
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.is_running)
    assert app.return_code == 0
    assert read_run(tmp_path / "run").status == "stopped"


async def test_quit_without_asking_once_finished(tmp_path):
    app = live_app(make_loop(tmp_path / "run"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged" and not app.run_screen.loop_active)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)
    assert app.return_code == 0


async def test_history_browsing_diff_base_help_and_path(tmp_path):
    app = live_app(make_loop(tmp_path / "run"))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        banner = str(app.query_one("#banner").render())
        assert "fixed point at iteration 3" in banner
        assert "truth: a dog on a red mat, oil painting" in banner
        assert app.run_screen.current_index == 3  # the truth is shown
        caption = app.query_one(CaptionPanel)
        await pilot.press("left")
        assert app.run_screen.current_index == 2
        text = str(caption.render())
        # The caption once, its changes against the base marked inline.
        assert text == ("#2 caption  vs previous #1: 2 changed clauses  · fed whole\n"
                        "a [-cat-] {+dog+} sitting on a red mat, oil painting, [-soft light-]"
                        " {+by greg rutkowski+}")
        assert app.query_one("#img-current").path == tmp_path / "run" / "images" / "0002.png"
        await pilot.press("b")
        assert "vs start #0" in str(caption.render())
        await pilot.press("left", "B", "right", "right")
        assert app.run_screen.current_index == 3 and "vs #1 (pinned)" in str(caption.render())
        await pilot.press("right")
        assert app.run_screen.current_index == 4 and app.run_screen.history.selected is None  # following the newest again
        await pilot.press("up", "up")
        assert app.run_screen.current_index == 2  # the table's own keys browse too
        await pilot.press("c")
        await pilot.pause()
        assert any("0002.png" in n.message for n in app._notifications)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_engine_error_is_shown_and_run_dir_kept(tmp_path):
    def broken(config, emit):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    app = live_app(make_loop(tmp_path / "run", backend_factory=broken))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "error" and not app.run_screen.loop_active)
        banner = str(app.query_one("#banner").render())
        assert "ERROR" in banner and "ran out of memory" in banner
        assert app.failed
        await pilot.press("q")
    assert app.return_code == 1
    view = read_run(tmp_path / "run")
    assert view.status == "error" and (tmp_path / "run" / "error.log").exists()


async def test_locked_run_dir_is_an_error_not_a_crash(tmp_path):
    first = make_loop(tmp_path / "run")
    first.run()
    from truthloop.store import RunWriter

    writer = RunWriter.reopen(tmp_path / "run")  # someone else holds the lock
    try:
        from truthloop.loop import TruthLoop

        loop = TruthLoop.for_resume(tmp_path / "run", first.backend_factory, max_iters=30)
        app = live_app(loop)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.run_screen.state == "error" and not app.run_screen.loop_active)
            assert "being written by process" in str(app.query_one("#banner").render())
    finally:
        writer.close()


# -- view --------------------------------------------------------------------------------------------
async def test_view_of_a_finished_run(tmp_path):
    make_loop(tmp_path / "run").run()
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.run_screen.state == "converged" and len(app.run_screen.records) == 5
        assert "fixed point" in str(app.query_one("#banner").render())
        await pilot.press("space", "s", "n")  # live-only keys do nothing here
        assert app.run_screen.state == "converged"
        await pilot.press("left")
        assert app.run_screen.current_index == 2
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)


async def test_export_key_writes_gif_and_sheet_and_says_where(tmp_path):
    make_loop(tmp_path / "run").run()
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("e")
        await app.workers.wait_for_complete()
        await pilot.pause()
        exported = sorted(p.name for p in (tmp_path / "run" / "exports").iterdir())
        assert exported == ["sheet.png", "trajectory.gif"]
        messages = [n.message for n in app._notifications]
        assert any("trajectory.gif" in m and "sheet.png" in m for m in messages)
    for path, data in before.items():
        assert path.read_bytes() == data  # the run's own files are untouched


async def test_view_names_what_it_could_not_read(tmp_path):
    make_loop(tmp_path / "run").run()
    (tmp_path / "run" / "images" / "0001.png").unlink()
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert len(app.run_screen.records) == 5  # everything readable is still shown
        messages = [n.message for n in app._notifications]
        assert any("0001.png" in m and "missing" in m for m in messages)


async def test_view_follows_a_growing_run(tmp_path):
    hold = HoldAt(paint=3, step=1)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        assert hold.reached.wait(10)
        app = TruthLoopApp(run_dir=tmp_path / "run", preview="halfcell", stable=True,
                           poll_interval=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            assert app.run_screen.state == "running" and len(app.run_screen.records) == 2
            assert app.query_one("StatusBar").info.following
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "converged")
            assert len(app.run_screen.records) == 5
            assert not app.query_one("StatusBar").info.following
    finally:
        hold.release.set()
        loop.control.stop()
        thread.join(10)


async def test_view_of_an_interrupted_run(tmp_path):
    make_loop(tmp_path / "run").run()
    summary = tmp_path / "run" / "summary.json"
    data = json.loads(summary.read_text())
    data["status"] = "running"  # a writer that was killed
    summary.write_text(json.dumps(data))
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="halfcell", stable=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.run_screen.state == "interrupted"
        assert "INTERRUPTED" in str(app.query_one("#banner").render())


# -- the tiny real models ----------------------------------------------------------------------------
@pytest.mark.timeout(600)
async def test_live_run_on_the_tiny_models(tmp_path):
    from truthloop.ml.backends import load_backends
    from truthloop.config import RunConfig
    from truthloop.loop import LoopControl, TruthLoop
    from fakes import start_image

    config = RunConfig()
    config.models.models = "tiny"
    config.caption.mode = "fast"
    config.generate.steps = 3
    config.loop.clauses = 1
    config.loop.max_iters = 2
    config.input_image = "start.png"
    loop = TruthLoop(config, tmp_path / "run", load_backends, control=LoopControl(),
                     input_image=start_image())
    app = live_app(loop)
    seen_loading = []
    async with app.run_test(size=(100, 30)) as pilot:
        while app.run_screen.state not in FINAL:
            if app.run_screen.state == "loading" and app.query_one("StatusBar").info.loading:
                seen_loading.append(app.query_one("StatusBar").info.loading)
            await pilot.pause(0.05)
        assert app.run_screen.state in ("converged", "max_iters"), app.run_screen.error_message
        assert len(done(app)) >= 1 and seen_loading
        assert app.query_one("StatusBar").info.device


# -- engine messages (asserted with message_hook) ----------------------------------------------------
def test_every_engine_event_has_its_message():
    import dataclasses

    from truthloop import events as ev
    from tui import messages as m

    kinds = [c for c in vars(ev).values()
             if isinstance(c, type) and issubclass(c, ev.Event) and c is not ev.Event]
    samples = {ev.DenoiseStep: ev.DenoiseStep(2, 3, 4), ev.Loading: ev.Loading("clip", 1, 9)}
    for kind in kinds:
        fields = {f.name: None for f in dataclasses.fields(kind)}
        event = samples.get(kind) or kind(**fields)
        message = m.from_event(event)
        assert type(message).__name__ == kind.__name__
        assert {f: getattr(message, f) for f in fields} == {f: getattr(event, f) for f in fields}
    # Progress collapses only into a newer message of its own kind (and iteration).
    step = m.DenoiseStep(2, 3, 4)
    assert step.can_replace(m.DenoiseStep(2, 4, 4))
    assert not step.can_replace(m.DenoiseStep(3, 1, 4))
    assert not step.can_replace(m.IterationStarted(3))
    assert m.Loading("a").can_replace(m.Loading("b")) and not m.Loading("a").can_replace(m.Ready("cpu", 1))


async def test_a_burst_of_denoise_steps_collapses_to_the_newest(tmp_path):
    hold = HoldAt(paint=1, step=2)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    handled = []
    from tui import messages as m

    def hook(message):
        if isinstance(message, m.DenoiseStep) and message.total == 50:
            handled.append(message.step)

    try:
        async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            await pilot.pause()
            for step in range(1, 51):  # faster than the UI handles them
                app.run_screen.post_message(m.DenoiseStep(0, step, 50))
            await wait_for(pilot, lambda: handled)
            await pilot.pause()
            assert handled == [50]  # one update drawn, the newest
            status = str(app.query_one("#status").render())
            assert "iteration #0" in status and "denoise ████████████ 50/50" in status
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "converged")
    finally:
        hold.release.set()
        loop.control.stop()


async def test_the_status_line_keeps_saying_the_device_fell_back_to_the_cpu(tmp_path):
    from tui import messages as m

    hold = HoldAt(paint=1, step=1)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=2, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            app.run_screen.post_message(m.from_event(ev.Notice(
                f"{ev.DEVICE_FALLBACK} (this torch is a CPU-only build)")))
            app.run_screen.post_message(m.from_event(ev.Ready("cpu", 1.0)))
            await pilot.pause()
            await pilot.pause()
            status = str(app.query_one("#status").render())
            # Why, where the line has room (no run directory here: stable blanks it).
            assert "device cpu (auto: this torch is a CPU-only build)" in status
            hold.release.set()
    finally:
        hold.release.set()
        loop.control.stop()


async def test_iteration_messages_fill_the_log_and_finished_shows_the_banner(tmp_path):
    from truthloop.text import clip
    from tui import messages as m

    seen = []
    app = live_app(make_loop(tmp_path / "run", max_iters=2))
    async with app.run_test(size=(120, 40),
                            message_hook=lambda message: seen.append(message)) as pilot:
        await wait_for(pilot, lambda: not app.run_screen.loop_active)
        table = app.query_one("#log")
        done_messages = [s for s in seen if isinstance(s, m.IterationDone)]
        assert [s.record.index for s in done_messages] == [0, 1] == [
            int(key.value) for key in table.rows]
        prompt = done_messages[1].record.fed_prompt
        assert prompt == "a cat sitting on a red mat, oil painting, soft light"
        assert table.get_cell("1", "prompt").plain == clip(prompt, table.prompt_width)
        # Each caption arrived first as a pending row ("…"), then its record replaced it.
        captions = [s for s in seen if isinstance(s, m.CaptionReady)]
        assert [s.index for s in captions] == [0, 1]
        finished = [s for s in seen if isinstance(s, m.Finished)]
        assert len(finished) == 1 and finished[0].summary["status"] == "max_iters"
        assert str(app.query_one("#banner").render()) == (
            " … NO REPEAT   within 2 iterations (--max-iters); continue with: truthloop resume"
            " --max-iters N run")
        status = str(app.query_one("#status").render())
        assert "… max iterations" in status and "2/2 done" in status


async def test_a_view_screen_pushed_over_another_screen_goes_back_with_escape(tmp_path):
    """The hook for a sweep table: any app can push a trajectory's ViewScreen and pop it."""
    from textual.app import App
    from textual.screen import Screen
    from textual.widgets import Static

    from tui.screens import ViewScreen

    make_loop(tmp_path / "run").run()

    class Table(Screen):
        def compose(self):
            yield Static("the sweep table")

    class Host(App):
        def get_default_screen(self):
            return Table()

    app = Host()
    async with app.run_test(size=(100, 30)) as pilot:
        view = ViewScreen(tmp_path / "run", preview="none", stable=True)
        await app.push_screen(view)
        await pilot.pause()
        assert view.state == "converged" and len(view.records) == 5
        assert "fixed point at iteration 3" in str(view.query_one("#banner").render())
        assert view.query_one("#side").outer_size.width == 36  # its stylesheet came with it
        await pilot.press("left")
        assert view.current_index == 2
        await pilot.press("escape")
        assert isinstance(app.screen, Table)


def binding_actions(*classes):
    """The action names of every binding of these classes ("browse(-1)" -> "browse")."""
    return {binding.action.split("(")[0] for cls in classes for binding in cls.BINDINGS}


def rendered(widget) -> str:
    return "\n".join(strip.text.rstrip() for strip in widget.render_lines(widget.region.reset_offset))


@pytest.mark.parametrize("mode", ["live", "view"])
async def test_help_lists_every_key_with_what_it_does(tmp_path, mode):
    from tui.screens import LiveScreen, ViewScreen
    from tui.screens.modals import HELP_ROWS

    if mode == "view":
        make_loop(tmp_path / "run").run()
        app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
        screen_class = ViewScreen
    else:
        hold = HoldAt(paint=1, step=2)
        loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
        hold.control = loop.control
        app = live_app(loop)
        screen_class = LiveScreen
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            box = app.screen.query_one("#help-box")
            assert box.size.width > 40  # was an empty box: auto width around 1fr-wide texts
            assert box.outer_size.height <= 24
            shown = rendered(app.screen.query_one("#help-keys"))
            # Every key of this screen and of the app is explained, ctrl+p too.
            wanted = binding_actions(screen_class, TruthLoopApp) | {"command_palette"}
            rows = [row for row in HELP_ROWS if mode in row[3]]
            assert wanted <= {action for row in rows for action in row[2]}
            for keys, what, _, _ in rows:  # each on one line at 80 columns: key, then what
                assert any(line.strip().startswith(keys) and line.rstrip().endswith(what)
                           for line in shown.splitlines()), (keys, what)
            assert "ctrl+p" in shown and "go to iteration N" in shown
            if mode == "view":  # a run directory: no loop to pause, step or stop
                assert "pause / resume" not in shown and "stop after" not in shown
                assert "escape" in shown
            else:
                assert "space" in shown and "pause / resume the loop" in shown
            assert "[-old-]" in shown and "≈prv ≈st" in shown  # the legend
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
    finally:
        if mode == "live":
            hold.release.set()
            loop.control.stop()


async def palette_run(pilot, query: str) -> None:
    """ctrl+p, type `query`, wait for its hits, enter."""
    from textual.command import CommandList, CommandPalette

    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, CommandPalette))
    await pilot.press(*query)
    palette = pilot.app.screen
    await wait_for(pilot, lambda: palette.query_one(CommandList).option_count > 0
                   and query.split()[0].lower() in str(
                       palette.query_one(CommandList).get_option_at_index(0).prompt).lower())
    await pilot.press("enter")
    await wait_for(pilot, lambda: not isinstance(pilot.app.screen, CommandPalette))


async def palette_titles(pilot, query: str) -> list[str]:
    from textual.command import CommandList, CommandPalette

    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, CommandPalette))
    await pilot.press(*query)
    await pilot.pause(0.3)  # the palette searches in the background; no hit is also an answer
    await pilot.pause()
    options = pilot.app.screen.query_one(CommandList)
    titles = [str(options.get_option_at_index(n).prompt).split("\n")[0]
              for n in range(options.option_count)]
    await pilot.press("escape")
    await wait_for(pilot, lambda: not isinstance(pilot.app.screen, CommandPalette))
    return titles


async def test_command_palette_finds_and_runs_the_apps_commands(tmp_path):
    hold = HoldAt(paint=2, step=2)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            await wait_for(pilot, lambda: len(app.run_screen.records) == 2)
            assert "Pause" in await palette_titles(pilot, "pause")
            assert "Step one iteration" not in await palette_titles(pilot, "step one")  # not now
            await palette_run(pilot, "pause")
            assert app.run_screen.state == "pausing"
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "paused")
            await palette_run(pilot, "step one")
            await wait_for(pilot, lambda: app.run_screen.state == "paused"
                           and len(done(app)) == 2)
            await palette_run(pilot, "go 1")  # go to iteration N
            assert app.run_screen.current_index == 1
            assert str(app.query_one(CaptionPanel).render()).startswith("#1 caption")
            await palette_run(pilot, "diff base: prev")
            assert app.run_screen.history.base == "start"
            await palette_run(pilot, "copy image path")
            assert any("0001.png" in n.message for n in app._notifications)
            await palette_run(pilot, "resume")
            await wait_for(pilot, lambda: app.run_screen.state == "converged")
            assert "Stop the run" not in await palette_titles(pilot, "stop the")
            await palette_run(pilot, "export gif")
            await app.workers.wait_for_complete()
            assert (tmp_path / "run" / "exports" / "trajectory.gif").exists()
    finally:
        hold.release.set()
        loop.control.stop()


async def test_command_palette_in_view_and_stop(tmp_path):
    hold = HoldAt(paint=1, step=2)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            await palette_run(pilot, "stop the run")
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "stopped")
    finally:
        hold.release.set()
        loop.control.stop()
    view = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with view.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        titles = await palette_titles(pilot, "pause")
        assert "Pause" not in titles and "Resume" not in titles  # nothing runs here


async def test_prompt_text_in_the_palette_is_never_markup(tmp_path):
    loop = make_loop(tmp_path / "run", script={MARKUP: MARKUP}, start=MARKUP, max_iters=4)
    loop.run()
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        titles = await palette_titles(pilot, "go 0")
        assert titles and titles[0].startswith("go to iteration #0: [bold]x[/] [link=http")


def test_palette_reads_iteration_numbers():
    from tui.commands import wanted_index

    assert [wanted_index(q) for q in ("12", "#12", "go 12", "go to 12", "go to iteration #3",
                                      "Go To Iteration 7")] == [12, 12, 12, 12, 3, 7]
    assert wanted_index("go") is None and wanted_index("dog 3") is None


async def test_help_lists_the_keys(tmp_path):
    make_loop(tmp_path / "run").run()
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        box = app.screen.query_one("#help-box")
        assert box.size.width > 40  # was an empty box: auto width around 1fr-wide texts
        keys = app.screen.query_one("#help-keys")
        shown = " ".join(strip.text for strip in keys.render_lines(keys.region.reset_offset))
        assert "b" in shown and "diff base: previous iteration ↔ start" in shown


# -- 80x24 with captions of real length (issue 15) ---------------------------------------------------
async def test_80x24_with_real_length_captions_is_usable(tmp_path):
    from textual.widgets._footer import FooterKey

    from tui_helpers import LONG, make_long_loop

    app = live_app(make_long_loop(tmp_path / "run"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        await pilot.pause()
        assert 60 <= len(LONG[-1].split()) <= 75
        table = app.query_one("#log")
        # Every column is in sight, nothing scrolls sideways.
        assert table.max_scroll_x == 0 and not table.show_horizontal_scrollbar
        header = rendered(table).splitlines()[0]
        # At 80 columns the caption time and ≈prv give their width to the prompt (issue 21).
        for label in ("#", "draw", "prompt", "≈st", "rep"):
            assert label in header
        assert "capt" not in header and "≈prv" not in header
        assert table.prompt_width >= 26
        assert table.get_cell("4", "repeat").plain == "↺#3"
        # The banner: its headline and the truth on one line; the image keeps rows.
        banner = app.query_one("#banner")
        assert banner.outer_size.height <= 3
        assert rendered(banner).splitlines()[1].strip().startswith("truth: a dog on a red mat")
        image = app.query_one("#img-current .image")
        assert image.size.height >= 6
        # The caption panel shows the caption once, its changes marked, in sight.
        caption = str(app.query_one(CaptionPanel).render())
        assert caption.count("on a red mat in a sunlit room") == 1
        # The footer: every key in the width, "q Quit" whole.
        footer_keys = [key for key in app.screen.query(FooterKey)]
        assert footer_keys and all(key.region.right <= 80 for key in footer_keys)
        quit_key = [key for key in footer_keys if key.action.endswith("quit")]
        assert quit_key and "q Quit" in rendered(quit_key[0])


async def test_80x24_many_rows_no_horizontal_scrollbar(tmp_path):
    script = {f"p{n}, " + "word " * 60: f"p{n + 1}, " + "word " * 60 for n in range(30)}
    app = live_app(make_loop(tmp_path / "run", script=script, start="p0, " + "word " * 60,
                             max_iters=24))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state in FINAL)
        await pilot.pause()
        table = app.query_one("#log")
        assert table.row_count > table.size.height  # a vertical scrollbar now
        assert table.max_scroll_x == 0
        header = rendered(table).splitlines()[0]
        assert "≈st" in header and "rep" in header


# -- labels -----------------------------------------------------------------------------------------
async def test_view_shows_the_max_iters_and_device_of_the_last_segment(tmp_path):
    make_loop(tmp_path / "run", max_iters=2).run()
    summary_path = tmp_path / "run" / "summary.json"
    summary = json.loads(summary_path.read_text())
    # What a `resume --max-iters 12` on a GPU writes (run.json still says 2 and "auto").
    summary["segments"] = [{"options": {"max_iters": 2}, "device": "cpu"},
                           {"options": {"max_iters": 12}, "device": "cuda:0"}]
    summary["device"] = "cuda:0"
    summary_path.write_text(json.dumps(summary))
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        status = str(app.query_one("#status").render())
        assert "2/12 done" in status and "2/2 done" not in status
        assert "device cuda:0" in status and "device auto" not in status


async def test_view_without_segments_reads_run_json_and_the_summarys_device(tmp_path):
    make_loop(tmp_path / "run", max_iters=2).run()
    summary_path = tmp_path / "run" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.pop("segments", None)
    summary["device"] = "mps"
    summary_path.write_text(json.dumps(summary))
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        status = str(app.query_one("#status").render())
        assert "2/2 done" in status and "device mps" in status


class StageClock:
    """The loop's clock, moved by the test alone: stage timings then follow from what the test
    did, whatever the machine's load (the real clock measured a busy machine's latencies)."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(self._time, name)


async def test_the_draw_column_leaves_out_time_spent_paused(tmp_path, monkeypatch):
    import truthloop.loop

    clock = StageClock()
    monkeypatch.setattr(truthloop.loop, "time", clock)
    hold = HoldAt(paint=2, step=2)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = TruthLoopApp(loop=loop, preview="none", stable=False)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            clock.now += 1.5  # iteration 1 has drawn for 1.5 s
            await pilot.press("space")  # pauses inside iteration 1's drawing
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "paused")
            clock.now += 600  # someone went for coffee
            await pilot.press("space")
            await wait_for(pilot, lambda: app.run_screen.state == "converged")
            shown = app.run_screen.records[1].timings
            draw = app.query_one("#log").get_cell("1", "draw").plain
    finally:
        hold.release.set()
        loop.control.stop()
    logged = read_run(tmp_path / "run").records[1].timings  # what `view` shows later, too
    assert shown == logged
    assert logged["paused"] == 600 and logged["generate"] == 1.5
    assert draw == "1.5s"


async def test_after_a_stop_before_any_record_the_caption_panel_says_so(tmp_path):
    hold = HoldAt(paint=1, step=2)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control
    app = live_app(loop)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, hold.reached.is_set)
            await pilot.press("s")
            hold.release.set()
            await wait_for(pilot, lambda: app.run_screen.state == "stopped")
            text = str(app.query_one(CaptionPanel).render())
            assert "waiting" not in text
            # The caption of the iteration in flight stays in sight, said not drawn.
            assert text.startswith("#0 caption") and "■ stopped before it was drawn" in text
            assert len(done(app)) == 0
    finally:
        hold.release.set()
        loop.control.stop()


# -- what quitting prints ---------------------------------------------------------------------------
def test_exit_report_says_where_how_it_stands_the_truth_and_how_to_go_on(tmp_path):
    from tui.app import exit_report

    make_loop(tmp_path / "done").run()
    assert exit_report(tmp_path / "done").splitlines() == [
        f"run directory: {tmp_path / 'done'}",
        "state: converged, fixed point starting at iteration 3",
        "truth: a dog on a red mat, oil painting  [images/0003.png]",
        f"look again: truthloop view {tmp_path / 'done'}",
    ]
    make_loop(tmp_path / "short", max_iters=2).run()
    assert exit_report(tmp_path / "short").splitlines()[1:] == [
        "state: no repeat within 2 iterations (--max-iters)",
        f"continue with: truthloop resume --max-iters N {tmp_path / 'short'}",
    ]
    report = exit_report(tmp_path / "nothing")
    assert report.startswith(f"run directory: {tmp_path / 'nothing'}\nnothing to continue: ")
    loop = make_loop(tmp_path / "marked", script={MARKUP: MARKUP}, start=MARKUP, max_iters=4)
    loop.run()
    assert "\x1b" not in exit_report(tmp_path / "marked")


def test_quitting_the_app_prints_the_report(tmp_path, monkeypatch, capsys):
    from tui import app as app_module

    loop = make_loop(tmp_path / "run")
    hold = HoldAt(paint=2, step=1)
    loop = make_loop(tmp_path / "run", painter=FakePainter(steps=4, step_hook=hold))
    hold.control = loop.control

    def run(self):  # the user quits while iteration 1 is drawn: y, stop and quit
        thread = threading.Thread(target=loop.run)
        thread.start()
        hold.reached.wait(10)
        loop.control.stop()
        thread.join(10)

    monkeypatch.setattr(app_module.TruthLoopApp, "run", run)
    monkeypatch.setattr(app_module.TruthLoopApp, "loop_started", property(lambda self: True))
    app_module.run_live(loop, preview="halfcell")
    out = capsys.readouterr().out.splitlines()
    assert out == [f"run directory: {tmp_path / 'run'}",
                   "state: stopped after 1 iteration",
                   f"continue with: truthloop resume {tmp_path / 'run'}"]
