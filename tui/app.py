"""The truthloop app: a live run (`run`, `demo`, `resume`) or a run directory read-only (`view`).

Data goes one way. Live: the engine runs `TruthLoop.run()` in a thread worker; its events come
back as `EngineEvent` messages (post_message is thread-safe) and the UI never waits on it; keys
act through the loop's `LoopControl`. View: the run directory is polled (log.jsonl size,
summary.json mtime) and read with `truthloop.store`. Both feed the same `records` list.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from truthloop import events as ev
from truthloop.store import (
    INPUT_FILE, LOG_FILE, SUMMARY_FILE, RunDirError, is_locked, read_records, read_run,
)
from truthloop.text import visible
from tui.messages import EngineEvent
from tui.screens import ConfirmQuit, HelpScreen
from tui.widgets.caption import CaptionPanel
from tui.widgets.drift import Drift
from tui.widgets.image import ImageView, resolve_preview
from tui.widgets.log_table import LogTable
from tui.widgets.status import StatusBar

FINAL = ("converged", "stopped", "error", "max_iters", "interrupted")
MEDIUM = 100  # from this width on, a larger image
WIDE = 140  # from this width on, the previous image is shown beside the current one
STEP_INTERVAL = 0.1  # at most ~10 denoising/loading updates a second reach the UI


class TruthLoopApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "truthloop"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("space", "pause", "Pause"),
        Binding("space", "resume", "Resume"),
        Binding("n", "step", "Step"),
        Binding("s", "stop", "Stop"),
        Binding("left", "browse(-1)", "Older", priority=True, show=False),
        Binding("right", "browse(1)", "Newer", priority=True, show=False),
        Binding("end,f", "follow", "Follow", show=False),
        Binding("b", "toggle_base", "Diff base"),
        Binding("B", "pin_base", "Pin base", show=False),
        Binding("c", "copy_path", "Image path"),
        Binding("e", "export", "Export"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    state: reactive[str] = reactive("loading", bindings=True)

    def __init__(self, loop: Any = None, run_dir: Path | None = None, preview: str = "halfcell",
                 stable: bool = False, poll_interval: float = 0.5) -> None:
        """`loop` (a TruthLoop) for a live run, or `run_dir` to view one. `preview` must already
        be resolved (`resolve_preview`); `stable` blanks timings, memory and absolute paths, for
        deterministic screenshots."""
        super().__init__()
        if (loop is None) == (run_dir is None):
            raise ValueError("give a loop or a run_dir")
        self.loop = loop
        self.loop_started = False
        self.mode = "live" if loop is not None else "view"
        self.run_dir = Path(loop.run_dir if loop is not None else run_dir)
        self.preview = preview
        self.stable = stable
        self.poll_interval = poll_interval
        self.records: list[dict[str, Any]] = []
        self.config: dict[str, Any] = dict(loop.config.to_dict()) if loop is not None else {}
        self.summary: dict[str, Any] | None = None
        self.error_message: str | None = None
        self.failed = False
        self.selected: int | None = None  # None: follow the newest iteration
        self.base: str | int = "previous"  # "previous" | "start" | a pinned iteration index
        self.loop_active = False
        self._quit_requested = False
        self._last_post = 0.0
        self._pending_progress: ev.Event | None = None
        self._log_stamp: tuple[int, int] | None = None
        self._summary_stamp: int | None = None

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Static("", id="banner", markup=False)
        with Horizontal(id="main"):
            yield LogTable(stable=self.stable, id="log")
            with Vertical(id="side"):
                with Horizontal(id="images"):
                    yield ImageView(self.preview, id="img-current")
                    yield ImageView(self.preview, id="img-previous")
                yield Drift(id="drift")
        with VerticalScroll(id="caption-box", can_focus=False):
            yield CaptionPanel(id="caption")
        yield Footer()

    @property
    def dir_label(self) -> str:
        return self.run_dir.name if self.stable else str(self.run_dir)

    def on_mount(self) -> None:
        status = self.query_one(StatusBar)
        status.set(mode=self.mode, run_dir="" if self.stable else str(self.run_dir))
        self._set_max_iters()
        self.query_one(LogTable).focus()
        if self.mode == "live":
            self.loop.on_event = self._sink
            self.loop_active = True
            self.state = "loading"
            status.set(loading="starting")
            self.run_loop()
            self.set_interval(STEP_INTERVAL, self._flush_progress)
            if not self.stable:
                self._poll_memory()
                self.set_interval(2.0, self._poll_memory)
        else:
            self._load_view()
            self.set_interval(self.poll_interval, self._poll_run)
        if not self.records:
            self.query_one(Drift).set_values([])
        self._refresh_views()

    def on_resize(self) -> None:
        self.screen.set_class(MEDIUM <= self.size.width < WIDE, "-medium")
        self.screen.set_class(self.size.width >= WIDE, "-wide")
        self.call_after_refresh(self._fit_table)

    def _fit_table(self) -> None:
        table = self.query_one(LogTable)
        table.fit(table.scrollable_content_region.width or table.size.width)

    # -- the engine, live ------------------------------------------------------------------------
    def _sink(self, event: ev.Event) -> None:
        """Runs in the loop's thread: hand the event over, coalescing frequent progress.

        A progress event that comes too soon after the last one waits in `_pending_progress`
        for the UI's 10 Hz tick; any other event clears it, so a stale one never lands late.
        """
        if isinstance(event, ev.DenoiseStep):
            urgent = event.step == event.total or event.step <= 1
        elif isinstance(event, ev.Loading) and event.total:
            urgent = event.done in (None, 0, event.total)
        else:
            urgent = True
        now = time.monotonic()
        if not urgent and now - self._last_post < STEP_INTERVAL:
            self._pending_progress = event
            return
        self._pending_progress = None
        if isinstance(event, (ev.DenoiseStep, ev.Loading)):
            self._last_post = now
        self.post_message(EngineEvent(event))

    def _flush_progress(self) -> None:
        event, self._pending_progress = self._pending_progress, None
        if event is not None:
            self._on_engine_event(EngineEvent(event))

    @work(thread=True, exclusive=True, group="loop", exit_on_error=False, name="truthloop")
    def run_loop(self) -> dict[str, Any]:
        self.loop_started = True
        return self.loop.run()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "loop" or event.state not in (
                WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        self.loop_active = False
        # The loop may end while the app is already closing (quit, SIGHUP): its screens are gone
        # then, and only the flags that run_live reads still matter.
        try:
            on_screen = bool(self.screen_stack)
        except KeyError:  # the mode's stack itself is gone
            on_screen = False
        if event.state == WorkerState.ERROR:
            self.failed = True
            error = event.worker.error
            if self.state != "error":  # a setup error (bad run dir, lock held): no Failed event
                self.error_message = visible(str(error) or type(error).__name__)
                if on_screen:
                    self.state = "error"
                    self._show_banner()
                else:  # no watchers: they would draw on widgets that are gone
                    self.set_reactive(TruthLoopApp.state, "error")
        if on_screen:
            self.refresh_bindings()
        if self._quit_requested:
            self.exit(return_code=1 if self.failed else 0)

    @on(EngineEvent)
    def _on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        status = self.query_one(StatusBar)
        if isinstance(event, ev.RunStarted):
            self.config = event.config or self.config
            self._set_max_iters()
            if event.resumed_at:
                for record in read_records(self.run_dir):
                    self._add_record(record)
            status.set(loading="loading models",
                       iteration=event.resumed_at if event.resumed_at else None)
            self._refresh_views()  # the start image exists now
        elif isinstance(event, ev.Loading):
            status.set(loading=event.message, loading_done=event.done, loading_total=event.total)
        elif isinstance(event, ev.Notice):
            # Plain text: the message can name a user-given id or path.
            self.notify(visible(event.message), markup=False, timeout=15)
        elif isinstance(event, ev.Ready):
            status.set(device=event.device, loading="")
            if self.state == "loading":
                self.state = "running"
        elif isinstance(event, ev.IterationStarted):
            status.set(iteration=event.index, step=None, steps=None)
            if self.state == "loading":
                self.state = "running"
        elif isinstance(event, ev.CaptionReady):
            self._add_record({"index": event.index, "caption": event.caption,
                              "fed_prompt": event.fed_prompt, "compared": event.compared,
                              "repeat_of": event.repeat_of, "image": None, "pending": True})
        elif isinstance(event, ev.DenoiseStep):
            status.set(iteration=event.index, step=event.step, steps=event.total)
        elif isinstance(event, ev.IterationDone):
            self._add_record(dict(event.record))
            status.set(step=None, steps=None)
        elif isinstance(event, ev.Paused):
            status.set(iteration=event.index)
            if self.state not in FINAL and self.state != "stopping":
                self.state = "paused"
        elif isinstance(event, ev.Resumed):
            if self.state in ("paused", "pausing"):
                self.state = "running"
        elif isinstance(event, ev.Finished):
            self.summary = dict(event.summary)
            self.state = self.summary.get("status", "stopped")
            self._finished()
        elif isinstance(event, ev.Failed):
            self.summary = dict(event.summary)
            self.error_message = visible(event.message)
            self.failed = True
            self.state = "error"
            self._finished()

    def _poll_memory(self) -> None:
        self.query_one(StatusBar).set(memory=memory_line())

    # -- a run directory, read-only --------------------------------------------------------------
    def _load_view(self) -> None:
        try:
            view = read_run(self.run_dir)
        except RunDirError as error:
            self.error_message = visible(str(error))
            self.state = "error"
            self._show_banner()
            return
        self.config = view.config
        self._set_max_iters()
        self.query_one(StatusBar).set(device=str(self.config.get("models", {}).get("device", "")))
        for record in view.records:
            self._add_record(record)
        self._log_stamp = _stamp(self.run_dir / LOG_FILE)
        self._summary_stamp = _mtime(self.run_dir / SUMMARY_FILE)
        self._apply_summary(view.summary)
        if view.problems:  # what could not be read, named by file; the rest is shown
            self.notify("\n".join(visible(problem) for problem in view.problems[:5]),
                        title="some of this run could not be read", severity="warning",
                        markup=False, timeout=15)

    def _poll_run(self) -> None:
        stamp = _stamp(self.run_dir / LOG_FILE)
        if stamp != self._log_stamp:
            self._log_stamp = stamp
            for record in read_records(self.run_dir)[len(self.records):]:
                self._add_record(record)
        mtime = _mtime(self.run_dir / SUMMARY_FILE)
        if mtime != self._summary_stamp:
            self._summary_stamp = mtime
            try:
                summary = json.loads((self.run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return  # a summary being replaced: the next poll reads it
            self._apply_summary(summary if isinstance(summary, dict) else None)
        else:
            locked = is_locked(self.run_dir)
            self.query_one(StatusBar).set(following=locked)
            if self.state == "running" and not locked:
                self._apply_summary(self.summary)  # the writer went away

    def _apply_summary(self, summary: dict[str, Any] | None) -> None:
        self.summary = summary
        status = (summary or {}).get("status", "unknown")
        locked = is_locked(self.run_dir)
        if status == "running" and not locked:
            status = "interrupted"
        if status == "error":
            self.error_message = visible(str((summary or {}).get("message", "unknown error")))
        self.query_one(StatusBar).set(following=locked)
        if status != self.state:
            self.state = status
            if status in FINAL:
                self._finished()
            else:
                self._show_banner()

    # -- shared state ----------------------------------------------------------------------------
    def _set_max_iters(self) -> None:
        max_iters = self.config.get("loop", {}).get("max_iters") if self.config else None
        self.query_one(StatusBar).set(max_iters=max_iters)

    def _add_record(self, record: dict[str, Any]) -> None:
        index = record.get("index")
        if not isinstance(index, int) or index < 0:
            return
        if index < len(self.records):
            self.records[index] = record
        elif index == len(self.records):
            self.records.append(record)
        else:
            return  # a gap: not a record of this run's sequence
        table = self.query_one(LogTable)
        table.upsert(record)
        status = self.query_one(StatusBar)
        done = [r for r in self.records if not r.get("pending")]
        totals = [r["timings"]["total"] for r in done[-5:]
                  if r.get("image") and isinstance(r.get("timings", {}).get("total"), (int, float))]
        status.set(done=len(done),
                   sec_per_iter=(sum(totals) / len(totals)) if totals and not self.stable else None)
        if self.mode == "view":
            status.set(iteration=len(done) - 1 if done else None)
        self.query_one(Drift).set_values([r.get("sim_start") for r in done])
        if self.selected is None:
            self._move_cursor(len(self.records) - 1)
        self._refresh_views()

    def _move_cursor(self, index: int) -> None:
        table = self.query_one(LogTable)
        if 0 <= index < table.row_count and table.cursor_row != index:
            table.move_cursor(row=index, animate=False)

    @property
    def current_index(self) -> int | None:
        if not self.records:
            return None
        if self.selected is None:
            return len(self.records) - 1
        return min(self.selected, len(self.records) - 1)

    def _image_of(self, index: int) -> tuple[Path | None, str]:
        """The image path shown for iteration `index`, and a note about it."""
        if index < 0:
            path = self.run_dir / INPUT_FILE
            return (path if path.exists() else None), ""
        record = self.records[index]
        if record.get("image"):
            return self.run_dir / record["image"], ""
        repeat = record.get("repeat_of")
        if repeat is not None and 0 <= repeat < len(self.records) and self.records[repeat].get("image"):
            return self.run_dir / self.records[repeat]["image"], f"not drawn: same prompt as #{repeat}"
        return None, "drawing…" if record.get("pending") else "no image"

    def _refresh_views(self) -> None:
        index = self.current_index
        caption = self.query_one(CaptionPanel)
        current_view = self.query_one("#img-current", ImageView)
        previous_view = self.query_one("#img-previous", ImageView)
        if index is None:
            caption.show(None, None, "")
            start, _ = self._image_of(-1)
            current_view.show(start, "start image" if start else "no image yet")
            previous_view.show(None, "")
            return
        record = self.records[index]
        base, label = self._base_for(index)
        caption.show(record, base, label)
        shown = index
        if record.get("pending"):  # being drawn: keep showing the newest finished image
            shown = index - 1
        path, note = self._image_of(shown)
        title = f"#{shown}" if shown >= 0 else "start image"
        if shown != index:
            note = f"drawing #{index}…"
        elif self.selected is not None:
            note = (note + "  " if note else "") + "(browsing)"
        current_view.show(path, title, note)
        prev_path, _ = self._image_of(shown - 1)
        prev_title = f"previous #{shown - 1}" if shown - 1 >= 0 else "start image"
        previous_view.show(prev_path, prev_title if shown >= 0 else "")

    def _base_for(self, index: int) -> tuple[dict[str, Any] | None, str]:
        if self.base == "start":
            return self.records[0], "start #0"
        if isinstance(self.base, int) and self.base < len(self.records):
            return self.records[self.base], f"#{self.base} (pinned)"
        if index == 0:
            return None, "previous"
        return self.records[index - 1], f"previous #{index - 1}"

    def _finished(self) -> None:
        self.query_one(StatusBar).set(step=None, steps=None, loading="")
        if self.records and self.records[-1].get("pending"):
            # Stopped or failed mid-iteration: that iteration never reached log.jsonl.
            pending = self.records.pop()
            table = self.query_one(LogTable)
            table.records.pop(pending["index"], None)
            table.remove_row(str(pending["index"]))
        if self.state == "converged":
            cycle = (self.summary or {}).get("cycle") or {}
            start = cycle.get("start")
            if isinstance(start, int) and start < len(self.records):
                self.selected = start if start != len(self.records) - 1 else None
                self._move_cursor(start)
        self._show_banner()
        self._refresh_views()

    def _show_banner(self) -> None:
        banner = self.query_one("#banner", Static)
        summary = self.summary or {}
        text = Text()
        for name in FINAL:
            banner.remove_class(name)
        if self.state == "converged":
            cycle = summary.get("cycle") or {}
            length, start = cycle.get("length"), cycle.get("start")
            text.append(" ✔ CONVERGED ", "bold reverse")
            if length == 1:
                text.append(f"  fixed point at iteration {start}", "bold")
            else:
                text.append(f"  cycle of length {length} starting at iteration {start}", "bold")
            if cycle.get("found_at") is not None:
                text.append(f"  (repeat found at #{cycle['found_at']})")
            prompts = summary.get("truth_prompts") or []
            images = summary.get("truth_images") or []
            for n, prompt in enumerate(prompts[:3]):
                text.append("\n truth: ", "bold")
                text.append(visible(str(prompt)))
                if n < len(images) and images[n]:
                    text.append(f"  [{visible(str(images[n]))}]", "dim")
            if len(prompts) > 3:
                text.append(f"\n … and {len(prompts) - 3} more in summary.json", "dim")
        elif self.state == "error":
            text.append(" ✖ ERROR ", "bold reverse")
            text.append("  " + (self.error_message or "the run failed"), "bold")
            text.append(f"\n run directory kept: {visible(self.dir_label)}"
                        f"  (details in error.log; resume with truthloop resume)")
        elif self.state == "stopped":
            text.append(" ■ STOPPED ", "bold reverse")
            text.append(f"  after {summary.get('iterations', len(self.records))} iterations;"
                        f" continue with: truthloop resume {visible(self.dir_label)}")
        elif self.state == "max_iters":
            text.append(" … NO REPEAT ", "bold reverse")
            text.append(f"  within {summary.get('iterations', len(self.records))} iterations"
                        f" (--max-iters); continue with: truthloop resume --max-iters N"
                        f" {visible(self.dir_label)}")
        elif self.state == "interrupted":
            text.append(" ✖ INTERRUPTED ", "bold reverse")
            text.append(f"  nothing writes this run any more; continue with: truthloop resume"
                        f" {visible(self.dir_label)}")
        banner.update(text)
        banner.display = bool(text.plain)
        if self.state in FINAL:
            banner.add_class(self.state)

    def watch_state(self, state: str) -> None:
        self.query_one(StatusBar).set(state=state)

    # -- keys ------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "resume", "step", "stop"):
            if self.mode != "live" or not self.loop_active or self.state in FINAL:
                return False
            if action == "pause":
                return self.state in ("loading", "running", "stepping")
            if action == "resume":
                return self.state in ("paused", "pausing")
            if action == "step":
                return True if self.state in ("paused", "pausing") else None
            return self.state != "stopping"
        if action in ("browse", "follow", "pin_base", "toggle_base", "copy_path"):
            return len(self.screen_stack) == 1
        return True

    def action_pause(self) -> None:
        self.loop.control.pause()
        self.state = "pausing"  # until the loop reaches its next checkpoint and says Paused

    def action_resume(self) -> None:
        self.loop.control.resume()
        self.state = "running"

    def action_step(self) -> None:
        self.loop.control.step()
        self.state = "stepping"

    def action_stop(self) -> None:
        self.loop.control.stop()
        self.state = "stopping"

    def action_browse(self, delta: int) -> None:
        if not self.records:
            return
        index = self.current_index or 0
        index = max(0, min(len(self.records) - 1, index + delta))
        self._select(index)
        self._move_cursor(index)

    def action_follow(self) -> None:
        if self.records:
            self._select(len(self.records) - 1)
            self._move_cursor(len(self.records) - 1)

    def _select(self, index: int) -> None:
        selected = None if index >= len(self.records) - 1 else index
        if selected != self.selected or selected is None:
            self.selected = selected
            self._refresh_views()

    @on(DataTable.RowHighlighted)
    def _on_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row != event.data_table.cursor_row:
            return  # stale: the cursor moved on (following new rows) since this was posted
        try:
            index = int(event.row_key.value or "")
        except ValueError:
            return
        if index < len(self.records):
            self._select(index)

    def action_toggle_base(self) -> None:
        self.base = "start" if self.base == "previous" else "previous"
        self._refresh_views()
        self.notify(f"diff base: {self.base}", timeout=2)

    def action_pin_base(self) -> None:
        index = self.current_index
        if index is None:
            return
        self.base = index
        self._refresh_views()
        self.notify(f"diff base: iteration #{index} (b: back to previous/start)", timeout=3)

    def action_copy_path(self) -> None:
        index = self.current_index
        path = None if index is None else self._image_of(index)[0]
        if path is None:
            path, _ = self._image_of(-1)
        if path is None:
            self.notify("no image yet", timeout=2)
            return
        self.copy_to_clipboard(str(path))
        self.notify(visible(str(path)), title="image path (copied to the clipboard)", markup=False,
                    timeout=8)

    def action_export(self) -> None:
        self.notify("exporting GIF + contact sheet…", timeout=2)
        self._export()

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def _export(self) -> None:
        # Pillow work on every image of the run: off the UI thread, like the loop itself.
        from truthloop.lookback.export import export_default
        from truthloop.lookback.runs import ExportError

        try:
            paths = export_default(self.run_dir)
        except ExportError as error:
            self.call_from_thread(self.notify, visible(str(error)), title="export failed",
                                  severity="error", markup=False, timeout=8)
            return
        listing = "\n".join(visible(str(path)) for path in paths)
        self.call_from_thread(self.notify, listing, title="exported", markup=False, timeout=10)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.mode == "view" or not self.loop_active:
            self.exit(return_code=1 if self.failed else 0)
            return
        if self._quit_requested or isinstance(self.screen, ConfirmQuit):
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._quit_requested = True
                self.loop.control.stop()
                self.state = "stopping"
                if not self.loop_active:
                    self.exit(return_code=1 if self.failed else 0)

        self.push_screen(ConfirmQuit(self.dir_label), answered)

    def on_unmount(self) -> None:
        if self.loop is not None:
            self.loop.control.stop()  # never leave the engine running behind a closed UI


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def memory_line() -> str:
    """Process RSS, and GPU memory when the engine already loaded torch with CUDA (never imports
    torch itself)."""
    parts = []
    try:
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"RSS {rss / 2**30:.1f} GiB" if rss >= 2**30 else f"RSS {rss / 2**20:.0f} MiB")
    except (OSError, ValueError, IndexError):
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            used = torch.cuda.memory_allocated() / 2**30
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            parts.append(f"GPU {used:.1f}/{total:.0f} GiB")
    except Exception:  # noqa: BLE001 - memory is a nicety; never let it break the status line
        pass
    return "  ".join(parts)


def run_live(loop: Any, preview: str = "auto") -> int:
    """Drive `loop` in the app; 0 unless the loop failed (1)."""
    import signal

    app = TruthLoopApp(loop=loop, preview=resolve_preview(preview))

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
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if app.failed else (app.return_code or 0)


def run_view(run_dir: Path, preview: str = "auto") -> int:
    app = TruthLoopApp(run_dir=Path(run_dir), preview=resolve_preview(preview))
    app.run()
    return app.return_code or 0
