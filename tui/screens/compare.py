"""Two runs side by side: `truthloop compare RUN_A RUN_B`, or `C` on a fork (with its parent).

The comparison itself is the core's (truthloop.compare): the rows aligned (a fork beside its parent
from where it started), where they first differ, same attractor. This screen draws it: the summary
on top, the two logs as one table (A's prompt | B's prompt, one aligned iteration a row), both
images of the selected row, and B's caption diffed against A's. `d` jumps to the first difference.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from truthloop.compare import CompareError, Comparison, Row, compare_runs
from truthloop.diff import caption_diff
from truthloop.record import Record
from truthloop.store import RunDirError
from truthloop.text import clip, visible
from tui.widgets.caption import caption_of, diff_text
from tui.widgets.log_table import YOURS_MARK, YOURS_STYLE
from tui.widgets.image import ImageView


def _caption_cell(record: Record | None, width: int) -> Text:
    if record is None:
        return Text("—", style="dim")
    if record.by_person:  # a person's caption (a human turn), marked as in the run screens
        text = Text(YOURS_MARK, style=YOURS_STYLE, no_wrap=True)
        return text.append(clip(visible(record.fed_prompt), max(1, width - len(YOURS_MARK))))
    return Text(clip(visible(record.fed_prompt), width), no_wrap=True)


def row_mark(comparison: Comparison, row: Row) -> Text:
    first = comparison.first_difference
    if first is not None and row.position == first.position:
        return Text("▶", style="bold yellow")
    if row.a is None or row.b is None:
        return Text(" ")
    if (row.a.caption, row.a.fed_prompt) == (row.b.caption, row.b.fed_prompt):
        return Text("=", style="dim")
    return Text("≠", style="bold red")


class CompareScreen(Screen[None]):
    BINDINGS = [
        Binding("d", "first_difference", "First difference"),
        Binding("escape", "back", "Back"),
    ]
    DEFAULT_CSS = """
    CompareScreen #cmp-summary { height: auto; max-height: 5; padding: 0 1; background: $boost; }
    CompareScreen #cmp-main { height: 1fr; }
    CompareScreen #cmp-log { width: 1fr; }
    CompareScreen #cmp-images { width: 24; padding-left: 1; }
    CompareScreen.-medium #cmp-images { width: 36; }
    CompareScreen #cmp-caption-box { height: auto; max-height: 7; border-top: solid $primary-darken-2;
                                     padding: 0 1; }
    """
    HORIZONTAL_BREAKPOINTS = [(100, "-medium")]

    def __init__(self, run_a: Path, run_b: Path, preview: str = "halfcell",
                 stable: bool = False) -> None:
        super().__init__()
        self.run_a, self.run_b = Path(run_a), Path(run_b)
        self.preview = preview
        self.stable = stable
        self.comparison: Comparison | None = None
        self.error: str | None = None
        self.selected: int | None = None
        try:
            self.comparison = compare_runs(self.run_a, self.run_b)
        except (RunDirError, CompareError) as error:
            self.error = visible(str(error))

    def compose(self) -> ComposeResult:
        yield Static("", id="cmp-summary", markup=False)
        with Horizontal(id="cmp-main"):
            yield DataTable(id="cmp-log", cursor_type="row", zebra_stripes=False)
            with Vertical(id="cmp-images"):
                yield ImageView(self.preview, id="cmp-img-a")
                yield ImageView(self.preview, id="cmp-img-b")
        with VerticalScroll(id="cmp-caption-box", can_focus=False):
            yield Static("", id="cmp-caption", markup=False)
        yield Footer()

    def _run_label(self, path: Path) -> str:
        return visible(path.name if self.stable else str(path))

    def on_mount(self) -> None:
        summary = self.query_one("#cmp-summary", Static)
        if self.comparison is None:
            summary.update(Text(self.error or "cannot compare", style="bold red"))
            return
        c = self.comparison
        text = Text()
        text.append("A ", style="bold")
        text.append(self._run_label(c.a.path))
        text.append("   B ", style="bold")
        text.append(self._run_label(c.b.path))
        if c.relation:
            text.append("\n" + visible(c.relation), style="dim")
        first = c.first_difference
        text.append("\n" + visible(c.difference_line()),
                    style="bold yellow" if first is not None else "green")
        same = c.same_attractor
        text.append("\n" + visible(c.attractor_line()),
                    style="bold green" if same else ("bold red" if same is False else "dim"))
        summary.update(text)
        self.fill_table(self.app.size.width)
        self.query_one(DataTable).focus()
        both = c.both()
        start = first.position if first is not None else (
            both[0].position if both else (c.rows[0].position if c.rows else None))
        if start is not None:
            self.select_position(start)

    def fill_table(self, screen_width: int) -> None:
        """The two prompt columns share what the images leave (each cell has 1 column of padding
        either side; 2 for the scrollbar)."""
        c = self.comparison
        if c is None:
            return
        width = max(8, (screen_width - (37 if screen_width >= 100 else 25) - 17) // 2)
        if width == getattr(self, "_prompt_width", None):
            return
        self._prompt_width = width
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_column("A", key="a", width=4)
        table.add_column("B", key="b", width=4)
        table.add_column("", key="mark", width=1)
        table.add_column("A's prompt", key="pa", width=width)
        table.add_column("B's prompt", key="pb", width=width)
        for row in c.rows:
            table.add_row(
                Text(f"#{row.a.index}" if row.a else ""), Text(f"#{row.b.index}" if row.b else ""),
                row_mark(c, row), _caption_cell(row.a, width), _caption_cell(row.b, width),
                key=str(row.position))
        if self.selected is not None:
            self.select_position(self.selected)

    def on_resize(self, event) -> None:
        if self.comparison is not None and self.is_mounted:
            self.fill_table(event.size.width)

    def select_position(self, position: int) -> None:
        table = self.query_one(DataTable)
        try:
            table.move_cursor(row=table.get_row_index(str(position)))
        except Exception:  # noqa: BLE001 - no such row
            return
        self.show_row(position)

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        try:
            self.show_row(int(event.row_key.value or ""))
        except ValueError:
            pass

    def show_row(self, position: int) -> None:
        c = self.comparison
        row = c.row_at(position) if c else None
        if row is None:
            return
        self.selected = position
        for view_id, record, run, name in (("#cmp-img-a", row.a, c.a, "A"),
                                           ("#cmp-img-b", row.b, c.b, "B")):
            view = self.query_one(view_id, ImageView)
            if record is None:
                view.show(None, f"{name}: —")
                continue
            image = record
            note = ""
            if record.image is None and record.repeat_of is not None:
                image = run.records[record.repeat_of]
                note = f"not drawn: same prompt as #{record.repeat_of}"
            path = run.path / image.image if image.image else None
            view.show(path, f"{name} #{record.index}", note)
        self.query_one("#cmp-caption", Static).update(self.caption_text(row))

    @staticmethod
    def caption_text(row: Row) -> Text:
        text = Text()
        for name, record in (("A", row.a), ("B", row.b)):
            text.append(f"{name} " + (f"#{record.index} " if record else ""), style="bold")
            if record is not None and record.by_person:
                text.append(YOURS_MARK + "yours ", style=YOURS_STYLE)
            caption = caption_of(record)
            text.append(visible(caption) if caption is not None else "—",
                        style="" if record else "dim")
            text.append("\n")
        text.append("diff ", style="bold")
        if row.a is None or row.b is None:
            text.append("only one run has this iteration", style="dim")
            return text
        segments, stats = caption_diff(caption_of(row.a), caption_of(row.b))
        text.append(f"B vs A ({stats.describe()})  ", style="dim")
        text.append_text(diff_text(segments))
        return text

    def action_first_difference(self) -> None:
        c = self.comparison
        if c is None or c.first_difference is None:
            self.notify("no difference while both ran", timeout=3)
            return
        self.select_position(c.first_difference.position)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return len(self.app.screen_stack) > 1 and self.app.screen is self
        return True

    def action_back(self) -> None:
        self.dismiss()
