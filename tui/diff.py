"""Caption diffs: clause level (captions are comma lists), word level inside changed clauses.

Everything is built as Rich `Text` from plain strings (captions are untrusted: never markup), and
changes are marked by shape as well as colour, wdiff style: `[-removed-]` struck through,
`{+added+}` bold and underlined.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

from rich.text import Text

from truthloop.text import visible

REMOVED = "strike red"
ADDED = "bold underline green"
SEPARATOR = ", "

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


def _removed(text: Text, value: str) -> None:
    text.append("[-", REMOVED)
    text.append(visible(value), REMOVED)
    text.append("-]", REMOVED)


def _added(text: Text, value: str) -> None:
    text.append("{+", ADDED)
    text.append(visible(value), ADDED)
    text.append("+}", ADDED)


def word_diff(old: str, new: str) -> Text:
    """One clause against another, word by word (words rejoined with single spaces)."""
    a, b = old.split(), new.split()
    pieces: list[Text] = []
    matcher = SequenceMatcher(a=a, b=b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pieces.append(Text(visible(" ".join(b[j1:j2]))))
            continue
        if i2 > i1:
            piece = Text()
            _removed(piece, " ".join(a[i1:i2]))
            pieces.append(piece)
        if j2 > j1:
            piece = Text()
            _added(piece, " ".join(b[j1:j2]))
            pieces.append(piece)
    return Text(" ").join(pieces)


def caption_diff(old: str | None, new: str | None) -> tuple[Text, DiffStats]:
    """`new` shown against `old`: clauses kept plain, removed/added clauses marked whole, clauses
    replaced one-for-one diffed word by word."""
    old_clauses, new_clauses = clauses(old or ""), clauses(new or "")
    stats = DiffStats()
    pieces: list[Text] = []
    matcher = SequenceMatcher(a=old_clauses, b=new_clauses, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pieces.extend(Text(visible(clause)) for clause in new_clauses[j1:j2])
            continue
        gone, come = old_clauses[i1:i2], new_clauses[j1:j2]
        paired = min(len(gone), len(come)) if tag == "replace" else 0
        for before, after in zip(gone[:paired], come[:paired]):
            ratio = SequenceMatcher(a=before.split(), b=after.split(), autojunk=False).ratio()
            piece = Text()
            if ratio >= 0.34:
                piece = word_diff(before, after)
            else:  # nothing in common worth showing word by word
                _removed(piece, before)
                piece.append(" ")
                _added(piece, after)
            pieces.append(piece)
            stats.changed += 1
        for clause in gone[paired:]:
            piece = Text()
            _removed(piece, clause)
            pieces.append(piece)
            stats.removed += 1
        for clause in come[paired:]:
            piece = Text()
            _added(piece, clause)
            pieces.append(piece)
            stats.added += 1
    return Text(SEPARATOR).join(pieces), stats
