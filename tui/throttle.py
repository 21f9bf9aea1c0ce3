"""Drawing at a rate a person can see: the newest of a stream of engine messages, at most `hz`
times a second.

On a GPU the engine reports a denoising step every ~25 ms and a latent preview every ~125 ms;
each one drawn costs the app's process a re-render (a half-block preview, ~25 ms of Python at
60x36 cells). A person cannot read a step counter faster than ~10 Hz nor see a preview change
faster than a few frames a second, so the screen draws the newest message at that rate and the
ones in between are dropped (toolong's and Textual's own `can_replace` only collapse what is
already queued).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.timer import Timer
from textual.widget import Widget


class Latest:
    def __init__(self, owner: Widget, hz: float, draw: Callable[[Any], None]) -> None:
        self.owner = owner
        self.period = 1.0 / hz
        self.draw = draw
        self.pending: Any = None
        self.last = float("-inf")
        self.timer: Timer | None = None

    def offer(self, message: Any) -> None:
        """Draw `message` now if the last draw is a period old, else when it is (unless a newer
        one comes first)."""
        self.pending = message
        if self.timer is not None:
            return  # the newest is drawn when it fires
        delay = self.last + self.period - time.monotonic()
        if delay <= 0:
            self._flush()
        else:
            self.timer = self.owner.set_timer(delay, self._flush, name="throttle")

    def drop(self) -> None:
        """Forget a message not drawn yet (what it showed is over: the image is there)."""
        self.pending = None

    def _flush(self) -> None:
        self.timer = None
        message, self.pending = self.pending, None
        if message is not None:
            self.last = time.monotonic()
            self.draw(message)
