"""The sweep worker: holds one set of loaded backends and runs trajectories one after another.

Plain Python (no Ray import): the driver wraps `TrajectoryWorker` with `ray.remote`, so a test or a
single-process caller can use it as it is. Each trajectory is an ordinary run directory written by
`TruthLoop`; one that exists already is continued exactly as `truthloop resume` does
(`TruthLoop.for_resume`), so a retried call after a killed worker loses at most the iteration that
was in flight.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from truthloop.config import ConfigError, RunConfig
from truthloop.images import BadImage, load_input_image
from truthloop.lockstep import model_key
from truthloop.loop import Backends, LoopFailed, TruthLoop, text_encoder
from truthloop.store import (
    RUN_FILE, RunDirError, RunLocked, atomic_write_json, read_records, read_run,
)
from truthloop.sweep.state import EMBEDDING_FILE, read_summary

# The real models; tests name a factory of fake backends instead (`module:function`).
REAL_BACKENDS = "truthloop.ml.backends:load_backends"
LOCK_WAIT = 180.0  # s a retried trajectory waits for a dead writer's lock to be released


def resolve_factory(name: str | None) -> Callable[..., Backends]:
    module, _, attr = (name or REAL_BACKENDS).partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(f"backend factory {name!r} not found: {error}") from None


def _model_key(config: RunConfig, exact: bool) -> str:
    """What decides the loaded backends (lockstep.model_key, as text). The seed and seed mode only
    when the painter cannot be pointed at another trajectory's seed (`start_trajectory`); the
    loop's rules never."""
    return json.dumps(model_key(config, with_seed=exact), sort_keys=True)


class TrajectoryWorker:
    """One per GPU. `run(job)` runs (or continues) one trajectory and returns its outcome."""

    def __init__(self, backend: str | None = None):
        self.backend = backend
        self._factory: Callable[..., Backends] | None = None
        self._backends: Backends | None = None
        self._key: str | None = None
        self.loads = 0  # how many times models were loaded in this process (tests read it)

    def _backends_for(self, config: RunConfig, emit: Callable[..., Any]) -> Backends:
        if self._factory is None:
            self._factory = resolve_factory(self.backend)
        backends = self._backends
        if backends is not None:
            retarget = getattr(backends.painter, "start_trajectory", None)
            if retarget is not None and self._key == _model_key(config, exact=False):
                retarget(config.generate)
                return backends
            # A painter that cannot be re-seeded serves only its own seed, and in reseed mode
            # only (a shared generator has moved on along another trajectory's stream).
            if retarget is None and self._key == _model_key(config, exact=True) \
                    and config.generate.seed_mode == "reseed":
                return backends
        self._backends = None  # let the old models go before loading others
        self._backends = self._factory(config, emit)
        self.loads += 1
        exact = getattr(self._backends.painter, "start_trajectory", None) is None
        self._key = _model_key(config, exact=exact)
        return self._backends

    def ping(self) -> int:
        import os

        return os.getpid()

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """job: {"run_dir", "config" (RunConfig dict)}. Returns {"status", "message"?}."""
        run_dir = Path(job["run_dir"])
        waited = 0.0
        while True:
            try:
                status = self._run_loop(run_dir, RunConfig.from_dict(job["config"]))
                break
            except RunLocked as error:
                # A retry after a lost node: on shared storage the dead writer's lock lives on
                # until the file server's lease runs out (NFSv4: 90 s by default).
                if waited >= LOCK_WAIT:
                    return {"status": "error", "message": str(error)}
                time.sleep(5.0)
                waited += 5.0
            except (LoopFailed, RunDirError, BadImage, ConfigError) as error:
                return {"status": "error", "message": str(error)}
        if status == "converged" and not (run_dir / EMBEDDING_FILE).exists():
            try:
                self._embed(run_dir, RunConfig.from_dict(job["config"]))
            except Exception as error:  # noqa: BLE001 - the trajectory stands; say why no embedding
                return {"status": "error", "message": f"embedding: {type(error).__name__}: "
                                                      f"{error}"}
        return {"status": status}

    def _run_loop(self, run_dir: Path, config: RunConfig) -> str:
        if (run_dir / RUN_FILE).exists():
            summary = read_summary(run_dir) or {}
            if summary.get("status") in ("converged", "max_iters"):
                return summary["status"]
            loop = TruthLoop.for_resume(run_dir, self._backends_for)
        else:
            image = None
            if config.input_image is not None:
                image = load_input_image(config.input_image)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            loop = TruthLoop(config, run_dir, self._backends_for, input_image=image)
        return loop.run()["status"]

    # -- embeddings for the atlas --------------------------------------------------------------
    def _embed(self, run_dir: Path, config: RunConfig) -> None:
        """CLIP embeddings of the truth: the cycle's images (their mean) and its prompts (mean),
        unit length, from the CLIP the backends already hold; written to embedding.json."""
        from PIL import Image

        view = read_run(run_dir)
        summary = view.summary or {}
        backends = self._backends_for(config, lambda event: None)
        embedder = backends.embedder
        image_vectors, text_vectors = [], []
        if embedder is not None:
            for name in summary.get("truth_images") or []:
                with Image.open(run_dir / name) as image:
                    image_vectors.append(list(embedder.features(image.convert("RGB"))))
            prompts = summary.get("truth_prompts") or []
            encode = text_encoder(embedder)
            if prompts and encode is not None:
                text_vectors = encode(prompts)
        records = read_records(run_dir)
        cycle = summary.get("cycle") or {}
        start, length = cycle.get("start", 0), cycle.get("length", 0)
        compared = [_field(r, "compared") for r in records[start:start + length]]
        atomic_write_json(run_dir / EMBEDDING_FILE, {
            "image": _unit_mean(image_vectors), "text": _unit_mean(text_vectors),
            "compared": compared, "clip": (backends.details or {}).get("clip_name"),
        })


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def _unit_mean(vectors: list[list[float]]) -> list[float] | None:
    if not vectors:
        return None
    mean = [sum(column) / len(vectors) for column in zip(*vectors)]
    norm = math.sqrt(sum(x * x for x in mean)) or 1.0
    return [round(x / norm, 6) for x in mean]
