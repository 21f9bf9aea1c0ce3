"""The engine: caption -> compare -> draw, until the compared prompt repeats.

It knows nothing of torch or Textual: models come in as `Backends` (real ones from
`backends.load_backends`, fakes in tests) and everything it does goes out as events and into the
run directory (`store.RunWriter`). A UI drives it through `LoopControl` from another thread.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from truthloop import __version__
from truthloop import events as ev
from truthloop.config import (
    RESUMABLE, ConfigError, RunConfig, apply_resume_options, resumable_options,
)
from truthloop.errors import OneLineError
from truthloop.text import first_line
from truthloop.record import Cycle, Record, find_cycle, result_fields
from truthloop.store import FORMAT_VERSION, RunDirError, RunWriter, read_run, resume_problem

EventSink = Callable[[ev.Event], None]


class StopRequested(Exception):
    """Raised inside the loop (also from the denoising callback) when a stop was asked for."""


class Captioner(Protocol):
    def caption(self, image: Any) -> str: ...


class Painter(Protocol):
    def paint(self, prompt: str, on_step: Callable[[int, int], None]) -> Any: ...
    def rng_state(self) -> str | None: ...
    def set_rng_state(self, state: str | None) -> None: ...


class Embedder(Protocol):
    def features(self, image: Any) -> Any: ...  # a unit-length vector (sequence of floats)


@dataclass
class Backends:
    captioner: Captioner
    painter: Painter
    embedder: Embedder | None = None
    device: str = "cpu"
    # What a reader needs to know about how images and captions were made (paths, dtypes...).
    details: dict[str, Any] | None = None
    # Where each model really came from (repository and revision, or a local path), recorded in
    # summary.json as "models_loaded".
    loaded: dict[str, Any] | None = None


BackendFactory = Callable[[RunConfig, EventSink], Backends]


class LoopControl:
    """Pause / step / stop, safe to call from any thread.

    The loop calls `checkpoint()` between stages and after every denoising step: it blocks there
    while paused and raises StopRequested once a stop was asked for. `step()` lets exactly one more
    iteration finish, then pauses again.
    """

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pause_after_iteration = False

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def pause(self) -> None:
        with self._lock:
            self._pause_after_iteration = False
            if not self._stop.is_set():
                self._running.clear()

    def resume(self) -> None:
        with self._lock:
            self._pause_after_iteration = False
            self._running.set()

    def step(self) -> None:
        with self._lock:
            self._pause_after_iteration = True
            self._running.set()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            self._running.set()  # wake a paused loop so it can see the stop

    def checkpoint(self, on_pause: Callable[[], None] | None = None,
                   on_resume: Callable[[], None] | None = None) -> None:
        if self._stop.is_set():
            raise StopRequested
        if not self._running.is_set():
            if on_pause:
                on_pause()
            self._running.wait()
            if self._stop.is_set():
                raise StopRequested
            if on_resume:
                on_resume()

    def end_of_iteration(self) -> None:
        with self._lock:
            if self._pause_after_iteration:
                self._pause_after_iteration = False
                self._running.clear()


def cut_prompt(caption: str, clauses: int) -> str:
    """The first `clauses` comma clauses, exactly as written (the article's `split(',')[0]`)."""
    if clauses <= 0:
        return caption
    return ",".join(caption.split(",")[:clauses])


def compared_and_fed(caption: str, clauses: int, feed: str) -> tuple[str, str]:
    compared = cut_prompt(caption, clauses)
    return compared, (compared if feed == "cut" else caption)


def cosine(a: Any, b: Any) -> float | None:
    if a is None or b is None:
        return None
    value = float(sum(x * y for x, y in zip(a, b)))
    return value if math.isfinite(value) else None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"truthloop": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "open_clip_torch", "clip-interrogator",
                 "Pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class TruthLoop:
    """One run of the loop, new or resumed. `run()` blocks; call it from a worker thread in a UI."""

    def __init__(self, config: RunConfig, run_dir: Path, backend_factory: BackendFactory,
                 on_event: EventSink = lambda event: None, control: LoopControl | None = None,
                 input_image: Any | None = None, resume: bool = False,
                 run_info: dict[str, Any] | None = None):
        """`run_info`: more top-level fields for a new run's run.json (a fork's "parent")."""
        self.config = config
        self.run_info = dict(run_info or {})
        # A watcher that shows the image while it denoises (the TUI) sets this; the painter then
        # hands over its latent as RGB every few steps (ev.DenoisePreview). Off: it costs nothing.
        self.live_preview = False
        self.run_dir = Path(run_dir)
        self.backend_factory = backend_factory
        self.on_event = on_event
        self.control = control or LoopControl()
        self.input_image = input_image
        self.resume = resume
        self.records: list[Record] = []
        self.summary: dict[str, Any] = {}
        self._writer: RunWriter | None = None
        self._started = time.time()
        # Time spent paused (LoopControl), so an iteration's timings are the work's, not how long
        # someone kept it paused: the stage clock (`_clock`) stops while paused.
        self._paused_s = 0.0
        self._pause_began: float | None = None
        # The RESUMABLE options this process changed (resume), and its entry in summary.json's
        # "segments": one per process that ran the run (started, options, device, models...).
        self.changed_options: dict[str, Any] = {}
        self._segment: dict[str, Any] = {}
        # Set once run() has returned or raised: a UI that quits waits on it, so the summary
        # ("stopped") is on disk before the process exits.
        self.done = threading.Event()

    @classmethod
    def for_resume(cls, run_dir: Path, backend_factory: BackendFactory,
                   on_event: EventSink = lambda event: None, control: LoopControl | None = None,
                   max_iters: int | None = None,
                   options: dict[str, Any] | None = None) -> "TruthLoop":
        """Continue a run with its run.json config, as its last segment ran it (device, low VRAM,
        CUDA graphs, iteration limit), with `options` (config.RESUMABLE names; None = keep)
        changed. Raises ConfigError for an option resume cannot change (--compile)."""
        view = read_run(run_dir)
        try:
            config = RunConfig.from_dict(view.config)
        except (ConfigError, TypeError) as error:
            raise RunDirError(f"{Path(run_dir) / 'run.json'} has an invalid config: {error}") from None
        segments = (view.summary or {}).get("segments")
        last = segments[-1].get("options") if isinstance(segments, list) and segments \
            and isinstance(segments[-1], dict) else None
        if isinstance(last, dict):
            try:
                apply_resume_options(config, {name: last.get(name) for name in RESUMABLE})
            except (ConfigError, TypeError):
                config = RunConfig.from_dict(view.config)  # an edited summary: run.json's own
        asked = dict(options or {})
        if max_iters is not None:
            asked["max_iters"] = max_iters
        changed = apply_resume_options(config, asked)
        loop = cls(config, run_dir, backend_factory, on_event, control, resume=True)
        loop.changed_options = changed
        return loop

    @property
    def opened(self) -> bool:
        """Whether run() opened the run directory (a UI that quits then waits for `done`)."""
        return self._writer is not None

    # -- events ------------------------------------------------------------------------------
    def emit(self, event: ev.Event) -> None:
        self.on_event(event)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run to convergence, max-iters, stop or error; returns the summary written to disk.

        Setup errors (bad run directory, lock held) raise RunDirError before anything is written.
        Errors after that are reported as a Failed event and a summary with status "error", and
        re-raised as LoopFailed with a one-line message.
        """
        try:
            self._open()
        except OSError as error:  # e.g. disk full or read-only before the first iteration
            if self._writer:
                self._writer.close()
            self.done.set()
            raise RunDirError(describe_error(error)) from None
        try:
            return self._run_opened()
        finally:
            if self._writer:
                self._writer.close()
            self.done.set()

    def _open(self) -> None:
        if self.resume:
            view = read_run(self.run_dir)
            self._writer = RunWriter.reopen(self.run_dir)
            self.records = list(view.records)
            self.summary = dict(view.summary or {})
            problem = resume_problem(view)
            if problem:
                self._writer.close()
                raise RunDirError(problem)
            if self.input_image is None and view.input_path is not None:
                self.input_image = _read_rgb(view.input_path)
        else:
            info = {
                "format": FORMAT_VERSION,
                "config": self.config.to_dict(),
                "versions": package_versions(),
                "machine": {"host": platform.node(), "platform": platform.platform()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **{k: v for k, v in self.run_info.items() if k not in ("format", "config")},
            }
            self._writer = RunWriter.create(self.run_dir, info, self.input_image)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.summary.update({"status": "running", "pid": os.getpid()})
        self.summary.setdefault("started", now)
        segments = self.summary.get("segments")
        if not isinstance(segments, list):
            segments = []
            if self.records:  # a run written before segments were recorded: what is known
                segments.append({"started": self.summary.get("started"), "first_iteration": 0,
                                 "device": self.summary.get("device"),
                                 "models_loaded": self.summary.get("models_loaded")})
        self._segment = {"started": now, "first_iteration": len(self.records),
                         "options": resumable_options(self.config),
                         "changed": dict(self.changed_options), "pid": os.getpid()}
        segments.append(self._segment)
        self.summary["segments"] = segments
        self._writer.write_summary(self.summary)

    def _run_opened(self) -> dict[str, Any]:
        self.emit(ev.RunStarted(str(self.run_dir), self.config.to_dict(), len(self.records)))
        try:
            done = self._already_converged()
            if done is not None:
                return self._finish("converged", done)
            load_start = time.perf_counter()
            self._checkpoint(len(self.records))
            backends = self.backend_factory(self.config, self.emit)
            self.summary["device"] = self._segment["device"] = backends.device
            if backends.loaded is not None:
                self.summary["models_loaded"] = self._segment["models_loaded"] = backends.loaded
            self.emit(ev.Ready(backends.device, time.perf_counter() - load_start))
            return self._iterate(backends)
        except StopRequested:
            return self._finish("stopped")
        except KeyboardInterrupt:
            return self._finish("stopped")
        except Exception as error:  # noqa: BLE001 - every failure must end as a readable summary
            message = describe_error(error, self.config)
            self._end_segment("error")
            if self._writer:
                self._writer.write_error(traceback.format_exc())
            self.summary.update(result_fields(self.records))
            self.summary.update({"status": "error", "message": message,
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            try:
                self._writer.write_summary(self.summary)
            except OSError:
                pass  # the disk may be the problem; the log written so far stays as it was
            self.emit(ev.Failed(message, dict(self.summary)))
            raise LoopFailed(message) from error

    def _already_converged(self) -> Record | None:
        if self.records and self.records[-1].image is None \
                and self.records[-1].repeat_of is not None:
            return self.records[-1]
        return None

    def _iterate(self, backends: Backends) -> dict[str, Any]:
        cfg = self.config
        keys: dict[str, int] = {}
        for record in self.records:
            keys.setdefault(record.compared, record.index)
        cycle = find_cycle(self.records)
        confirm_until = (cycle.found_at + cfg.loop.confirm_iters) if cycle else None

        embed = backends.embedder.features if backends.embedder else (lambda image: None)
        current = self.input_image
        if self.records:
            current = _read_rgb(self.run_dir / self.records[-1].image)
            backends.painter.set_rng_state(self.records[-1].rng_state)
        start_features = embed(self.input_image) if self.input_image is not None else None
        if start_features is None and self.records and backends.embedder:
            start_features = embed(_read_rgb(self.run_dir / self.records[0].image))
        previous_features = embed(current) if current is not None else None

        index = len(self.records)
        while True:
            self._checkpoint(index)
            if index >= cfg.loop.max_iters:
                return self._finish("max_iters")
            self.emit(ev.IterationStarted(index))
            paused_before = self._paused_s
            t_start = self._clock()
            if index == 0 and cfg.start_prompt is not None:
                caption, compared, fed = None, cfg.start_prompt, cfg.start_prompt
            else:
                caption = backends.captioner.caption(current)
                compared, fed = compared_and_fed(caption, cfg.loop.clauses, cfg.loop.feed)
            t_caption = self._clock()
            repeat_of = keys.get(compared)
            self.emit(ev.CaptionReady(index, caption, fed, compared, repeat_of))
            if repeat_of is not None and cycle is None:
                cycle = Cycle(repeat_of, index - repeat_of)
                confirm_until = index + cfg.loop.confirm_iters
            record = Record(index=index, caption=caption, compared=compared, fed_prompt=fed,
                            repeat_of=repeat_of, seed=cfg.generate.seed)
            if cycle is not None and index >= confirm_until:
                record.timings = {"caption": round(t_caption - t_start, 4),
                                  "total": round(t_caption - t_start, 4)}
                self._writer.append_record(record)
                self.records.append(record)
                self.emit(ev.IterationDone(replace(record)))
                return self._finish("converged", record)

            self._checkpoint(index)

            def on_step(step: int, total: int, index: int = index) -> None:
                self.emit(ev.DenoiseStep(index, step, total))
                self._checkpoint(index)

            def on_preview(step: int, width: int, height: int, rgb: bytes,
                           index: int = index) -> None:
                if self.live_preview:
                    self.emit(ev.DenoisePreview(index, step, width, height, rgb))

            if hasattr(backends.painter, "preview"):
                backends.painter.preview = on_preview if self.live_preview else None

            image = backends.painter.paint(fed, on_step)
            t_generate = self._clock()
            features = embed(image)
            if start_features is None:
                start_features = features
            sim_prev = cosine(features, previous_features)
            sim_start = cosine(features, start_features)
            t_similarity = self._clock()
            record.image = self._writer.write_image(index, image)
            record.rng_state = backends.painter.rng_state()
            record.sim_prev = _round(sim_prev)
            record.sim_start = _round(sim_start)
            t_end = self._clock()
            record.timings = {
                "caption": round(t_caption - t_start, 4),
                "generate": round(t_generate - t_caption, 4),
                "similarity": round(t_similarity - t_generate, 4),
                "save": round(t_end - t_similarity, 4),
                "total": round(t_end - t_start, 4),
            }
            if self._paused_s > paused_before:  # left out of the stages above, said here
                record.timings["paused"] = round(self._paused_s - paused_before, 4)
            self._writer.append_record(record)
            self.records.append(record)
            keys.setdefault(compared, index)
            current, previous_features = image, features
            self.emit(ev.IterationDone(replace(record)))
            self.control.end_of_iteration()
            index += 1

    def _checkpoint(self, index: int) -> None:
        def paused() -> None:
            self._pause_began = time.perf_counter()
            self.emit(ev.Paused(index))

        def resumed() -> None:
            if self._pause_began is not None:
                self._paused_s += time.perf_counter() - self._pause_began
                self._pause_began = None
            self.emit(ev.Resumed(index))

        self.control.checkpoint(on_pause=paused, on_resume=resumed)

    def _clock(self) -> float:
        """perf_counter minus the time spent paused: stage timings leave pauses out."""
        return time.perf_counter() - self._paused_s

    def _finish(self, status: str, last: Record | None = None) -> dict[str, Any]:
        self.summary.update(result_fields(self.records))
        self.summary.update({
            "status": status,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "elapsed_this_process": round(time.time() - self._started, 3),
        })
        self.summary.pop("message", None)
        self._end_segment(status)
        self._writer.write_summary(self.summary)
        self.emit(ev.Finished(dict(self.summary)))
        return dict(self.summary)

    def _end_segment(self, status: str) -> None:
        self._segment.update({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": status,
                              "records": len(self.records)})


OUT_OF_MEMORY = ("the GPU ran out of memory; try --low-vram, a smaller --width/--height, "
                 "or free the GPU")


class LoopFailed(Exception):
    """The run ended in an error; str() is the one-line message also written to summary.json."""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _read_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def describe_error(error: BaseException, config: RunConfig | None = None) -> str:
    """One line a user can act on, for the errors a long run on a shared box meets."""
    name = type(error).__name__
    first = first_line(error)
    if name == "OutOfMemoryError" or "out of memory" in first.lower():
        if config is not None and config.generate.compile:  # --low-vram cannot go with it
            return ("the GPU ran out of memory; free the GPU and resume, or start a new run with "
                    "a smaller --width/--height (--low-vram cannot go with this run's --compile)")
        if config is not None and config.models.low_vram:
            return ("the GPU ran out of memory even with --low-vram; free the GPU and resume, or "
                    "start a new run with a smaller --width/--height")
        # `truthloop resume RUN_DIR --low-vram` works (the headless printer gives that line).
        return OUT_OF_MEMORY
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing the run directory ({first}); free space, then resume"
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write the run directory: {first}"
    if isinstance(error, OneLineError):  # a bad value, run directory or model: already one line
        return first
    return f"{name}: {first}"
