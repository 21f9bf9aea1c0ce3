"""Replies to terminal queries are never keys.

Before the app starts, `resolve_preview` (tui/widgets/image.py) and textual-image ask the terminal
what it is and can do: XTVERSION (`CSI > 0 q` -> `DCS >| kitty(0.26.5) ST`), the cell size
(`CSI 16 t` -> `CSI 6 ; 13 ; 6 t`), the primary device attributes for Sixel (`CSI c` ->
`CSI ? 62 ; 4 c`), the graphics protocol (`APC G ... ST`). A reply that comes late (a loaded
machine, a slow link) reaches Textual's input parser instead, which gives any sequence it does not
know back as the keys it is made of: `CSI ? 62 ; 4 c` became `[`, `?` (the help), `6`, `2`, `;`,
`4`, `c` (the image path); kitty 0.26.5 once opened `view` with its help showing.

`ReplyFilter` takes such replies out of the input before Textual's parser sees it; `drain_input`
throws away what is already waiting once the probes are done; `RepliesAreNotKeys` gives an
app the driver with the filter.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from textual._xterm_parser import XTermParser

ESC = "\x1b"
# Complete replies: DCS / APC / OSC strings (ended by ST, or BEL for OSC), and the CSI replies
# Textual does not read itself: device attributes (`CSI ? ... c`, `CSI > ... c`), window reports
# (`CSI ... t`, but not Textual's own in-band resize, `CSI 48 ; ... t`), status reports
# (`CSI ... n`), kitty keyboard flags (`CSI ? ... u`), XTVERSION-like `CSI > ... q`.
REPLY = re.compile(
    r"\x1b[P_\]][^\x1b\x07]*(?:\x1b\\|\x07)"
    r"|\x1b\[[?>][0-9;]*c"
    r"|\x1b\[(?!48;)[0-9;]*t"
    r"|\x1b\[[0-9;]*n"
    r"|\x1b\[\?[0-9;]*u"
)
# The unfinished end of a read, held until the rest comes (or for a moment): a lone ESC or an
# unfinished CSI (the Escape key, a key's sequence or a reply cut by the read) briefly; the start
# of a DCS, APC or OSC string (a reply; ESC P, ESC _, ESC ] are no keys of this app) longer.
SHORT = re.compile(r"\x1b(?:\[[0-9;?>]*)?\Z")
LONG = re.compile(r"\x1b[P_\]][^\x1b\x07]*\x1b?\Z")
MAX_HELD = 4096  # a "reply" that never ends is given to Textual as it is
# How long an unfinished end of input waits for the rest: a lone ESC (the Escape key, or a reply
# cut after its first byte) briefly, an unfinished reply longer; then Textual gets it as it is.
HOLD_ESC = 0.05
HOLD_REPLY = 0.5


def strip_replies(data: str) -> tuple[str, str]:
    """(`data` without complete replies, the unfinished reply at its end to hold)."""
    data = REPLY.sub("", data)
    partial = LONG.search(data) or SHORT.search(data)
    if partial is not None and len(partial.group(0)) < MAX_HELD:
        return data[:partial.start()], partial.group(0)
    return data, ""


class ReplyFilter(XTermParser):
    """Textual's input parser, less the terminal's replies to queries (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held = ""
        self._held_since = 0.0

    def feed(self, data: str):  # type: ignore[override]
        if not data:  # the end of input: what was held goes as it is
            yield from self._release()
            yield from super().feed(data)
            return
        held = self._held
        data, self._held = strip_replies(held + data)
        if self._held and not held:
            self._held_since = time.monotonic()
        if data:  # never feed "" here: for Textual's parser that is the end of input
            yield from super().feed(data)

    def tick(self):  # type: ignore[override]
        """Called between reads: what was held too long goes to Textual as it is."""
        if self._held:
            age = time.monotonic() - self._held_since
            if age > (HOLD_REPLY if LONG.match(self._held) else HOLD_ESC):
                yield from self._release()
        yield from super().tick()

    def _release(self):
        held, self._held = self._held, ""
        if held:
            yield from super().feed(held)


def drain_input(wait: float = 0.05) -> int:
    """Throw away what the terminal has sent but nobody has read (late answers to the probes),
    waiting `wait` seconds for the stragglers; the number of bytes dropped."""
    import os
    import select

    stdin = sys.__stdin__
    if stdin is None or not stdin.isatty():
        return 0
    import termios

    dropped = 0
    try:
        fd = stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (AttributeError, OSError, ValueError, termios.error):  # no real terminal: nothing
        return 0
    # Out of line mode while reading: a reply has no newline, so a cooked terminal keeps it in
    # its line buffer (where Textual's raw mode would find it).
    raw = termios.tcgetattr(fd)
    raw[3] &= ~(termios.ICANON | termios.ECHO)
    raw[6][termios.VMIN], raw[6][termios.VTIME] = 0, 0
    try:
        termios.tcsetattr(fd, termios.TCSANOW, raw)
        while select.select([fd], [], [], wait)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            dropped += len(chunk)
            wait = 0.01
    except (OSError, ValueError, termios.error):
        pass
    finally:
        try:
            termios.tcsetattr(fd, termios.TCSANOW, saved)
        except termios.error:
            pass
    return dropped


class RepliesAreNotKeys:
    """Mixed into the apps: their driver reads input through `ReplyFilter` (Textual's own
    driver where that is not the Linux one, or where TEXTUAL_DRIVER names another)."""

    def get_driver_class(self) -> type:
        from textual import constants

        if constants.DRIVER is None and sys.platform != "win32" \
                and ReplyFilterDriver is not None:
            return ReplyFilterDriver
        return super().get_driver_class()  # type: ignore[misc]


def _make_driver() -> type:
    from textual.drivers import linux_driver

    class ReplyFilterDriver(linux_driver.LinuxDriver):
        """Textual 8's LinuxDriver whose input thread parses with `ReplyFilter`: its input
        thread makes its parser from a module global, which names `ReplyFilter` while that thread
        runs (one app a process: truthloop's)."""

        def run_input_thread(self) -> None:
            parser_class = linux_driver.XTermParser
            linux_driver.XTermParser = ReplyFilter  # type: ignore[misc]
            try:
                return super().run_input_thread()
            finally:
                linux_driver.XTermParser = parser_class  # type: ignore[misc]

    return ReplyFilterDriver


try:
    ReplyFilterDriver = _make_driver()
except Exception:  # noqa: BLE001 - no Linux driver here: Textual's own choice
    ReplyFilterDriver = None  # type: ignore[assignment,misc]
