"""Two runs side by side: their iterations aligned, where they first differ, whether they end in the
same attractor. What `truthloop compare`, its TUI screen and its HTML page all show.

Alignment: unrelated runs are aligned by iteration number. A fork is aligned with its parent on the
parent's timeline: the fork's iteration j captions the image the parent captioned at iteration
K+1+j, so it sits beside the parent's K+1+j (two forks of one parent: both on the parent's). A
person's fork (their caption in place of the parent's caption of K) has its iteration j beside
the parent's K+j: its #0 beside the caption it answers (`fork.Relation.beside`).

Two aligned iterations differ when their captions or fed prompts differ ("caption"), or, with the
same text, when their images differ pixel for pixel ("image": e.g. another seed draws the same
prompt differently). Same attractor: both runs found a cycle and the cycles have the same compared
prompts, whatever member each run entered by (`record.canonical_cycle`, as the atlas keys them).

Core only: reads the run directories through the store (Pillow only to compare pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from truthloop.errors import OneLineError
from truthloop.fork import MODEL_FIELDS, Relation, parent_of, same_run
from truthloop.record import Record, canonical_cycle, cycle_prompts, find_cycle
from truthloop.store import RunView, read_run
from truthloop.text import count


class CompareError(OneLineError):
    """Two runs that cannot be compared; one line."""


@dataclass
class Row:
    """One aligned position: `a` / `b` the records there (None where that run has none)."""

    position: int
    a: Record | None
    b: Record | None


@dataclass
class Difference:
    position: int
    a: Record
    b: Record
    kind: str  # "caption" | "image"

    def describe(self) -> str:
        what = "captions" if self.kind == "caption" else "images (same caption)"
        return f"first differ at A #{self.a.index} / B #{self.b.index}: {what}"


@dataclass
class Comparison:
    a: RunView
    b: RunView
    offset_a: int  # position of each run's iteration 0 on the shared timeline
    offset_b: int
    relation: str  # how the two are related, one line ("" when they are not)
    rows: list[Row] = field(default_factory=list)
    first_difference: Difference | None = None

    @property
    def cycle_a(self) -> list[str] | None:
        return cycle_prompts(self.a.records)

    @property
    def cycle_b(self) -> list[str] | None:
        return cycle_prompts(self.b.records)

    @property
    def same_attractor(self) -> bool | None:
        """True / False when both found a cycle; None when one of them has not (yet)."""
        a, b = self.cycle_a, self.cycle_b
        if a is None or b is None:
            return None
        return canonical_cycle(a) == canonical_cycle(b)

    def row_at(self, position: int) -> Row | None:
        for row in self.rows:
            if row.position == position:
                return row
        return None

    def both(self) -> list[Row]:
        return [row for row in self.rows if row.a is not None and row.b is not None]

    def difference_line(self) -> str:
        if self.first_difference is not None:
            return self.first_difference.describe()
        shared = self.both()
        if not shared:
            return "no iterations side by side"
        last = shared[-1]
        return (f"the same through A #{last.a.index} / B #{last.b.index} "
                f"({count(len(shared), 'iteration')} side by side)")

    def attractor_line(self) -> str:
        same = self.same_attractor
        if same is None:
            missing = [name for name, cycle in (("A", self.cycle_a), ("B", self.cycle_b))
                       if cycle is None]
            return f"attractor: {' and '.join(missing)} found no cycle (yet)"
        kinds = []
        for records in (self.a.records, self.b.records):
            cycle = find_cycle(records)
            kinds.append(cycle.describe() if cycle else "")
        if same:
            return f"same attractor ({kinds[0]})"
        return f"different attractors (A: {kinds[0]}, B: {kinds[1]})"

    def lines(self) -> list[str]:
        """The summary a person reads first (plain text; captions are not in it)."""
        lines = [f"A {self.a.path}", f"B {self.b.path}"]
        if self.relation:
            lines.append(self.relation)
        lines += [self.difference_line(), self.attractor_line()]
        return lines


def load_pair(path_a: Path, path_b: Path) -> tuple[RunView, RunView]:
    """Both runs read (RunDirError, one line, for one that is not a run)."""
    return read_run(Path(path_a)), read_run(Path(path_b))


def compare_runs(path_a: Path | RunView, path_b: Path | RunView) -> Comparison:
    """Compare two run directories; raises RunDirError / CompareError with one line."""
    a = path_a if isinstance(path_a, RunView) else read_run(Path(path_a))
    b = path_b if isinstance(path_b, RunView) else read_run(Path(path_b))
    offset_a, offset_b, relation = _alignment(a, b)
    if not relation:
        _check_models(a, b)
    comparison = Comparison(a=a, b=b, offset_a=offset_a, offset_b=offset_b, relation=relation)
    comparison.rows = _rows(a.records, b.records, offset_a, offset_b)
    comparison.first_difference = _first_difference(comparison)
    return comparison


def _alignment(a: RunView, b: RunView) -> tuple[int, int, str]:
    pa, pb = parent_of(a), parent_of(b)
    if pb is not None and same_run(pb.path, a.path):
        return 0, pb.beside, (f"B is a fork of A at #{pb.at}{_yours(pb)}: B #0 sits beside "
                              f"A #{pb.beside}")
    if pa is not None and same_run(pa.path, b.path):
        return pa.beside, 0, (f"A is a fork of B at #{pa.at}{_yours(pa)}: A #0 sits beside "
                              f"B #{pa.beside}")
    if pa is not None and pb is not None and same_run(pa.path, pb.path):
        base = min(pa.beside, pb.beside)
        return (pa.beside - base, pb.beside - base,
                f"both are forks of {pa.path.name} (A at #{pa.at}{_yours(pa)}, B at "
                f"#{pb.at}{_yours(pb)}), aligned on it")
    return 0, 0, ""


def _yours(relation: Relation) -> str:
    """What a person's fork adds to its relation line."""
    return ", a person's prompt in place of its caption" if relation.by_person else ""


def _check_models(a: RunView, b: RunView) -> None:
    models_a, models_b = a.config.get("models", {}), b.config.get("models", {})
    for name in MODEL_FIELDS:
        if models_a.get(name) != models_b.get(name):
            raise CompareError(
                f"{a.path} and {b.path} were made with different models ({name.replace('_', '-')}"
                f" {models_a.get(name)} vs {models_b.get(name)}); compare runs of the same models,"
                f" or a run with its own fork")


def _rows(records_a: list[Record], records_b: list[Record], offset_a: int,
          offset_b: int) -> list[Row]:
    end = max(offset_a + len(records_a), offset_b + len(records_b))
    rows = []
    for position in range(min(offset_a, offset_b), end):
        ia, ib = position - offset_a, position - offset_b
        ra = records_a[ia] if 0 <= ia < len(records_a) else None
        rb = records_b[ib] if 0 <= ib < len(records_b) else None
        if ra is not None or rb is not None:
            rows.append(Row(position, ra, rb))
    return rows


def _first_difference(comparison: Comparison) -> Difference | None:
    for row in comparison.both():
        a, b = row.a, row.b
        if (a.caption, a.fed_prompt) != (b.caption, b.fed_prompt):
            return Difference(row.position, a, b, "caption")
        if a.image and b.image and not same_image(comparison.a.path / a.image,
                                                   comparison.b.path / b.image):
            return Difference(row.position, a, b, "image")
    return None


def same_image(path_a: Path, path_b: Path) -> bool:
    """Pixel for pixel (the same bytes first: a run writes deterministic PNGs)."""
    try:
        if path_a.read_bytes() == path_b.read_bytes():
            return True
    except OSError:
        return False
    from PIL import Image

    try:
        with Image.open(path_a) as image_a, Image.open(path_b) as image_b:
            return (image_a.size == image_b.size
                    and image_a.convert("RGB").tobytes() == image_b.convert("RGB").tobytes())
    except Exception:  # noqa: BLE001 - an unreadable image is not the same image
        return False
