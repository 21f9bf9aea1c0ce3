"""The engine: caption -> compare -> draw, until the compared prompt repeats.

It knows nothing of torch or Textual: models come in as `Backends` (real ones from
`backends.load_backends`, fakes in tests) and everything it does goes out as events and into the
run directory (`store.RunWriter`). A UI drives it through `LoopControl` from another thread.
"""

from __future__ import annotations

import errno
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
    RESUMABLE, UNRECORDED_DECODING, ConfigError, RunConfig, apply_resume_options,
    resumable_options,
)
from truthloop.errors import OneLineError
from truthloop.text import first_line
from truthloop.measures import NearRepeats, cosine
from truthloop.record import PERSON, Cycle, Record, find_cycle, result_fields
from truthloop.store import (
    FORMAT_VERSION, RunDirError, RunWriter, image_name, read_run, read_run_info, resume_problem,
    update_run_info,
)

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
    # Optional (the drift measures of text and caption-image, --converge text): unit-length text
    # features of each prompt, in the same space as `features`.
    # def text_features(self, prompts: list[str]) -> list[list[float]]: ...


def text_encoder(embedder: Any) -> Callable[[list[str]], list[Any]] | None:
    """The embedder's text features, when it has them."""
    found = getattr(embedder, "text_features", None) if embedder is not None else None
    return found if callable(found) else None


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
        # The drawn image whose PNG is being written (its record, the write's future), and the
        # one thread that writes them (_settle_image).
        self._pending_image: tuple[Record, Any] | None = None
        self._png: Any = None
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
        config.caption.decoding = _decoding_to_keep(view)
        asked = dict(options or {})
        if max_iters is not None:
            asked["max_iters"] = max_iters
        changed = apply_resume_options(config, asked)
        loop = cls(config, run_dir, backend_factory, on_event, control, resume=True)
        loop.changed_options = changed
        return loop

    @property
    def first_prompt_by_person(self) -> bool:
        """A fork whose first prompt a person wrote (run.json's `parent.prompt_by`): its start
        prompt is their caption, marked as theirs in the record (record.PERSON)."""
        parent = self.run_info.get("parent")
        return isinstance(parent, dict) and parent.get("prompt_by") == PERSON

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
            if self._png is not None:
                self._png.shutdown(wait=True)
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
            if isinstance(view.info.get("parent"), dict):  # a person's fork says so there
                self.run_info.setdefault("parent", view.info["parent"])
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
            decoding = (backends.details or {}).get("decoding")
            if decoding is not None:
                self._segment["decoding"] = decoding
            self.emit(ev.Ready(backends.device, time.perf_counter() - load_start))
            self._record_loaded(backends)
            self._name_measures(backends)
            return self._iterate(backends)
        except StopRequested:
            return self._finish("stopped")
        except KeyboardInterrupt:
            return self._finish("stopped")
        except Exception as error:  # noqa: BLE001 - every failure must end as a readable summary
            self._settle_image(keep_errors=True)
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
        """The last record, when the records end where a converged run ends: past the cycle's
        confirmation, the last iteration not drawn (drawn under the image criterion, decided
        after drawing)."""
        if not self.records:
            return None
        cycle = find_cycle(self.records)
        last = self.records[-1]
        if cycle is None:
            return None
        if cycle.criterion == "image":
            done = last.index >= cycle.found_at + self.config.loop.confirm_iters
            return last if done else None
        return last if last.image is None else None

    def _record_loaded(self, backends: Backends) -> None:
        """run.json's "models_loaded" (where each model was loaded from: under --models tiny, the
        tiny checkpoints' directories, which the config's model ids are not) and "decoding" (the
        captioner's, as the checkpoint's generation config made it): written once, by the first
        process to load the models. A resumed segment's own are in summary.json's segments."""
        try:
            info = read_run_info(self.run_dir)
        except (OSError, ValueError):
            return
        fields = {"models_loaded": backends.loaded,
                  "decoding": (backends.details or {}).get("decoding")}
        fields = {name: value for name, value in fields.items()
                  if value is not None and name not in info}
        if fields:
            update_run_info(self.run_dir, fields)

    def _name_measures(self, backends: Backends) -> None:
        """run.json's "measures": which embedding made the records' similarities, and which of
        them it could make (written once, by the process that first measured)."""
        try:
            if "measures" in read_run_info(self.run_dir):
                return
        except (OSError, ValueError):
            return
        embedder = backends.embedder
        name = (backends.details or {}).get("clip_name") or getattr(embedder, "name", None) \
            or (type(embedder).__name__ if embedder is not None else None)
        texts = text_encoder(embedder) is not None
        measures = {"embedding": name, "image": embedder is not None, "text": texts,
                    "cross": texts,
                    "fields": [f for f, on in (("sim_start", embedder is not None),
                                               ("sim_prev", embedder is not None),
                                               ("text_start", texts), ("text_prev", texts),
                                               ("cross_start", texts), ("cross_prev", texts))
                               if on]}
        update_run_info(self.run_dir, {"measures": measures})

    def _iterate(self, backends: Backends) -> dict[str, Any]:
        cfg, lp = self.config, self.config.loop
        control = lp.control
        keys: dict[str, int] = {}
        for record in self.records:
            keys.setdefault(record.compared, record.index)
        cycle = find_cycle(self.records)
        confirm_until = (cycle.found_at + lp.confirm_iters) if cycle else None

        embedder = backends.embedder
        embed = embedder.features if embedder else (lambda image: None)
        embed_texts = text_encoder(embedder)
        near: NearRepeats | None = None
        if lp.converge != "exact" and not control:
            if embedder is None or (lp.converge == "text" and embed_texts is None):
                what = "CLIP text features" if lp.converge == "text" else "CLIP image features"
                raise ConfigError(f"--converge {lp.converge} compares {what}, and these "
                                  f"backends have none")
            near = NearRepeats(lp.near_threshold, lp.near_window)

        drawn = [r for r in self.records if r.image]
        # The start image: the input, or (a run from a prompt) the first image drawn.
        start_image = self.input_image
        if start_image is None and self.records and self.records[0].image:
            start_image = _read_rgb(self.run_dir / self.records[0].image)
        current = start_image  # the image the next caption describes
        if drawn:
            backends.painter.set_rng_state(drawn[-1].rng_state)
            if control != "captioner-only":
                current = _read_rgb(self.run_dir / drawn[-1].image)
        start_features = embed(start_image) if start_image is not None else None
        previous_features = start_features if current is start_image else embed(current)
        start_text = prev_text = None
        if embed_texts is not None and self.records:
            start_text, prev_text = embed_texts([self.records[0].compared,
                                                 self.records[-1].compared])
        if near is not None and self.records:  # a resumed run: what it is compared with
            if lp.converge == "text":
                prompts = [r.compared for r in self.records]
                vectors = [v for i in range(0, len(prompts), 64)
                           for v in embed_texts(prompts[i:i + 64])]
                near.history = [(r.index, list(v)) for r, v in zip(self.records, vectors)]
            else:
                near.history = [(r.index, list(embed(_read_rgb(self.run_dir / r.image))))
                                for r in drawn]
            near.restore(self.records)

        # A fixed-length chain (--generations) runs its records whatever repeats, and may end on
        # a caption (config.chain_shape); every other run stops at --max-iters at the latest.
        from_image = cfg.start_prompt is None
        limit = lp.iteration_limit(from_image)
        index = len(self.records)
        while True:
            self._checkpoint(index)
            if index >= limit:
                return self._finish("max_iters")
            self.emit(ev.IterationStarted(index))
            paused_before = self._paused_s
            t_start = self._clock()
            author = None
            if index == 0 and cfg.start_prompt is not None and self.first_prompt_by_person:
                # A person's turn (a fork with their prompt): their text stands where the
                # parent's caption of iteration K stood, cut and fed as every caption is.
                caption, author = cfg.start_prompt, PERSON
                compared, fed = compared_and_fed(caption, lp.clauses, lp.feed)
            elif index == 0 and cfg.start_prompt is not None:
                caption, compared, fed = None, cfg.start_prompt, cfg.start_prompt
            elif control == "generator-only" and index > 0:
                # The control redraws the start prompt and never captions again (nothing to
                # overlap the last image's write with: its record first, as records[0] may be it).
                t_start += self._settle_image()
                first = self.records[0]
                caption, compared, fed = None, first.compared, first.fed_prompt
            else:
                caption = backends.captioner.caption(current)
                compared, fed = compared_and_fed(caption, lp.clauses, lp.feed)
            t_caption = self._clock()
            # The previous iteration's image has been writing meanwhile: its record now. What
            # that waited is its "save" time, not this iteration's.
            waited = self._settle_image()
            t_start, t_caption = t_start + waited, t_caption + waited
            repeat_of = None if control or lp.generations else keys.get(compared)
            self.emit(ev.CaptionReady(index, caption, fed, compared, repeat_of, author))
            if repeat_of is not None and cycle is None:
                cycle = Cycle(repeat_of, index - repeat_of)
                confirm_until = index + lp.confirm_iters
            reseeds = control == "generator-only" and cfg.generate.seed_mode == "reseed"
            # The generator-only control draws each image with a new seed (seed + iteration).
            seed = cfg.generate.seed + index if reseeds else cfg.generate.seed
            record = Record(index=index, caption=caption, compared=compared, fed_prompt=fed,
                            repeat_of=repeat_of, seed=seed, author=author)
            text_vector = None
            if embed_texts is not None:
                described = caption is not None and author is None  # an image of this run
                vectors = embed_texts([compared, caption] if described else [compared])
                text_vector = vectors[0]
                if start_text is None:
                    start_text = text_vector
                record.text_start = _round(cosine(text_vector, start_text))
                record.text_prev = _round(cosine(text_vector, prev_text))
                if described:  # the caption against the image it describes (a person's
                    # caption describes the parent's image, none of this run's)
                    record.cross_prev = _round(cosine(vectors[1], previous_features))
                    record.cross_start = _round(cosine(vectors[1], start_features))
            if near is not None and lp.converge == "text":
                record.near_of, near_sim, window = near.observe(index, text_vector)
                record.near_sim = _round(near_sim)
                if window and cycle is None:
                    record.converged_by = "text"
                    cycle = find_cycle([*self.records, record])
                    confirm_until = index + lp.confirm_iters
            t_text = self._clock()
            measured_text = embed_texts is not None or near is not None
            if (cycle is not None and cycle.criterion != "image" and index >= confirm_until) \
                    or (control == "captioner-only"
                        and not (index == 0 and cfg.start_prompt is not None)) \
                    or (index == limit - 1 and not lp.draws_last(from_image)):
                # A repeat found before drawing, or the captioner-only control, which never
                # draws (but the start image of a run from a prompt), or the caption that ends
                # a fixed-length chain.
                record.timings = {"caption": round(t_caption - t_start, 4)}
                if measured_text:
                    record.timings["similarity"] = round(t_text - t_caption, 4)
                record.timings["total"] = round(t_text - t_start, 4)
                if self._paused_s > paused_before:
                    record.timings["paused"] = round(self._paused_s - paused_before, 4)
                self._writer.append_record(record)
                self.records.append(record)
                self.emit(ev.IterationDone(replace(record)))
                if cycle is not None and not control:
                    return self._finish("converged", record)
                prev_text = text_vector
                self.control.end_of_iteration()
                index += 1
                continue

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
            if reseeds:
                retarget = getattr(backends.painter, "start_trajectory", None)
                if retarget is None:
                    raise ConfigError("--control generator-only draws each image with a new "
                                      "seed, and this painter cannot be re-seeded; use "
                                      "--seed-mode shared")
                retarget(replace(cfg.generate, seed=seed))

            image = backends.painter.paint(fed, on_step)
            t_generate = self._clock()
            features = embed(image)
            if start_features is None:
                start_features = features
            sim_prev = cosine(features, previous_features)
            sim_start = cosine(features, start_features)
            if near is not None and lp.converge == "image":
                record.near_of, near_sim, window = near.observe(index, features)
                record.near_sim = _round(near_sim)
                if window and cycle is None:
                    record.converged_by = "image"
                    cycle = find_cycle([*self.records, record])
                    confirm_until = index + lp.confirm_iters
            t_similarity = self._clock()
            # The PNG is written on another thread while the next caption runs (its encode and
            # fsync were ~0.1 s of a 1.1 s compiled iteration); its log line follows once the
            # file is on disk (_settle_image), so a record never names a missing image.
            record.image = image_name(index)
            written = self._png_writer().submit(self._writer.write_image, index, image)
            record.rng_state = backends.painter.rng_state()
            record.sim_prev = _round(sim_prev)
            record.sim_start = _round(sim_start)
            t_end = self._clock()
            record.timings = {
                "caption": round(t_caption - t_start, 4),
                "generate": round(t_generate - t_text, 4),
                "similarity": round((t_text - t_caption) + (t_similarity - t_generate), 4),
                "save": round(t_end - t_similarity, 4),
                "total": round(t_end - t_start, 4),
            }
            if self._paused_s > paused_before:  # left out of the stages above, said here
                record.timings["paused"] = round(self._paused_s - paused_before, 4)
            self._pending_image = (record, written)
            keys.setdefault(compared, index)
            current, previous_features, prev_text = image, features, text_vector
            if cycle is not None and cycle.criterion == "image" and index >= confirm_until:
                return self._finish("converged", record)  # decided on the image just drawn
            self.control.end_of_iteration()
            index += 1

    def _png_writer(self) -> Any:
        if self._png is None:
            from concurrent.futures import ThreadPoolExecutor

            self._png = ThreadPoolExecutor(max_workers=1, thread_name_prefix="truthloop-png")
        return self._png

    def _settle_image(self, keep_errors: bool = False) -> float:
        """Wait for the last drawn image's PNG, then append its record and say it is done.
        Returns the seconds waited (added to that record's save time). A failed write raises,
        unless `keep_errors` (a run already ending in an error): then its record is left out,
        as its image is not on disk."""
        pending, self._pending_image = self._pending_image, None
        if pending is None:
            return 0.0
        record, written = pending
        began = self._clock()
        try:
            written.result()
        except Exception:
            if keep_errors:
                return 0.0
            raise
        waited = self._clock() - began
        record.timings["save"] = round(record.timings["save"] + waited, 4)
        record.timings["total"] = round(record.timings["total"] + waited, 4)
        self._writer.append_record(record)
        self.records.append(record)
        self.emit(ev.IterationDone(replace(record)))
        return waited

    def _checkpoint(self, index: int) -> None:
        def paused() -> None:
            self._settle_image()  # a paused run shows (and has written) all it drew
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
        self._settle_image()
        self.summary.update(result_fields(self.records))
        if self.config.loop.generations:  # a fixed-length chain: its end is not "no repeat"
            self.summary["generations"] = self.config.loop.generations
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


def _decoding_to_keep(view: Any) -> dict[str, Any] | None:
    """The captioner decoding a resumed run keeps over its checkpoint's own: for a run that has
    iterations but no "decoding" in its run.json (made before truthloop recorded it), the one
    beam it then decoded with. None otherwise: a run that recorded its decoding recorded the
    checkpoint's own, greedy (captioning.decode_greedily), which is what it gets again; a
    change to that rule must map the recorded runs here."""
    if isinstance(view.info.get("decoding"), dict) or not view.records:
        return None
    return dict(UNRECORDED_DECODING)
