"""Caption diffs: clause level (captions are comma lists), word level inside changed clauses.

The result is a list of plain-text segments, each marked "equal", "removed" or "added", so every
face draws it its own way (the TUI as Rich Text styles, the HTML page as <del>/<ins>) from the
same decisions. Changes carry their shape as well as their mark, wdiff style: `[-removed-]`,
`{+added+}`, so the diff still reads with no colour at all. Every text is passed through
`visible()` here: captions are untrusted and never become markup anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal

from truthloop.text import visible

Mark = Literal["equal", "removed", "added"]
SEPARATOR = ", "


@dataclass(frozen=True)
class Segment:
    text: str
    mark: Mark = "equal"


def clauses(caption: str) -> list[str]:
    """The comma clauses of a caption, stripped; empty clauses dropped."""
    return [part.strip() for part in caption.split(",") if part.strip()]


@dataclass
class DiffStats:
    added: int = 0
    removed: int = 0
    changed: int = 0

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def describe(self) -> str:
        if self.same:
            return "no change"
        parts = []
        if self.changed:
            parts.append(f"{self.changed} changed")
        if self.added:
            parts.append(f"{self.added} added")
        if self.removed:
            parts.append(f"{self.removed} removed")
        return ", ".join(parts) + " clause" + ("s" if self.added + self.removed + self.changed > 1
                                               else "")


def _removed(value: str) -> list[Segment]:
    return [Segment("[-", "removed"), Segment(visible(value), "removed"), Segment("-]", "removed")]


def _added(value: str) -> list[Segment]:
    return [Segment("{+", "added"), Segment(visible(value), "added"), Segment("+}", "added")]


def _join(pieces: list[list[Segment]], separator: str) -> list[Segment]:
    out: list[Segment] = []
    for number, piece in enumerate(pieces):
        if number:
            out.append(Segment(separator))
        out.extend(piece)
    return out


def word_diff(old: str, new: str) -> list[Segment]:
    """One clause against another, word by word (words rejoined with single spaces)."""
    a, b = old.split(), new.split()
    pieces: list[list[Segment]] = []
    matcher = SequenceMatcher(a=a, b=b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pieces.append([Segment(visible(" ".join(b[j1:j2])))])
            continue
        if i2 > i1:
            pieces.append(_removed(" ".join(a[i1:i2])))
        if j2 > j1:
            pieces.append(_added(" ".join(b[j1:j2])))
    return _join(pieces, " ")


def caption_diff(old: str | None, new: str | None) -> tuple[list[Segment], DiffStats]:
    """`new` shown against `old`: clauses kept plain, removed/added clauses marked whole, clauses
    replaced one-for-one diffed word by word."""
    old_clauses, new_clauses = clauses(old or ""), clauses(new or "")
    stats = DiffStats()
    pieces: list[list[Segment]] = []
    matcher = SequenceMatcher(a=old_clauses, b=new_clauses, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pieces.extend([Segment(visible(clause))] for clause in new_clauses[j1:j2])
            continue
        gone, come = old_clauses[i1:i2], new_clauses[j1:j2]
        paired = min(len(gone), len(come)) if tag == "replace" else 0
        for before, after in zip(gone[:paired], come[:paired]):
            ratio = SequenceMatcher(a=before.split(), b=after.split(), autojunk=False).ratio()
            if ratio >= 0.34:
                pieces.append(word_diff(before, after))
            else:  # nothing in common worth showing word by word
                pieces.append([*_removed(before), Segment(" "), *_added(after)])
            stats.changed += 1
        for clause in gone[paired:]:
            pieces.append(_removed(clause))
            stats.removed += 1
        for clause in come[paired:]:
            pieces.append(_added(clause))
            stats.added += 1
    return _join(pieces, SEPARATOR), stats
