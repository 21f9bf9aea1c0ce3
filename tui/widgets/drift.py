"""Drift: a sparkline of each image's similarity to the start image, over iterations.

The sparkline says what it plots beside its axis (`≈start img`, as the label line names the
same series; `≈st img` or `img` where the panel is narrow). Its axis is said there too (its top
and bottom values) and never spans less than
`MIN_SPAN`: zoomed to the values, a change from 0.991 to 0.989 once filled the whole height, a
cliff. Like drift.png's axis, the range is red when it does not start at 0.

Where the run also measured text (records' text_* and cross_*: the compared prompt's CLIP text
embedding, and each caption against the image it describes), the label says all three pairs:
`drift ≈start img 0.97→0.67 txt 0.90→0.40 cap 0.31`, and on a second line (where the panel has
four rows or more; else after it, where it fits) `≈prev img 0.95 txt 0.88 cap 0.29` (img: the
image to the start image / the previous one; txt: the compared prompt to the first / the
previous one; cap: the caption to the start image / to the image it describes), less what does
not fit the width. A run without text measures keeps the one label line it always had.
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


# What the sparkline plots (each drawn image's similarity to the start image), longest first:
# the first that leaves the bars MIN_BARS columns is said.
NAMES = ("≈start img", "≈st img", "img")
MIN_BARS = 8


class Spark(Widget):
    """The bars; at their right what they plot, and the axis's top and bottom values (on one row:
    `img 0.88–0.98`; on two, the name beside the top; on three or more, between them)."""

    DEFAULT_CSS = "Spark { height: 1fr; color: $success; }"

    values: list[float] = []

    def set_values(self, values: list[float]) -> None:
        self.values = list(values)
        self.refresh()

    def axis_label(self, lo: float, hi: float, name: str = NAMES[0]) -> list[Text]:
        zoomed = lo > 0.0
        style = ZOOMED if zoomed else "dim"
        height = max(1, self.size.height)
        if height == 1:
            label = Text(f" {name} ", style="bold")
            label.append(f"{lo:.2f}–{hi:.2f}", style=style)
            return [label]
        if height == 2:
            top = Text(f" {name} ", style="bold")
            top.append(f"{hi:.2f}", style=style)
            return [top, Text(f"{lo:.2f}".rjust(len(top.plain)), style=style)]
        labels = [Text(f" {hi:.2f}", style=style), Text(f" {name}", style="bold")]
        labels += [Text("") for _ in range(height - 3)]
        labels.append(Text(f" {lo:.2f}", style=style))
        return labels

    def render(self) -> Text:
        width, height = self.size.width, max(1, self.size.height)
        if not self.values or width < 1:
            return Text("")
        lo, hi = axis(self.values)
        for name in NAMES:  # the longest name that leaves the bars their room
            labels = self.axis_label(lo, hi, name)
            gutter = max(len(label.plain) for label in labels)
            if width - gutter >= MIN_BARS:
                break
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
    # name -> (first, last, last to-previous) of the text measures: "txt", "cap"
    others: dict[str, tuple[float | None, float | None, float | None]] = {}
    image_prev: float | None = None

    def compose(self) -> ComposeResult:
        yield Static("", markup=False, id="drift-label")
        prev = Static("", markup=False, id="drift-prev")
        prev.display = False
        yield prev
        yield Spark(id="drift-spark")

    def show_records(self, records: list[Record]) -> None:
        """The drawn records' similarity to the start image (the sparkline), and what the label
        says of the text measures, where recorded."""
        others = {}
        for name, start_field, prev_field in (("txt", "text_start", "text_prev"),
                                              ("cap", "cross_start", "cross_prev")):
            measured = [r for r in records if getattr(r, start_field) is not None]
            if measured:
                others[name] = (getattr(measured[0], start_field),
                                getattr(measured[-1], start_field),
                                getattr(measured[-1], prev_field))
        drawn = [r for r in records if r.sim_prev is not None]
        self.set_values([r.sim_start for r in records], others,
                        drawn[-1].sim_prev if drawn else None)

    def set_values(self, values: list[float | None],
                   others: dict[str, tuple[float | None, float | None, float | None]]
                   | None = None, image_prev: float | None = None) -> None:
        self.numbers = [v for v in values if isinstance(v, (int, float))]
        self.others = dict(others or {})
        self.image_prev = image_prev
        self._arrange()
        self._label()
        self.query_one(Spark).set_values(self.numbers)

    def on_resize(self) -> None:
        self._arrange()
        self._label()

    def _prev_line_shown(self) -> bool:
        return bool(self.others) and self.size.height >= 4

    def _arrange(self) -> None:
        """With text measures and four rows or more, the to-previous line takes a row from the
        sparkline; otherwise the panel is laid out as it always was."""
        prev = self.query_one("#drift-prev", Static)
        shown = self._prev_line_shown()
        if prev.display != shown:
            prev.display = shown
        if self.others and self.size.height:
            self.query_one(Spark).styles.height = max(1, self.size.height - 1 - int(shown))

    def _label(self) -> None:
        """`drift ≈start first→last min m`, less what does not fit the width."""
        numbers = self.numbers
        width = self.size.width or 80
        if not numbers:
            label = Text("drift ", style="bold")
            label.append("≈start none yet", style="dim")
            self.query_one("#drift-label", Static).update(label)
            return
        if self.others:
            first, second = self._measures_label(width, self._prev_line_shown())
            self.query_one("#drift-label", Static).update(first)
            if second is not None:
                self.query_one("#drift-prev", Static).update(second)
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

    def _measures_label(self, width: int, two_lines: bool) -> tuple[Text, Text | None]:
        """All three pairs, to the start and to the previous iteration, shortened to fit: the
        label, and the to-previous line (None when it has no row of its own)."""
        numbers, others = self.numbers, self.others

        def number(value: float | None) -> str:
            return "–" if value is None else f"{value:.2f}"

        def span(first: float | None, last: float | None) -> str:
            return f"{number(first)}→{number(last)}"

        image = span(numbers[0], numbers[-1]) if numbers else "–"
        last_image = number(numbers[-1]) if numbers else "–"
        text, cap = others.get("txt"), others.get("cap")
        start_long = [f"img {image}"]
        start_short = [f"img {last_image}"]
        prev = [f"img {number(self.image_prev)}"]
        if text:
            start_long.append(f"txt {span(text[0], text[1])}")
            start_short.append(f"txt {number(text[1])}")
            prev.append(f"txt {number(text[2])}")
        if cap:
            start_long.append(f"cap {number(cap[1])}")
            start_short.append(f"cap {number(cap[1])}")
            prev.append(f"cap {number(cap[2])}")
        choices = [
            ("drift ", "≈start ", " ".join(start_long), " · ≈prev " + " ".join(prev)),
            ("drift ", "≈start ", " ".join(start_long), ""),
            ("drift ", "≈st ", " ".join(start_short), " · ≈prv " + " ".join(prev)),
            ("drift ", "≈st ", " ".join(start_short), ""),
            ("", "≈st ", " ".join(start_short), ""),
            ("", "≈st ", " ".join(start_short[:2]), ""),
        ]
        if two_lines:  # the to-previous values have their own row
            choices = [c for c in choices if not c[3]]
        for name, similar, values, rest in choices:
            if len(name + similar + values + rest) <= width:
                break
        label = Text(name, style="bold")
        label.append(similar, style="dim")
        label.append(values)
        if rest:
            label.append(rest, style="dim")
        if not two_lines:
            return label, None
        second = None
        for similar, values in (("≈prev ", " ".join(prev)), ("≈prv ", " ".join(prev)),
                                ("≈prv ", " ".join(prev[:2]))):
            second = Text(similar, style="dim")
            second.append(values)
            if len(similar + values) <= width:
                break
        return label, second
