"""Drift: a sparkline of each image's similarity to the start image, over iterations.

The sparkline's axis is said beside it (its top and bottom values) and never spans less than
`MIN_SPAN`: zoomed to the values, a change from 0.991 to 0.989 once filled the whole height, a
cliff. Like drift.png's axis, the range is red when it does not start at 0.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from truthloop.record import Record

MIN_SPAN = 0.1  # the smallest axis the sparkline draws (cosine similarity: -1..1)
BARS = "▁▂▃▄▅▆▇█"
ZOOMED = "red"  # the axis range's colour when it does not start at 0 (drift.png's rule)


def axis(values: list[float]) -> tuple[float, float]:
    """The sparkline's (bottom, top): the values' range, widened to MIN_SPAN (down from the top,
    not below -1) when it is narrower."""
    lo, hi = min(values), max(values)
    if hi - lo < MIN_SPAN:
        lo = max(-1.0, hi - MIN_SPAN)
        hi = max(hi, lo + MIN_SPAN)
    return lo, hi


def columns(values: list[float], width: int) -> list[float]:
    """`values` over `width` columns: each value stretched over its share of the columns when
    there are fewer, the mean of each bucket when there are more."""
    if not values or width < 1:
        return []
    out = []
    for column in range(width):
        start = column * len(values) // width
        end = max(start + 1, (column + 1) * len(values) // width)
        bucket = values[start:end]
        out.append(sum(bucket) / len(bucket))
    return out


def spark_lines(values: list[float], width: int, height: int, lo: float, hi: float,
                style: str = "") -> list[Text]:
    """`height` rows of bars (eighths of a cell) for `values` on the axis lo..hi, top row first."""
    levels = height * 8
    heights = [max(1, min(levels, round((v - lo) / (hi - lo) * (levels - 1)) + 1))
               for v in columns(values, width)]
    lines = []
    for row in range(height):
        floor = (height - 1 - row) * 8  # eighths below this row
        cells = []
        for h in heights:
            filled = h - floor
            cells.append(" " if filled <= 0 else BARS[min(8, filled) - 1])
        lines.append(Text("".join(cells), style=style))
    return lines


class Spark(Widget):
    """The bars, and the axis's top and bottom values at the right (on one row: `lo–hi`)."""

    DEFAULT_CSS = "Spark { height: 1fr; color: $success; }"

    values: list[float] = []

    def set_values(self, values: list[float]) -> None:
        self.values = list(values)
        self.refresh()

    def axis_label(self, lo: float, hi: float) -> list[Text]:
        zoomed = lo > 0.0
        style = ZOOMED if zoomed else "dim"
        if self.size.height <= 1:
            return [Text(f" {lo:.2f}–{hi:.2f}", style=style)]
        labels = [Text(f" {hi:.2f}", style=style)]
        labels += [Text("") for _ in range(self.size.height - 2)]
        labels.append(Text(f" {lo:.2f}", style=style))
        return labels

    def render(self) -> Text:
        width, height = self.size.width, max(1, self.size.height)
        if not self.values or width < 1:
            return Text("")
        lo, hi = axis(self.values)
        labels = self.axis_label(lo, hi)
        gutter = max(len(label.plain) for label in labels)
        if width - gutter < 4:  # too narrow to say the axis: the bars alone
            labels, gutter = [Text("") for _ in range(height)], 0
        bars = spark_lines(self.values, width - gutter, height, lo, hi)
        text = Text(no_wrap=True, overflow="crop")
        for row, (line, label) in enumerate(zip(bars, labels)):
            if row:
                text.append("\n")
            text.append_text(line)
            text.append_text(label)
        return text


class Drift(Vertical):
    DEFAULT_CSS = """
    Drift { height: 4; }
    Drift > Static { height: 1; }
    Drift > Spark { height: 3; }
    """

    numbers: list[float] = []

    def compose(self) -> ComposeResult:
        yield Static("", markup=False, id="drift-label")
        yield Spark(id="drift-spark")

    def show_records(self, records: list[Record]) -> None:
        """The drawn records' similarity to the start image."""
        self.set_values([r.sim_start for r in records])

    def set_values(self, values: list[float | None]) -> None:
        self.numbers = [v for v in values if isinstance(v, (int, float))]
        self._label()
        self.query_one(Spark).set_values(self.numbers)

    def on_resize(self) -> None:
        self._label()

    def _label(self) -> None:
        """`drift ≈start first→last min m`, less what does not fit the width."""
        numbers = self.numbers
        width = self.size.width or 80
        if not numbers:
            label = Text("drift ", style="bold")
            label.append("≈start none yet", style="dim")
            self.query_one("#drift-label", Static).update(label)
            return
        change = f"{numbers[0]:.2f}→{numbers[-1]:.2f}"
        low = f" min {min(numbers):.2f}"
        for name, similar, rest in (("drift ", "≈start ", low), ("drift ", "≈st ", low),
                                    ("drift ", "≈start ", ""), ("drift ", "≈st ", ""),
                                    ("drift ", "", ""), ("", "≈st ", "")):
            if len(name + similar + change + rest) <= width:
                break
        label = Text(name, style="bold")
        label.append(similar, style="dim")
        label.append(change + rest)
        self.query_one("#drift-label", Static).update(label)
