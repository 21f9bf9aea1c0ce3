"""Many trajectories in lockstep on one set of models: their images drawn, captioned and embedded
in batches, each trajectory still an ordinary run directory.

Each trajectory is an unchanged `TruthLoop` in a thread of its own, so its run directory, records,
summary and resume are exactly a single run's (the loop and the store are the one way to write a
run). Its backends are proxies: a caption, a drawing or a feature vector it asks for becomes a
request, and the thread waits. The engine (in the caller's thread, the only one that touches the
models) waits until every live trajectory is waiting or finished, then serves all requests of one
kind as one batch call to the batched models, in slot order, and wakes the threads. So:

- the work in one tick is a function of the trajectories' states only, never of thread timing:
  a batch's composition is deterministic, and rerunning the same jobs gives the same results;
- a trajectory that converges, hits max-iters, stops or fails frees its slot, which takes the
  next job at once (before the tick is served), so no slot idles while jobs remain;
- a drawing tick waits until every live trajectory wants to draw (the others caption and embed
  first), so drawing batches are full while jobs remain, whatever phase a newcomer starts in;
- the CPU work between requests (PNG encoding, log lines, fsync) runs in the trajectories' own
  threads, side by side.

No torch here: the models come in as a `BatchModels` (`truthloop.ml.batched` for the seed pair,
`truthloop.ml.families.batched` for every other pair, or fakes in tests).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from truthloop import events as ev
from truthloop.config import RunConfig
from truthloop.loop import Backends, LoopControl, LoopFailed, StopRequested, TruthLoop
from truthloop.store import RunDirError, read_records, read_run_info, update_run_info

PAINT, CAPTION, FEATURES, TEXT = "paint", "caption", "features", "text"
# Served in this order within a tick (any fixed order is deterministic).
KINDS = (FEATURES, TEXT, CAPTION, PAINT)


class Stream(Protocol):
    """One trajectory's random stream for drawing (its own generator, whatever the batch)."""

    def rng_state(self) -> str | None: ...
    def set_rng_state(self, state: str | None) -> None: ...


class BatchModels(Protocol):
    device: str
    details: dict[str, Any] | None
    loaded: dict[str, Any] | None
    has_embedder: bool

    def stream(self, config: RunConfig) -> Stream: ...
    def paint(self, prompts: list[str], streams: list[Stream],
              on_step: Callable[[int, int], None], pad_to: int | None) -> list[Any]: ...
    def caption(self, images: list[Any]) -> list[str]: ...
    def features(self, images: list[Any]) -> list[Any]: ...


BatchModelsFactory = Callable[[RunConfig, Callable[[ev.Event], None]], BatchModels]


def model_key(config: RunConfig, with_seed: bool = False) -> dict[str, Any]:
    """What all trajectories of one lockstep batch must share: every setting but the seed, the
    seed mode, the loop's rules and the start (those stay per trajectory). `with_seed`: the seed
    and seed mode too (for models that serve one seed only)."""
    data = config.to_dict()
    for key in ("loop", "input_image", "start_prompt", "preset"):
        data.pop(key, None)
    if not with_seed:
        data["generate"] = {k: v for k, v in data["generate"].items()
                            if k not in ("seed", "seed_mode")}
    return data


@dataclass
class Job:
    """One trajectory: a new run (config, and its start image if any) or, with resume, an
    existing run directory continued as `truthloop resume` continues it."""

    run_dir: Path
    config: RunConfig | None = None
    input_image: Any = None
    resume: bool = False
    max_iters: int | None = None  # resume only: a new limit, as `resume --max-iters`
    key: Any = None  # the caller's name for it, handed back in the outcome


@dataclass
class Tick:
    """One served batch: what and how many (padding not counted), and when."""

    kind: str
    slots: list[int]
    started: float
    seconds: float


@dataclass
class _Slot:
    index: int
    job: Job | None = None
    job_number: int = -1
    thread: threading.Thread | None = None
    state: str = "empty"  # running | waiting | done | empty
    request: tuple[str, tuple] | None = None
    result: Any = None
    error: BaseException | None = None
    control: LoopControl = field(default_factory=LoopControl)
    outcome: dict[str, Any] | None = None
    loop: TruthLoop | None = None


class Lockstep:
    """Runs jobs `size` at a time through one `BatchModels`.

    exact: the models' single-image paths (batch 1 only): the same images and prompts as
           `truthloop run`. pad: a drawing batch is padded to `size` (fixed shapes: no new CUDA
           graph or compile at the tail of a sweep, and a trajectory's batch looks the same
           whoever else is in it).
    """

    def __init__(self, factory: BatchModelsFactory, size: int, exact: bool = False,
                 pad: bool = True, on_event: Callable[[Any, ev.Event], None] | None = None):
        if size < 1:
            raise ValueError(f"batch size must be 1 or more, not {size}")
        if exact and size != 1:
            raise ValueError("exact runs one trajectory at a time (batch 1)")
        self.factory = factory
        self.size = size
        self.exact = exact
        self.pad = pad and not exact
        self.on_event = on_event or (lambda key, event: None)
        self.models: BatchModels | None = None
        self._model_key: dict[str, Any] | None = None
        self._cv = threading.Condition()
        self._stopping = False
        self._slots: list[_Slot] = []
        self.ticks: list[Tick] = []
        self.images = 0  # images drawn for trajectories (padding not counted)

    @property
    def setting(self) -> dict[str, Any]:
        """What run.json records as "batch"."""
        return {"size": self.size, "exact": self.exact, "pad": self.pad, "engine": "lockstep"}

    def stop(self) -> None:
        """Every trajectory stops after its current denoising step, as a stopped run."""
        with self._cv:
            self._stopping = True
            for slot in self._slots:
                slot.control.stop()
            self._cv.notify_all()

    # -- the engine -----------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job]) -> list[dict[str, Any]]:
        """Run every job; returns one outcome per job, in job order: {"key", "run_dir",
        "status" (the summary's, or "error"), "message"?}."""
        queue = deque(enumerate(jobs))
        outcomes: dict[int, dict[str, Any]] = {}
        self._slots = [_Slot(i) for i in range(self.size)]
        try:
            while True:
                with self._cv:
                    # Refill, then wait for every live trajectory to ask or finish; a finished
                    # one frees its slot for the next job before anything is served.
                    while True:
                        for slot in self._slots:
                            if slot.state == "done":
                                outcomes[slot.job_number] = slot.outcome
                                slot.state, slot.job, slot.loop = "empty", None, None
                        if not self._stopping:
                            for slot in self._slots:
                                if slot.state == "empty" and queue:
                                    number, job = queue.popleft()
                                    self._start(slot, number, job)
                        while any(s.state == "running" for s in self._slots):
                            self._cv.wait()
                        if not any(s.state == "done" for s in self._slots):
                            break
                    waiting = [s for s in self._slots if s.state == "waiting"]
                    if not waiting:
                        break
                    # A new trajectory's models (loaded once, then shared) are handed over
                    # before the tick, so it joins this tick's batch with its first request.
                    loads = [s for s in waiting if s.request[0] == "load"]
                if loads:
                    self._serve(loads)
                    continue
                self._serve(waiting)
        except BaseException:
            self.stop()
            self._drain()
            raise
        for number, _job in queue:  # only left after a stop
            outcomes[number] = {"status": "not started"}
        return [outcomes[n] for n in sorted(outcomes)]

    def _start(self, slot: _Slot, number: int, job: Job) -> None:
        slot.job, slot.job_number = job, number
        slot.control = LoopControl()
        slot.state, slot.request, slot.outcome = "running", None, None
        slot.thread = threading.Thread(target=self._trajectory, args=(slot,),
                                       name=f"lockstep-{slot.index}", daemon=True)
        slot.thread.start()

    def _drain(self) -> None:
        """After a failure of the engine itself: wake every waiting trajectory with a stop and
        let each write its summary."""
        while True:
            with self._cv:
                for slot in self._slots:
                    if slot.state == "waiting":
                        slot.error, slot.result, slot.state = StopRequested(), None, "running"
                self._cv.notify_all()
                live = [s.thread for s in self._slots if s.state in ("running", "waiting")]
            if not live:
                return
            for thread in live:
                thread.join(timeout=0.1)

    def _trajectory(self, slot: _Slot) -> None:
        job = slot.job
        key = job.key
        outcome: dict[str, Any] = {"key": key, "run_dir": str(job.run_dir)}
        try:
            emit = lambda event: self.on_event(key, event)  # noqa: E731
            factory = lambda config, emit: self._backends(slot, config)  # noqa: E731
            if job.resume:
                loop = TruthLoop.for_resume(job.run_dir, factory, on_event=emit,
                                            control=slot.control, max_iters=job.max_iters)
            else:
                loop = TruthLoop(job.config, job.run_dir, factory, on_event=emit,
                                 control=slot.control, input_image=job.input_image)
            slot.loop = loop
            outcome["status"] = loop.run()["status"]
        except (LoopFailed, RunDirError) as error:
            outcome.update(status="error", message=str(error))
        except BaseException as error:  # noqa: BLE001 - a thread must always report back
            outcome.update(status="error", message=f"{type(error).__name__}: {error}")
        with self._cv:
            slot.outcome, slot.state = outcome, "done"
            self._cv.notify_all()

    def _backends(self, slot: _Slot, config: RunConfig) -> Backends:
        """The loop's backend factory, in the trajectory's thread (after its run directory is
        open and locked): proxies onto the shared models, which load on first use."""
        key = model_key(config)
        models = self._request(slot, "load", (config,))
        if key != self._model_key:
            raise RunDirError(f"{slot.job.run_dir}: its settings differ from the batch's "
                              f"(only seeds, seed modes, loop rules and starts may differ "
                              f"within one batch)")
        self._record_setting(slot.job.run_dir)
        stream = models.stream(config)
        painter = _SlotPainter(self, slot, stream)
        captioner = _SlotCaptioner(self, slot)
        embedder = _SlotEmbedder(self, slot, models) if models.has_embedder else None
        return Backends(captioner=captioner, painter=painter, embedder=embedder,
                        device=models.device, details=models.details, loaded=models.loaded)

    def _record_setting(self, run_dir: Path) -> None:
        """run.json's "batch": this engine's setting for a new run; a resume under another
        setting is added to "batch_resumed" (from which iteration), the first one kept."""
        info = read_run_info(run_dir)
        setting = self.setting
        if "batch" not in info:
            update_run_info(run_dir, {"batch": setting})
        elif info["batch"] != setting:
            resumed = list(info.get("batch_resumed") or [])
            resumed.append({**setting, "from_index": len(read_records(run_dir))})
            update_run_info(run_dir, {"batch_resumed": resumed})

    # -- requests (trajectory threads) and serving them (the engine's thread) ------------------
    def _request(self, slot: _Slot, kind: str, payload: tuple) -> Any:
        with self._cv:
            slot.request, slot.result, slot.error = (kind, payload), None, None
            slot.state = "waiting"
            self._cv.notify_all()
            while slot.state == "waiting":
                self._cv.wait()
            result, error = slot.result, slot.error
            slot.result = slot.error = None
        if error is not None:
            raise error
        return result

    def _serve(self, waiting: list[_Slot]) -> None:
        results: dict[int, tuple[Any, BaseException | None]] = {}
        for slot in waiting:
            if slot.request[0] == "load":
                results[slot.index] = self._load(slot.request[1][0])
        # Drawing is the costly call, so it waits until every live trajectory wants to draw:
        # the others caption and embed (batched where they coincide) until they get there. A
        # trajectory that joins or ends out of step is back in step by the next drawing.
        painting = all(s.request[0] == PAINT for s in waiting)
        for kind in KINDS:
            group = [s for s in waiting if s.request[0] == kind]
            if group and (kind == PAINT) == painting:
                results.update(self._batch(kind, group))
        with self._cv:
            for slot in waiting:
                if slot.index in results:  # the others wait on for the next tick
                    slot.result, slot.error = results[slot.index]
                    slot.state = "running"
            self._cv.notify_all()

    def _load(self, config: RunConfig) -> tuple[Any, BaseException | None]:
        if self.models is None:
            try:
                self.models = self.factory(config, lambda event: None)
            except Exception as error:  # noqa: BLE001 - each waiting trajectory reports it
                return None, error
            self._model_key = model_key(config)
        return self.models, None

    def _batch(self, kind: str, group: list[_Slot]) -> dict[int, tuple[Any, Any]]:
        started = time.perf_counter()
        failed: dict[int, BaseException] = {}
        try:
            if kind == PAINT:
                prompts = [s.request[1][0] for s in group]
                streams = [s.request[1][1] for s in group]
                on_steps = [s.request[1][2] for s in group]

                def on_step(step: int, total: int) -> None:
                    # A stop asked of one trajectory abandons its image only: the batch goes on.
                    for slot, callback in zip(group, on_steps):
                        if slot.index in failed:
                            continue
                        try:
                            callback(step, total)
                        except BaseException as error:  # noqa: BLE001
                            failed[slot.index] = error

                out = self.models.paint(prompts, streams, on_step,
                                        self.size if self.pad else None)
                self.images += len(group)
            elif kind == TEXT:
                # Each trajectory asks for a few prompts' features: one call for all of them.
                asked = [s.request[1][0] for s in group]
                found = self.models.text_features([p for prompts in asked for p in prompts])
                out, at = [], 0
                for prompts in asked:
                    out.append(found[at:at + len(prompts)])
                    at += len(prompts)
            else:
                images = [s.request[1][0] for s in group]
                out = (self.models.caption if kind == CAPTION else self.models.features)(images)
            if len(out) != len(group):
                raise RuntimeError(f"{kind}: {len(out)} results for a batch of {len(group)}")
        except Exception as error:  # noqa: BLE001 - every trajectory in the batch reports it
            return {s.index: (None, error) for s in group}
        finally:
            self.ticks.append(Tick(kind, [s.index for s in group], started,
                                   time.perf_counter() - started))
        return {s.index: (None, failed[s.index]) if s.index in failed else (value, None)
                for s, value in zip(group, out)}


class _SlotPainter:
    def __init__(self, engine: Lockstep, slot: _Slot, stream: Stream):
        self.engine, self.slot, self.stream = engine, slot, stream

    def paint(self, prompt: str, on_step: Callable[[int, int], None]) -> Any:
        return self.engine._request(self.slot, PAINT, (prompt, self.stream, on_step))

    def rng_state(self) -> str | None:
        return self.stream.rng_state()

    def set_rng_state(self, state: str | None) -> None:
        self.stream.set_rng_state(state)


class _SlotCaptioner:
    def __init__(self, engine: Lockstep, slot: _Slot):
        self.engine, self.slot = engine, slot

    def caption(self, image: Any) -> str:
        return self.engine._request(self.slot, CAPTION, (image,))


class _SlotEmbedder:
    def __init__(self, engine: Lockstep, slot: _Slot, models: Any):
        self.engine, self.slot = engine, slot
        if callable(getattr(models, "text_features", None)):
            # The drift measures' text side (loop.text_encoder looks for this attribute).
            self.text_features = self._text_features

    def features(self, image: Any) -> Any:
        return self.engine._request(self.slot, FEATURES, (image,))

    def _text_features(self, prompts: list[str]) -> Any:
        return self.engine._request(self.slot, TEXT, (list(prompts),))


def throughput(engine: Lockstep, skip_paints: int = 2) -> dict[str, Any]:
    """Trajectory-iterations (images drawn) per second of the engine's wall time, after the first
    `skip_paints` drawing ticks (CUDA graph captures, compiles): from the end of the last skipped
    drawing tick to the end of the last one."""
    paints = [t for t in engine.ticks if t.kind == PAINT]
    if len(paints) <= skip_paints:
        return {"images": 0, "seconds": 0.0, "per_second": None}
    start = (paints[skip_paints - 1].started + paints[skip_paints - 1].seconds) \
        if skip_paints else engine.ticks[0].started
    end = paints[-1].started + paints[-1].seconds
    images = sum(len(t.slots) for t in paints[skip_paints:])
    seconds = end - start
    by_kind: dict[str, float] = {}
    for tick in engine.ticks:
        if tick.started >= start and tick.started + tick.seconds <= end:
            by_kind[tick.kind] = by_kind.get(tick.kind, 0.0) + tick.seconds
    return {"images": images, "seconds": seconds,
            "per_second": images / seconds if seconds > 0 else None,
            "served_seconds": by_kind}
