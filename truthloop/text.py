"""Captions and prompts are untrusted text: helpers to show them literally, never as markup."""

from __future__ import annotations

import unicodedata


def visible(text: str | None) -> str:
    """Control characters (escape sequences, bidi overrides...) as visible `\\xNN`/`\\uNNNN`.

    Newlines and tabs too: one caption is one line on screen. Printable text stays as it is.
    """
    if text is None:
        return ""
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Zl", "Zp") and char != " ":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def first_line(error: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
