"""What a run screen shows, as plain data: the records so far, which one is selected, the diff base.

No Textual here: the run screens keep one `History` and ask it which record, image and base to
show; the widgets draw what they are given.
"""

from __future__ import annotations

from pathlib import Path

from truthloop.record import Record
from truthloop.store import INPUT_FILE


class History:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.records: list[Record] = []
        self.selected: int | None = None  # None: follow the newest iteration
        self.base: str | int = "previous"  # "previous" | "start" | a pinned iteration index
        # The run ended (stopped, failed) while its newest iteration was drawn: that record stays
        # pending (never in log.jsonl, never `done`), shown as not drawn, for this reason.
        self.not_drawn: str | None = None

    def add(self, record: Record) -> bool:
        """Add or replace the record at its index; False for a gap (not this run's sequence)."""
        index = record.index
        if index < 0:
            return False
        if index < len(self.records):
            self.records[index] = record
        elif index == len(self.records):
            self.records.append(record)
        else:
            return False
        return True

    def drop_pending(self) -> Record | None:
        """Remove the newest record if it is still being drawn (a run stopped mid-iteration: that
        iteration never reached log.jsonl); returns it."""
        if self.records and self.records[-1].pending:
            return self.records.pop()
        return None

    def end_pending(self, reason: str) -> Record | None:
        """The run ended (`reason`: its final state) while its newest iteration was still being
        drawn: that record stays, marked not drawn, so its caption is not lost; returns it."""
        if self.records and self.records[-1].pending:
            self.not_drawn = reason
            return self.records[-1]
        return None

    @property
    def not_drawn_index(self) -> int | None:
        """The iteration the run ended in before it was drawn (see `end_pending`)."""
        if self.not_drawn is not None and self.records and self.records[-1].pending:
            return self.newest
        return None

    @property
    def done(self) -> list[Record]:
        return [r for r in self.records if not r.pending]

    @property
    def newest(self) -> int:
        return len(self.records) - 1

    @property
    def current_index(self) -> int | None:
        if not self.records:
            return None
        if self.selected is None:
            return self.newest
        return min(self.selected, self.newest)

    def select(self, index: int) -> bool:
        """Select iteration `index` (the newest one means: follow); True when the view changes."""
        selected = None if index >= self.newest else index
        if selected != self.selected or selected is None:
            self.selected = selected
            return True
        return False

    def image_of(self, index: int) -> tuple[Path | None, str]:
        """The image path shown for iteration `index` (-1: the start image), and a note about it."""
        if index < 0:
            path = self.run_dir / INPUT_FILE
            return (path if path.exists() else None), ""
        record = self.records[index]
        if record.image:
            return self.run_dir / record.image, ""
        repeat = record.repeat_of
        if repeat is not None and 0 <= repeat < len(self.records) and self.records[repeat].image:
            return self.run_dir / self.records[repeat].image, f"not drawn: same prompt as #{repeat}"
        if record.pending and index == self.not_drawn_index:
            return None, f"{self.not_drawn}, not drawn"
        return None, "drawing…" if record.pending else "no image"

    def base_for(self, index: int) -> tuple[Record | None, str]:
        """The record the caption of `index` is diffed against, and its label."""
        if self.base == "start":
            return self.records[0], "start #0"
        if isinstance(self.base, int) and self.base < len(self.records):
            return self.records[self.base], f"#{self.base} (pinned)"
        if index == 0:
            return None, "previous"
        return self.records[index - 1], f"previous #{index - 1}"

    def sec_per_iter(self) -> float | None:
        """Mean wall time of the last five drawn iterations."""
        totals = [r.timings["total"] for r in self.done[-5:]
                  if r.image and isinstance(r.timings.get("total"), (int, float))]
        return sum(totals) / len(totals) if totals else None
