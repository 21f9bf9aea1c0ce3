"""Drift: a sparkline of each image's similarity to the start image, over iterations."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from truthloop.record import Record


class Drift(Vertical):
    DEFAULT_CSS = """
    Drift { height: 4; }
    Drift > Static { height: 1; }
    Drift > Sparkline { height: 3; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", markup=False, id="drift-label")
        yield Sparkline([], id="drift-spark")

    def show_records(self, records: list[Record]) -> None:
        """The drawn records' similarity to the start image."""
        self.set_values([r.sim_start for r in records])

    def set_values(self, values: list[float | None]) -> None:
        numbers = [v for v in values if isinstance(v, (int, float))]
        label = Text("drift ", style="bold")
        label.append("≈start", style="dim")
        if numbers:
            label.append(f" {numbers[0]:.2f}→{numbers[-1]:.2f} min {min(numbers):.2f}")
        else:
            label.append(" none yet", style="dim")
        self.query_one("#drift-label", Static).update(label)
        self.query_one(Sparkline).data = numbers
