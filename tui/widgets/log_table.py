"""The iteration log: one row per iteration, repeats marked; selecting a row browses history."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from truthloop.record import Record
from truthloop.text import clip, visible

# key, label, width (the prompt column takes what is left)
COLUMNS = [
    ("index", "#", 4),
    ("caption", "capt", 4),
    ("draw", "draw", 4),
    ("prompt", "prompt", 0),
    ("sim_prev", "≈prv", 4),
    ("sim_start", "≈st", 4),
    ("repeat", "rep", 5),
]
# On a narrow log (an 80-column screen) the caption time and the similarity to the previous image
# go, so the prompt keeps at least NARROW_PROMPT characters (it had 16 at 80x24); the caption panel
# shows the selected iteration's whole prompt.
NARROW_DROPS = ("caption", "sim_prev")
NARROW_PROMPT = 28


def fixed_width(columns: list[tuple[str, str, int]]) -> int:
    """The other columns and every cell's padding (one column each side); the width `fit` is
    given already leaves out the vertical scrollbar's gutter (always reserved: LogTable's CSS)."""
    return sum(width for _, _, width in columns) + 2 * len(columns)


FIXED = fixed_width(COLUMNS)


def columns_for(width: int) -> list[tuple[str, str, int]]:
    """The columns shown in a log `width` cells wide."""
    if width - FIXED >= NARROW_PROMPT:
        return list(COLUMNS)
    return [column for column in COLUMNS if column[0] not in NARROW_DROPS]


# The rep column of an iteration the run ended in before drawing it (5 cells).
NOT_DRAWN = {"stopped": "■stop", "error": "✖fail"}
# Before the prompt of an iteration whose caption a person wrote (a human turn: `w`, or `fork
# --prompt`); its capt column says `you` instead of a captioning time.
YOURS_MARK = "✎ "
YOURS_STYLE = "bold cyan"


class Cell(Text):
    """A cell's text, which Textual does not measure. DataTable measures every cell of each new
    row for the width of auto-width columns (a console.options and a word split each, 0.2 ms a
    row: a third of opening a 10,000-iteration run); the log's columns have fixed widths, and a
    renderable without `__rich_measure__` is given Textual's default width instead."""

    __rich_measure__ = None  # type: ignore[assignment]


def seconds(value: Any, stable: bool) -> Cell:
    if stable or not isinstance(value, (int, float)):
        return Cell("–", style="dim", justify="right")
    if value >= 600:
        return Cell(f"{value / 60:.0f}m", justify="right")
    if value >= 9.95:
        return Cell(f"{value:.0f}s", justify="right")
    return Cell(f"{value:.1f}s", justify="right")


def similarity(value: Any) -> Cell:
    if not isinstance(value, (int, float)):
        return Cell("–", style="dim", justify="right")
    return Cell(f"{value:.2f}", justify="right")


class LogTable(DataTable):
    """Cells are always Rich Text built from plain strings: a caption is never parsed as markup."""

    # The vertical scrollbar's gutter is always there (one column), so rows that outgrow the
    # height do not take width the prompt column was fitted to (that made a horizontal scrollbar
    # and cut off the last columns); nothing scrolls sideways: the prompt is clipped to fit.
    DEFAULT_CSS = """
    LogTable { height: 1fr; scrollbar-gutter: stable; scrollbar-size-vertical: 1;
               overflow-x: hidden; }
    """

    def __init__(self, stable: bool = False, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.stable = stable
        self.records: dict[int, Record] = {}
        self.not_drawn: dict[int, str] = {}  # index -> why it was never drawn (see mark_not_drawn)
        self.prompt_width = 30
        self.shown = list(COLUMNS)
        # Rows are built once the table's width is known (the first `fit`): built at a guessed
        # width, every row of a long run was built twice as it opened. Until then `upsert`
        # keeps the record and `show_row` the row the cursor goes to.
        self.fitted = False
        self.cursor_target = 0

    def on_mount(self) -> None:
        for key, label, width in self.shown:
            self.add_column(label, key=key, width=width or self.prompt_width)

    def cells(self, record: Record) -> dict[str, Cell]:
        timings = record.timings
        pending = record.pending
        # Only what fits is made visible (an escape only lengthens it): a caption of the
        # reference captioner is 300 characters long, its column a fraction of that.
        width = self.prompt_width
        yours = record.by_person
        if yours:
            width = max(1, width - len(YOURS_MARK))
        prompt = clip(visible((record.fed_prompt or "")[:width + 1]), width)
        repeat = record.repeat_of
        ended = self.not_drawn.get(record.index) if pending else None
        if ended is not None:
            mark = Cell(NOT_DRAWN.get(ended, "■" + ended[:4]), style="bold magenta")
        elif repeat is not None:
            mark = Cell(f"↺#{repeat}", style="bold yellow")
        elif pending:
            mark = Cell("…", style="dim")
        else:
            mark = Cell("")
        prompt_cell = Cell()
        if yours:
            prompt_cell.append(YOURS_MARK, style=YOURS_STYLE)
        prompt_cell.append(prompt, style="bold yellow" if repeat is not None else "")
        return {
            "index": Cell(str(record.index), justify="right"),
            "caption": (Cell("you", style=YOURS_STYLE, justify="right") if yours
                        else seconds(timings.get("caption"), self.stable)),
            "draw": (Cell("–" if ended else "…", style="dim", justify="right") if pending
                     else seconds(timings.get("generate"), self.stable)),
            "prompt": prompt_cell,
            "sim_prev": similarity(record.sim_prev),
            "sim_start": similarity(record.sim_start),
            "repeat": mark,
        }

    def upsert(self, record: Record) -> bool:
        """Add or update the row of `record`; True when a row was added."""
        index = record.index
        added = index not in self.records
        self.records[index] = record
        if not self.fitted:
            return added  # its row is built by the first fit
        cells = self.cells(record)
        try:
            self.get_row_index(str(index))
        except RowDoesNotExist:
            self.add_row(*(cells[key] for key, _, _ in self.shown), key=str(index))
            return True
        for key, _, _ in self.shown:
            self.update_cell(str(index), key, cells[key])
        return False

    def on_resize(self) -> None:
        # Once the new layout is drawn: the prompt column takes the width that is left.
        self.call_after_refresh(self._fit_width)

    def _fit_width(self) -> None:
        self.fit(self.scrollable_content_region.width or self.size.width)

    def mark_not_drawn(self, index: int, reason: str) -> None:
        """The run ended (`reason`: stopped, error) before iteration `index` was drawn."""
        self.not_drawn[index] = reason
        if index in self.records:
            self.upsert(self.records[index])

    def remove(self, index: int) -> None:
        """Drop the row of iteration `index` (one that never reached the log)."""
        if self.records.pop(index, None) is not None and self.fitted:
            self.remove_row(str(index))

    def show_row(self, index: int) -> None:
        """Move the cursor to iteration `index` (no animation; nothing when already there)."""
        if not self.fitted:
            if 0 <= index < len(self.records):
                self.cursor_target = index
        elif 0 <= index < self.row_count and self.cursor_row != index:
            self.move_cursor(row=index, animate=False)

    def fit(self, width: int) -> None:
        """Give the prompt column what the other columns leave of `width` (rebuilds the rows)."""
        shown = columns_for(width)
        prompt_width = max(10, width - fixed_width(shown))
        if not self.columns:
            return
        if self.fitted and prompt_width == self.prompt_width and shown == self.shown:
            return
        cursor = self.cursor_row if self.fitted else self.cursor_target
        self.fitted = True
        self.prompt_width = prompt_width
        self.shown = shown
        with self.prevent(DataTable.RowHighlighted):
            self.clear(columns=True)
            for key, label, col_width in shown:
                self.add_column(label, key=key, width=col_width or self.prompt_width)
            for index in sorted(self.records):
                cells = self.cells(self.records[index])
                self.add_row(*(cells[key] for key, _, _ in shown), key=str(index))
            if self.row_count:
                self.move_cursor(row=min(cursor, self.row_count - 1), animate=False)
