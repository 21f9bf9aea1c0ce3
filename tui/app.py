"""The truthloop app: a live run (`run`, `demo`, `resume`) or a run directory read-only (`view`).

The app is thin: its first screen, and the keys every screen shares (`?`, `q`); the run screens
bring their own stylesheet (app.tcss, scoped to RunScreen), so another app can push them too.
Data goes one way. Live (`LiveScreen`): the engine runs `TruthLoop.run()` in a thread worker and
its events come back as messages (tui/messages.py). View (`ViewScreen`): the run directory is
polled and read with `truthloop.store`. Both show their records through the same widgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collections.abc import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tui.commands import IterationCommands
from tui.screens import HelpScreen, LiveScreen, RunScreen, ViewScreen
from tui.screens.run import STYLESHEET as RUN_STYLESHEET
from tui.terminal import RepliesAreNotKeys
from tui.widgets.image import resolve_preview


class TruthLoopApp(RepliesAreNotKeys, App[int]):
    # The run screens' stylesheet: Textual loads a screen's CSS_PATH when the screen is pushed, not
    # for the first screen, so the app names it too (read once: same path).
    CSS_PATH = RUN_STYLESHEET
    TITLE = "truthloop"
    # ctrl+p: the run screen's own commands (as system commands) and "go to iteration N".
    COMMANDS = App.COMMANDS | {IterationCommands}

    # After the screen's own keys in the footer.
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, loop: Any = None, run_dir: Path | None = None, preview: str = "halfcell",
                 stable: bool = False, poll_interval: float = 0.5,
                 compare: tuple[Path, Path] | None = None, forker: Any = None) -> None:
        """`loop` (a TruthLoop) for a live run, or `run_dir` to view one. `preview` must already
        be resolved (`resolve_preview`); `stable` blanks timings, memory and absolute paths, for
        deterministic screenshots."""
        super().__init__()
        if compare is None and (loop is None) == (run_dir is None):
            raise ValueError("give a loop, a run_dir or two runs to compare")
        # `compare`: the first screen compares two runs. `forker` (parent, K, options) -> a
        # fork's TruthLoop, for `f`; the loops of forks started here go in `extra_loops`.
        self.compare = compare
        self.forker = forker
        self.extra_loops: list[Any] = []
        self.loop = loop
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.preview = preview
        self.stable = stable
        self.poll_interval = poll_interval
        self.run_screen: RunScreen | None = None

    def get_default_screen(self) -> Screen:
        if self.compare is not None:
            from tui.screens.compare import CompareScreen

            return CompareScreen(*self.compare, preview=self.preview, stable=self.stable)
        if self.loop is not None:
            self.run_screen = LiveScreen(self.loop, preview=self.preview, stable=self.stable)
        else:
            self.run_screen = ViewScreen(self.run_dir, preview=self.preview, stable=self.stable,
                                         poll_interval=self.poll_interval)
        return self.run_screen

    @property
    def loop_started(self) -> bool:
        return isinstance(self.run_screen, LiveScreen) and self.run_screen.loop_started

    @property
    def failed(self) -> bool:
        return isinstance(self.run_screen, LiveScreen) and self.run_screen.failed

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The run screen's commands first (those it allows now), then Textual's own (theme,
        keys, screenshot, quit)."""
        if isinstance(screen, RunScreen):
            for title, help_text, action in screen.palette_commands():
                if screen.check_action(action, ()) is True:
                    yield SystemCommand(title, help_text, getattr(screen, f"action_{action}"))
        yield from super().get_system_commands(screen)

    # -- forks and relatives (tui/screens/fork.py asks the app: it knows every screen) ------------
    def open_fork(self, loop: Any) -> None:
        """A fork's loop (from `forker`), run on a LiveScreen over the current screen."""
        self.extra_loops.append(loop)
        self.push_screen(LiveScreen(loop, preview=self.preview, stable=self.stable))

    def open_run(self, run_dir: Path) -> None:
        """Another run directory (a parent or a fork) over the current screen; escape: back."""
        self.push_screen(ViewScreen(Path(run_dir), preview=self.preview, stable=self.stable,
                                    poll_interval=self.poll_interval))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """`q` (and ctrl+q): the topmost run screen decides (a live one asks while it runs)."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, RunScreen):
                screen.request_quit()
                return
        self.exit(return_code=1 if self.failed else 0)


def exit_report(run_dir: Path) -> str:
    """What is printed on the normal terminal once the app has closed: the run directory, how
    the run stands, its truth, and the command that continues it (or shows it again)."""
    from truthloop.store import RunDirError, read_run
    from truthloop.text import count, visible

    where = visible(str(run_dir))
    lines = [f"run directory: {where}"]
    try:
        view = read_run(run_dir)
    except RunDirError as error:
        lines.append(f"nothing to continue: {visible(str(error))}")
        return "\n".join(lines)
    summary = view.summary or {}
    status = view.status
    done = summary.get("iterations", len(view.records))
    if status == "converged":
        cycle = summary.get("cycle") or {}
        kind = ("fixed point" if cycle.get("length") == 1
                else f"cycle of length {cycle.get('length')}")
        lines.append(f"state: converged, {kind} starting at iteration {cycle.get('start')}")
        for prompt, image in zip(summary.get("truth_prompts") or [],
                                 summary.get("truth_images") or []):
            lines.append(f"truth: {visible(str(prompt))}  [{visible(str(image))}]")
        lines.append(f"look again: truthloop view {where}")
    elif status == "max_iters" and summary.get("generations"):
        lines.append(f"state: ran its {count(summary['generations'], 'generation')} "
                     f"(--generations: a fixed-length chain)")
        lines.append(f"look again: truthloop view {where}")
    elif status == "max_iters":
        lines.append(f"state: no repeat within {count(done, 'iteration')} (--max-iters)")
        lines.append(f"continue with: truthloop resume --max-iters N {where}")
    elif status == "error":
        message = visible(str(summary.get("message", "unknown error")))
        lines.append(f"state: error: {message}  (details in error.log)")
        lines.append(f"continue with: truthloop resume {where}")
    elif status == "running":
        lines.append(f"state: running (another process writes it): truthloop view {where}")
    else:  # stopped, interrupted
        lines.append(f"state: {status} after {count(done, 'iteration')}")
        lines.append(f"continue with: truthloop resume {where}")
    return "\n".join(lines)


def _say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:  # the terminal went away (SIGHUP): the run directory has it all
        pass


def run_live(loop: Any, preview: str = "auto", forker: Any = None,
             live_preview: bool = True) -> int:
    """Drive `loop` in the app; 0 unless the loop failed (1). `live_preview`: show the image
    while it denoises (`p` toggles it)."""
    import signal

    from truthloop.engine import EngineProcess, pin_watcher

    if isinstance(loop, EngineProcess):  # the app keeps a CPU of its own, the engine the rest
        pin_watcher()
    app = TruthLoopApp(loop=loop, preview=resolve_preview(preview), forker=forker)
    app.live_preview = live_preview and preview != "none"

    def hang_up(signum: int, frame: Any) -> None:
        # The SSH link dropped or someone sent SIGTERM: stop after the current denoising step,
        # so the run ends as "stopped" (resumable), then leave.
        loop.control.stop()
        app.exit(return_code=128 + signum)

    previous = {}
    for signum in (signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup keeps its meaning
            previous[signum] = signal.signal(signum, hang_up)
    try:
        app.run()
    finally:
        loop.control.stop()
        if app.loop_started:
            loop.done.wait(timeout=120)  # the worker writes the final summary first
        _stop_forks(app)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _say(exit_report(Path(loop.run_dir)))
    _report_forks(app)
    return 1 if app.failed else (app.return_code or 0)


def _stop_forks(app: TruthLoopApp) -> None:
    """Forks started with `f` stop with the app, each writing its summary first (resumable)."""
    for fork in app.extra_loops:
        fork.control.stop()
    for fork in app.extra_loops:
        if fork.opened:  # it began, and writes its summary as it stops
            fork.done.wait(timeout=120)


def _report_forks(app: TruthLoopApp) -> None:
    """After the run's own report: each fork started with `f`, where it is and how it stands."""
    for fork in app.extra_loops:
        _say("")
        _say("fork " + exit_report(Path(fork.run_dir)))


def run_view(run_dir: Path, preview: str = "auto", forker: Any = None) -> int:
    from truthloop.engine import pin_watcher

    pin_watcher()  # a fork made here (`f`) runs its engine on the other CPUs
    app = TruthLoopApp(run_dir=Path(run_dir), preview=resolve_preview(preview), forker=forker)
    try:
        app.run()
    finally:
        _stop_forks(app)
    _say(exit_report(Path(run_dir)))
    _report_forks(app)
    return app.return_code or 0


def run_compare(run_a: Path, run_b: Path, preview: str = "auto") -> int:
    app = TruthLoopApp(compare=(Path(run_a), Path(run_b)), preview=resolve_preview(preview))
    app.run()
    return app.return_code or 0
