"""What the engine tells its watchers (the headless printer, the TUI), as small frozen dataclasses.

Events are emitted from the loop's thread; a UI must hand them to its own thread (Textual's
`post_message` does). They carry plain data only, never model objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from truthloop.record import Record


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    config: dict[str, Any]
    resumed_at: int  # index of the first iteration this process will run (0 for a new run)


@dataclass(frozen=True)
class Loading(Event):
    """Model loading and label precompute; `done`/`total` when the stage has a count."""

    message: str
    done: int | None = None
    total: int | None = None


# How a Notice words the --device auto fallback to the CPU (the TUI's status line keeps it).
DEVICE_FALLBACK = "--device auto: running on the CPU"


@dataclass(frozen=True)
class Notice(Event):
    """One line the user should read while models load (e.g. a withdrawn model id swapped for its
    mirror); the run goes on."""

    message: str


@dataclass(frozen=True)
class Ready(Event):
    device: str
    load_seconds: float


@dataclass(frozen=True)
class IterationStarted(Event):
    index: int


@dataclass(frozen=True)
class CaptionReady(Event):
    index: int
    caption: str | None  # None for a --prompt start's first iteration
    fed_prompt: str
    compared: str
    repeat_of: int | None
    author: str | None = None  # record.PERSON: a person wrote this caption (a human turn)


@dataclass(frozen=True)
class DenoiseStep(Event):
    index: int
    step: int
    total: int


@dataclass(frozen=True)
class DenoisePreview(Event):
    """The image being drawn, as its current latent mapped to RGB (1/8 of the image's side);
    emitted only while a watcher asked for it (`TruthLoop.live_preview`)."""

    index: int
    step: int
    width: int
    height: int
    rgb: bytes = field(repr=False)


@dataclass(frozen=True)
class IterationDone(Event):
    """An iteration is on disk (its log line written): `record` is a copy of it."""

    record: Record


@dataclass(frozen=True)
class Paused(Event):
    index: int


@dataclass(frozen=True)
class Resumed(Event):
    index: int


@dataclass(frozen=True)
class Finished(Event):
    """The run ended: summary["status"] is converged, max_iters or stopped."""

    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed(Event):
    message: str
    summary: dict[str, Any] = field(default_factory=dict)
