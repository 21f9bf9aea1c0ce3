"""Captions and prompts are untrusted text: helpers to show them literally, never as markup."""

from __future__ import annotations

import html
import unicodedata
from typing import Any


def visible(text: str | None) -> str:
    """Control characters (escape sequences, bidi overrides...) as visible `\\xNN`/`\\uNNNN`.

    Newlines and tabs too: one caption is one line on screen. Printable text stays as it is.
    """
    if text is None:
        return ""
    if text.isprintable():  # none of the categories below (the log shows 10,000 of these)
        return text
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Zl", "Zp") and char != " ":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def html_text(text: Any) -> str:
    """Any text for an HTML page: control characters shown as `\\xNN` (as `visible` does for the
    terminal) and then escaped, quotes included. The one rule for every page truthloop writes
    (the run page, the compare page, the atlas): a caption is never markup and never carries a
    raw escape sequence into the file."""
    return html.escape(visible("" if text is None else str(text)), quote=True)


def count(number: int, noun: str, plural: str | None = None) -> str:
    """`1 iteration`, `2 iterations`, `0 trajectories`: a number and its noun, agreeing.

    The one plural rule for every message: `plural` for an irregular noun, else a consonant + y
    becomes -ies and anything else takes an s.
    """
    if number == 1:
        return f"{number} {noun}"
    if plural is None:
        plural = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" \
            else noun + "s"
    return f"{number} {plural}"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def first_line(error: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def duration(seconds: float) -> str:
    """A time to wait or taken, as a person reads it: 5s, 1m05s, 1h02m."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
