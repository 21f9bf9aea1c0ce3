"""Messages from the engine thread to the UI thread (post_message is thread-safe)."""

from __future__ import annotations

from textual.message import Message

from truthloop import events as ev


class EngineEvent(Message):
    """One engine event, handed over from the loop's worker thread."""

    def __init__(self, event: ev.Event) -> None:
        super().__init__()
        self.event = event
