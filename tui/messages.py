"""The engine's events as Textual messages: one small dataclass message per event kind.

The loop runs in a thread worker and knows nothing of Textual; `from_event` turns each of its
events (truthloop/events.py) into the message the run screen handles (`post_message` is
thread-safe). Progress messages (`Loading`, `DenoiseStep`) say they `can_replace` an older one of
their kind: when the UI falls behind, a burst of them collapses into the newest in the screen's
queue (toolong's messages.py), so the status line never lags and never shows a stale step.

Engine messages do not bubble: they are for the screen that runs the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from truthloop import events as ev
from truthloop.record import Record


class EngineMessage(Message, bubble=False):
    """Base of every message that stands for an engine event."""

    def __init_subclass__(cls, bubble: bool | None = False, **kwargs: Any) -> None:
        # Message.__init_subclass__ would make every subclass bubble again.
        super().__init_subclass__(bubble=bubble, **kwargs)


@dataclass
class RunStarted(EngineMessage):
    run_dir: str
    config: dict[str, Any]
    resumed_at: int


@dataclass
class Loading(EngineMessage):
    """Model loading; `done`/`total` when the stage has a count."""

    message: str
    done: int | None = None
    total: int | None = None

    def can_replace(self, message: Message) -> bool:
        # The newer loading line supersedes this one (the queue keeps only the newest of a burst).
        return isinstance(message, Loading)


@dataclass
class Notice(EngineMessage):
    message: str


@dataclass
class Ready(EngineMessage):
    device: str
    load_seconds: float


@dataclass
class IterationStarted(EngineMessage):
    index: int


@dataclass
class CaptionReady(EngineMessage):
    index: int
    caption: str | None
    fed_prompt: str
    compared: str
    repeat_of: int | None
    author: str | None = None

    def pending_record(self) -> Record:
        """The row shown while this iteration's image is being drawn."""
        return Record(index=self.index, caption=self.caption, compared=self.compared,
                      fed_prompt=self.fed_prompt, repeat_of=self.repeat_of, author=self.author,
                      pending=True)


@dataclass
class DenoiseStep(EngineMessage):
    index: int
    step: int
    total: int

    def can_replace(self, message: Message) -> bool:
        # A newer step of the same iteration supersedes this one.
        return isinstance(message, DenoiseStep) and message.index == self.index


@dataclass
class DenoisePreview(EngineMessage):
    """The image being drawn, as its latent in RGB (1/8 of its side)."""

    index: int
    step: int
    width: int
    height: int
    rgb: bytes = field(repr=False)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DenoisePreview)


@dataclass
class IterationDone(EngineMessage):
    record: Record


@dataclass
class Paused(EngineMessage):
    index: int


@dataclass
class Resumed(EngineMessage):
    index: int


@dataclass
class Finished(EngineMessage):
    """The run ended: summary["status"] is converged, max_iters or stopped."""

    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failed(EngineMessage):
    message: str
    summary: dict[str, Any] = field(default_factory=dict)


_BY_EVENT: dict[type[ev.Event], type[EngineMessage]] = {
    ev.RunStarted: RunStarted,
    ev.Loading: Loading,
    ev.Notice: Notice,
    ev.Ready: Ready,
    ev.IterationStarted: IterationStarted,
    ev.CaptionReady: CaptionReady,
    ev.DenoiseStep: DenoiseStep,
    ev.DenoisePreview: DenoisePreview,
    ev.IterationDone: IterationDone,
    ev.Paused: Paused,
    ev.Resumed: Resumed,
    ev.Finished: Finished,
    ev.Failed: Failed,
}


def from_event(event: ev.Event) -> EngineMessage:
    """The message for an engine event: same name, same fields (copied, the event is frozen)."""
    kind = _BY_EVENT[type(event)]
    return kind(**{name: getattr(event, name) for name in event.__dataclass_fields__})
