"""What both run screens share: the layout, browsing history, the diff base, the image path, export.

`RunScreen` shows one run directory's records (a `History`); `LiveScreen` feeds it from a loop in a
thread worker, `ViewScreen` from the directory on disk. Either can be the app's first screen or be
pushed by another screen (a sweep table pushes a `ViewScreen` per trajectory; escape pops it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from truthloop.config import chain_shape
from truthloop.fork import parent_of
from truthloop.record import Record
from truthloop.store import RUN_FILE
from truthloop.text import visible
from tui.history import History
from tui.screens.fork import ForkActions
from tui.widgets.banner import FINAL, Banner
from tui.widgets.caption import CaptionPanel
from tui.widgets.drift import Drift
from tui.widgets.image import ImageView
from tui.widgets.log_table import YOURS_MARK, LogTable
from tui.widgets.status import StatusBar

# The run screens' stylesheet (tui/app.tcss, where the package data is), scoped to RunScreen.
STYLESHEET = Path(__file__).resolve().parent.parent / "app.tcss"
MEDIUM = 100  # from this width on, a larger image
WIDE = 140  # from this width on, the previous image is shown beside the current one
TALL = 32  # below this height (`-short`): a one-row drift, a shorter caption panel and banner

# The keys of every run screen, in footer order. Each screen class lists all of its keys (a live
# screen puts its loop keys first): Textual puts a base class's bindings before a subclass's.
BROWSE_BINDINGS = [
    Binding("left", "browse(-1)", "Older", priority=True, show=False),
    Binding("right", "browse(1)", "Newer", priority=True, show=False),
    # Before the log table's own home / end (DataTable's: scroll sideways, which it never does).
    Binding("home", "first", "First", priority=True, show=False),
    Binding("end", "follow", "Follow", priority=True, show=False),
    Binding("b", "toggle_base", "Base", tooltip="Diff base: previous iteration ↔ start"),
    Binding("B", "pin_base", "Pin base", show=False),
    Binding("c", "copy_path", "Path", tooltip="Show and copy the image's file path"),
    Binding("e", "export", "Export"),
    # tui/screens/fork.py (ForkActions)
    Binding("f", "fork", "Fork", show=False),
    Binding("w", "write_caption", "Write a caption", show=False),
    Binding("r", "relatives", "Parent/forks", show=False),
    Binding("C", "compare_parent", "Compare with parent", show=False),
]

# The command palette's commands of every run screen: (title, help, action). A live screen puts
# its loop's first. Only those `check_action` allows now are offered (tui/commands.py).
BROWSE_COMMANDS = [
    ("Diff base: previous ↔ start", "Diff the caption against the previous iteration or the "
     "start (b)", "toggle_base"),
    ("Diff base: pin this iteration", "Diff every caption against the selected one (B)",
     "pin_base"),
    ("Follow the newest iteration", "Select the newest row again (end)", "follow"),
    ("Copy image path", "Show and copy the selected image's file path (c)", "copy_path"),
    ("Export GIF + contact sheet", "Into RUN_DIR/exports/ (e)", "export"),
    ("Fork from this iteration", "A new run from the selected image, with options to change (f)",
     "fork"),
    ("Write a caption and continue from it", "Edit the selected iteration's caption (or type "
     "a new one): a fork whose first prompt is yours (w)", "write_caption"),
    ("Parent and forks", "Open this run's parent or one of its forks (r)", "relatives"),
    ("Compare with the parent", "This fork and its parent side by side (C)", "compare_parent"),
]


TOAST_WIDTH = 60  # Textual's Toast: width 60, max-width 50%, less padding, border (seen: 36 of 40)


def wrap_path(path: str, width: int) -> str:
    """`path` on lines of at most `width` characters, broken after a `/` (a name longer than a
    line is broken inside, the only place it can be)."""
    width = max(8, width)
    parts = [part + "/" for part in path.split("/")]
    parts[-1] = parts[-1][:-1]
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        while len(lines[-1]) + len(part) > width:
            cut = width - len(lines[-1])
            lines[-1] += part[:cut]
            part = part[cut:]
            lines.append("")
        lines[-1] += part
    return "\n".join(line for line in lines if line)


class RunScreen(ForkActions, Screen[None]):
    """Status on top, the banner, the iteration log beside the images and drift, the caption
    panel, the footer. Works from 80x24 up (app.tcss; `-medium` / `-wide` from the width)."""

    CSS_PATH = STYLESHEET
    HORIZONTAL_BREAKPOINTS = [(MEDIUM, "-medium"), (WIDE, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (TALL, "-tall")]
    BINDINGS: list[Binding] = []  # see BROWSE_BINDINGS

    mode = "live"  # what the status line says: live | view
    state: reactive[str] = reactive("loading", bindings=True)

    def __init__(self, run_dir: Path, preview: str = "halfcell", stable: bool = False) -> None:
        """`preview` must already be resolved (`resolve_preview`); `stable` blanks timings, memory
        and absolute paths, for deterministic screenshots."""
        super().__init__()
        self.run_dir = Path(run_dir)
        self.preview = preview
        self.stable = stable
        self.history = History(self.run_dir)
        self.config: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.error_message: str | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Banner(id="banner")
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
    def records(self) -> list[Record]:
        return self.history.records

    @property
    def current_index(self) -> int | None:
        return self.history.current_index

    @property
    def dir_label(self) -> str:
        return self.run_dir.name if self.stable else str(self.run_dir)

    def on_mount(self) -> None:
        self.query_one(StatusBar).set(mode=self.mode,
                                      run_dir="" if self.stable else str(self.run_dir))
        self.show_max_iters()
        self.query_one(LogTable).focus()
        self.start()
        if not self.records:
            self.query_one(Drift).show_records([])
        self.refresh_views()

    def start(self) -> None:
        """Start feeding records (the subclass's source)."""

    # -- what the records say ------------------------------------------------------------------
    def last_segment(self) -> dict[str, Any]:
        """summary.json's newest segment (a resume can change options such as --max-iters)."""
        segments = (self.summary or {}).get("segments")
        if isinstance(segments, list) and segments and isinstance(segments[-1], dict):
            return segments[-1]
        return {}

    def show_max_iters(self) -> None:
        """The max-iters the run's last segment ran with (`resume --max-iters 12` of a run
        started with 2 once read `9/2 done`), else run.json's."""
        max_iters = (self.last_segment().get("options") or {}).get("max_iters")
        if not isinstance(max_iters, int):
            max_iters = self.config.get("loop", {}).get("max_iters") if self.config else None
        generations = (self.config or {}).get("loop", {}).get("generations")
        chain = isinstance(generations, int) and generations > 0
        if chain:  # the records its chain writes
            max_iters = chain_shape(generations, self.config.get("start_prompt") is None)[0]
        self.query_one(StatusBar).set(max_iters=max_iters, chain=chain)

    def add_record(self, record: Record) -> None:
        """A new or updated record (a finished iteration, or the pending row of one being drawn)."""
        self.add_records([record])

    def add_records(self, records: Iterable[Record]) -> None:
        """New or updated records in one pass: every row first, then the status, the drift, the
        cursor and the panes once. Once per record, opening a run of 2,000 iterations took 18 s:
        each cursor move and each sparkline went over every row so far."""
        table = self.query_one(LogTable)
        added = False
        for record in records:
            if self.history.add(record):  # False: a gap, not a record of this run's sequence
                table.upsert(record)
                added = True
        if not added:
            return
        done = self.history.done
        sec_per_iter = self.history.sec_per_iter()
        self.query_one(StatusBar).set(done=len(done),
                                      sec_per_iter=None if self.stable else sec_per_iter)
        self.records_changed(done)
        self.query_one(Drift).show_records(done)
        if self.history.selected is None:
            self.query_one(LogTable).show_row(self.history.newest)
        self.refresh_views()

    def records_changed(self, done: list[Record]) -> None:
        """Hook: the list of finished records changed."""

    def refresh_views(self) -> None:
        """Caption panel and images for the selected (or newest) iteration."""
        history = self.history
        index = history.current_index
        caption = self.query_one(CaptionPanel)
        current_view = self.query_one("#img-current", ImageView)
        previous_view = self.query_one("#img-previous", ImageView)
        if index is None:
            caption.show(None, None, "", empty=self.empty_caption())
            start, _ = history.image_of(-1)
            current_view.show(start, "start image" if start else "no image yet")
            previous_view.show(None, "")
            return
        record = history.records[index]
        base, label = history.base_for(index)
        not_drawn = index == history.not_drawn_index
        caption.show(record, base, label,
                     note=f"{history.not_drawn} before it was drawn (not recorded)"
                     if not_drawn else "")
        shown = index
        if record.pending:  # being drawn: keep showing the newest finished image
            shown = index - 1
        path, note = history.image_of(shown)
        title = f"#{shown}" if shown >= 0 else "start image"
        if not_drawn:
            title = (f"#{shown} (last complete)" if shown >= 0
                     else "start image (no iteration complete)")
            note = f"#{index} {history.not_drawn}, not drawn"
        elif shown != index:
            note = f"drawing #{index}…"
        elif history.selected is not None:
            note = (note + "  " if note else "") + "(browsing)"
        current_view.show(path, title, note)
        prev_path, _ = history.image_of(shown - 1)
        prev_title = f"previous #{shown - 1}" if shown - 1 >= 0 else "start image"
        previous_view.show(prev_path, prev_title if shown >= 0 else "")

    def palette_commands(self) -> list[tuple[str, str, str]]:
        """(title, help, action) for the command palette; see BROWSE_COMMANDS."""
        return self.browse_commands()

    def browse_commands(self) -> list[tuple[str, str, str]]:
        """BROWSE_COMMANDS, less "Compare with the parent" on a run that is not a fork (`C`
        still says why)."""
        return [command for command in BROWSE_COMMANDS
                if command[2] != "compare_parent" or self.is_fork()]

    def run_info(self) -> dict:
        """run.json, read each time (a live run writes it once started); {} when unreadable."""
        try:
            info = json.loads((self.run_dir / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        return info if isinstance(info, dict) else {}

    def is_fork(self) -> bool:
        """Whether run.json names a parent."""
        return parent_of(self.run_info()) is not None

    def go_to(self, index: int) -> None:
        """Browse to iteration `index` (the command palette's "go to iteration")."""
        if 0 <= index < len(self.records):
            self._select(index)
            self.query_one(LogTable).show_row(index)

    def on_resize(self) -> None:
        # A narrow footer drops its spacing, so every key fits in 80 columns.
        self.query_one(Footer).compact = self.size.width < MEDIUM

    def empty_caption(self) -> str:
        """What the caption panel says while there is no record to show."""
        if self.state in FINAL or self.state == "stopping":
            outcome = {"stopped": "it stopped", "stopping": "it is stopping",
                       "error": "it failed", "interrupted": "it was interrupted"}
            why = outcome.get(self.state, f"it ended ({self.state})")
            return f"no caption: {why} before its first iteration was recorded"
        yours = self.persons_first_prompt()
        if yours is not None:  # a person's fork: its first caption is theirs, known already
            return f"{YOURS_MARK}your caption, drawn once the models are ready: {yours}"
        return "waiting for the first caption…"

    def persons_first_prompt(self) -> str | None:
        """The first prompt of a fork whose first prompt a person wrote (run.json), else None."""
        info = self.run_info()
        relation = parent_of(info)
        prompt = (info.get("config") or {}).get("start_prompt")
        if relation is None or not relation.by_person or not isinstance(prompt, str):
            return None
        return visible(prompt)

    def finished(self) -> None:
        """The run is over (or was already when viewed): drop a pending row, show the cycle's
        start when it converged, and the banner."""
        # An iteration in flight (its caption shown, its image not drawn) keeps its row, marked
        # not drawn: stopping must not take its caption out of sight. It is not in log.jsonl.
        pending = self.history.end_pending(self.state)
        if pending is not None:
            self.query_one(LogTable).mark_not_drawn(pending.index, self.state)
        done = self.history.done
        self.query_one(StatusBar).set(step=None, steps=None, loading="",
                                      iteration=done[-1].index if done else None)
        for view in self.query(ImageView):
            view.end_preview()
        if self.state == "converged":
            cycle = (self.summary or {}).get("cycle") or {}
            start = cycle.get("start")
            if isinstance(start, int) and start < len(self.records):
                self.history.selected = start if start != self.history.newest else None
                self.query_one(LogTable).show_row(start)
        self.show_banner()
        self.refresh_views()

    def show_banner(self) -> None:
        message = self.error_message
        if message and self.stable:  # an engine message can name the run directory's path
            message = message.replace(str(self.run_dir), self.dir_label)
        self.query_one(Banner).show_outcome(self.state, self.summary, message,
                                            self.dir_label, len(self.history.done),
                                            not_drawn=self.history.not_drawn_index)

    def watch_state(self, state: str) -> None:
        self.query_one(StatusBar).set(state=state)

    # -- keys ----------------------------------------------------------------------------------
    def action_browse(self, delta: int) -> None:
        if not self.records:
            return
        index = self.current_index or 0
        index = max(0, min(self.history.newest, index + delta))
        self._select(index)
        self.query_one(LogTable).show_row(index)

    def action_first(self) -> None:
        self.go_to(0)

    def action_follow(self) -> None:
        if self.records:
            self._select(self.history.newest)
            self.query_one(LogTable).show_row(self.history.newest)

    def _select(self, index: int) -> None:
        if self.history.select(index):
            self.refresh_views()

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
        self.history.base = "start" if self.history.base == "previous" else "previous"
        self.refresh_views()
        self.notify(f"diff base: {self.history.base}", timeout=2)

    def action_pin_base(self) -> None:
        index = self.current_index
        if index is None:
            return
        self.history.base = index
        self.refresh_views()
        self.notify(f"diff base: iteration #{index} (b: back to previous/start)", timeout=3)

    def action_copy_path(self) -> None:
        index = self.current_index
        path = None if index is None else self.history.image_of(index)[0]
        if path is None:
            path, _ = self.history.image_of(-1)
        if path is None:
            self.notify("no image yet", timeout=2)
            return
        self.app.copy_to_clipboard(str(path))
        # A toast is at most 60 cells, half the screen, less its padding and border: the path is
        # broken after a separator, not in the middle of a name.
        width = min(TOAST_WIDTH, self.app.size.width // 2) - 4
        self.notify(wrap_path(visible(str(path)), width),
                    title="image path (copied to the clipboard)", markup=False, timeout=8)

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
            self.app.call_from_thread(self.notify, visible(str(error)), title="export failed",
                                      severity="error", markup=False, timeout=8)
            return
        listing = "\n".join(visible(str(path)) for path in paths)
        self.app.call_from_thread(self.notify, listing, title="exported", markup=False, timeout=10)

    def request_quit(self) -> None:
        """`q`: leave the app (a live screen asks first while its loop runs)."""
        self.app.exit(return_code=0)


__all__ = ["FINAL", "RunScreen", "BROWSE_BINDINGS"]
