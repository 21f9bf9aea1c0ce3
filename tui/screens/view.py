"""A run directory, read-only, followed while it grows: `truthloop view RUN_DIR`.

The directory is polled (log.jsonl size and mtime, summary.json mtime) and read with the core's
store; its status (with the "interrupted" rule: a running summary nobody holds the lock of) comes
from `RunView.status`. Pushed by another screen (a sweep table), escape goes back to it.
"""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding

from truthloop.families import pair_label
from truthloop.record import Record
from truthloop.store import LOG_FILE, SUMMARY_FILE, RunDirError, RunView, is_locked, read_records, read_run
from truthloop.text import visible
from tui.screens.run import BROWSE_BINDINGS, FINAL, RunScreen
from tui.widgets.status import StatusBar


class ViewScreen(RunScreen):
    BINDINGS = [
        *BROWSE_BINDINGS,
        Binding("escape", "back", "Back", show=False),
    ]

    mode = "view"

    def __init__(self, run_dir: Path, preview: str = "halfcell", stable: bool = False,
                 poll_interval: float = 0.5) -> None:
        super().__init__(run_dir, preview=preview, stable=stable)
        self.poll_interval = poll_interval
        self.run_view: RunView | None = None
        self._log_stamp: tuple[int, int] | None = None
        self._summary_stamp: int | None = None

    def start(self) -> None:
        self._load()
        self.set_interval(self.poll_interval, self._poll)

    def records_changed(self, done: list[Record]) -> None:
        self.query_one(StatusBar).set(iteration=len(done) - 1 if done else None)

    def _load(self) -> None:
        try:
            view = read_run(self.run_dir)
        except RunDirError as error:
            self.error_message = visible(str(error))
            self.state = "error"
            self.show_banner()
            return
        self.config = view.config
        self.show_max_iters()
        self.add_records(view.records)
        self._log_stamp = _stamp(self.run_dir / LOG_FILE)
        self._summary_stamp = _mtime(self.run_dir / SUMMARY_FILE)
        self._show_status(view)
        if view.problems:  # what could not be read, named by file; the rest is shown
            self.notify("\n".join(visible(problem) for problem in view.problems[:5]),
                        title="some of this run could not be read", severity="warning",
                        markup=False, timeout=15)

    def _poll(self) -> None:
        stamp = _stamp(self.run_dir / LOG_FILE)
        if stamp != self._log_stamp:
            self._log_stamp = stamp
            self.add_records(read_records(self.run_dir)[len(self.records):])
        mtime = _mtime(self.run_dir / SUMMARY_FILE)
        if mtime != self._summary_stamp:
            self._summary_stamp = mtime
            try:
                view = read_run(self.run_dir)
            except RunDirError:
                return
            if view.summary is None:
                return  # a summary being replaced: the next change reads it
            self._show_status(view)
        else:
            locked = is_locked(self.run_dir)
            self.query_one(StatusBar).set(following=locked)
            if self.state == "running" and not locked and self.run_view is not None:
                self._show_status(self.run_view)  # the writer went away

    def _show_status(self, view: RunView) -> None:
        self.run_view = view
        self.summary = view.summary
        self.show_max_iters()
        self.query_one(StatusBar).set(device=self.device_used(), pair=pair_label(self.config))
        status = view.status
        if status == "error":
            self.error_message = visible(str((view.summary or {}).get("message", "unknown error")))
        self.query_one(StatusBar).set(following=is_locked(self.run_dir))
        if status != self.state:
            self.state = status
            if status in FINAL:
                self.finished()
            else:
                self.show_banner()

    def device_used(self) -> str:
        """The device the run ran on (summary.json, its last segment's), not the config's ask
        ("auto"); the ask, marked so, when no segment got as far as loading its models."""
        device = self.last_segment().get("device") or (self.summary or {}).get("device")
        if device:
            return str(device)
        asked = self.config.get("models", {}).get("device", "") if self.config else ""
        return f"{asked} (asked)" if asked else ""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":  # only when pushed over another screen (a sweep table)
            return len(self.app.screen_stack) > 1 and self.app.screen is self
        return True

    def action_back(self) -> None:
        self.dismiss()


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
