"""`truthloop sweep --batch N`: each worker runs its trajectories N at a time in lockstep
(`truthloop.lockstep`, models batched by `truthloop.ml.batched`), a slot refilled as soon as its
trajectory ends. Kept beside the one-at-a-time driver and worker (driver.py, worker.py), which
it reuses: the same run directories, resumes, embeddings and progress.

Composition: the trajectories still to run are dealt to the workers in a fixed way (worker i gets
every count-th one, in the sweep's order) and each worker fills its slots in that order, so the
same sweep with the same --batch and the same number of workers composes the same batches. A
trajectory's prompts can differ from its run alone (batched kernels); each run's run.json says
which batch drew it ("batch").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from truthloop.config import RunConfig
from truthloop.images import BadImage, load_input_image
from truthloop.lockstep import Job as LockstepJob, Lockstep, model_key
from truthloop.store import RUN_FILE
from truthloop.sweep import state as st
from truthloop.sweep.driver import (
    POLL, RAY_RESTARTS, Job, NodeLost, Progress, _poll, again_note, describe, heal_note,
    iterations_left, iterations_unused, local_node_alive, outcome_row, restart_local_ray,
    start_note, start_ray, start_workers, stop_ray, too_many_losses,
)
from truthloop.sweep.spec import Trajectory
from truthloop.sweep.state import EMBEDDING_FILE, read_summary
from truthloop.sweep.worker import TrajectoryWorker, _model_key, resolve_factory
from truthloop.text import first_line

BATCHED_BACKENDS = "truthloop.ml.batch_factory:batched_factory"


class BatchWorker(TrajectoryWorker):
    """A TrajectoryWorker that can also run many trajectories in lockstep (`run_batch`)."""

    def _batch_factory(self) -> Callable[..., Any]:
        # A test's fake backends `module:name` come batched as `module:name_batched`.
        return resolve_factory(f"{self.backend}_batched" if self.backend else BATCHED_BACKENDS)

    def run_batch(self, jobs: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
        """jobs: [{"run_dir", "config"}]; returns one {"status", "message"?} per job. Jobs whose
        models differ (a grid over steps, say) run as separate lockstep groups, one after
        another; a run directory that exists is continued as `truthloop resume` does."""
        outcomes: list[dict[str, Any] | None] = [None] * len(jobs)
        groups: dict[str, list[LockstepJob]] = {}
        configs = [RunConfig.from_dict(job["config"]) for job in jobs]
        for config in configs:
            if config.generate.compile and not _cuda_here(config):
                # torch.compile serves the CUDA path only: a new run records what it will do.
                config.generate.compile = False
            if config.generate.fp8 and not _cuda_here(config):
                config.generate.fp8 = False  # likewise float8, which needs an Ada/Hopper GPU
        for number, (job, config) in enumerate(zip(jobs, configs)):
            run_dir = Path(job["run_dir"])
            if (run_dir / RUN_FILE).exists():
                summary = read_summary(run_dir) or {}
                if summary.get("status") in st.DONE:
                    outcomes[number] = {"status": summary["status"]}
                    continue
                item = LockstepJob(run_dir, resume=True, key=number)
            else:
                try:
                    image = load_input_image(config.input_image) \
                        if config.input_image is not None else None
                except BadImage as error:
                    outcomes[number] = {"status": "error", "message": str(error)}
                    continue
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                item = LockstepJob(run_dir, config, input_image=image, key=number)
            groups.setdefault(repr(model_key(config)), []).append(item)
        for group in groups.values():
            self._backends = None  # the one-at-a-time models, if any, go before a batch loads
            engine = Lockstep(self._batch_factory(), size)
            for outcome in engine.run(group):
                outcomes[outcome["key"]] = {k: v for k, v in outcome.items()
                                            if k in ("status", "message")}
            # The atlas's embeddings from the models the batch held (no second copy loaded).
            single = getattr(engine.models, "backends", None)
            config = configs[group[0].key]
            if single is not None:
                self._backends, self._key = single, _model_key(config, exact=False)
            for item in group:
                outcome = outcomes[item.key]
                if outcome["status"] == "converged" \
                        and not (item.run_dir / EMBEDDING_FILE).exists():
                    try:
                        self._embed(item.run_dir, configs[item.key])
                    except Exception as error:  # noqa: BLE001 - the trajectory stands
                        outcomes[item.key] = {"status": "error", "message":
                                              f"embedding: {type(error).__name__}: {error}"}
            del engine
        return [outcome or {"status": "error", "message": "not run"} for outcome in outcomes]


def _cuda_here(config: RunConfig) -> bool:
    """Whether this worker's models will run on CUDA (the device rule the models load with)."""
    from truthloop.ml.models import ModelUnavailable, pick_device

    try:
        return pick_device(config.models.device) == "cuda"
    except ModelUnavailable:  # the load will say so, once, for the run
        return False


def run_sweep_batched(sweep_dir: Path, trajectories: list[Trajectory], backend: str | None,
                      size: int, address: str | None = None, workers: int | None = None,
                      num_gpus: int | None = None, max_restarts: int = 8,
                      rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """run_sweep's work, each worker `size` trajectories at a time. A lost worker's call is
    retried by Ray (max_task_retries) and continues its run directories. `rows`: as
    run_sweep's."""
    import ray

    from truthloop.sweep.driver import SweepError

    rows = st.table(sweep_dir, trajectories) if rows is None else rows
    todo = [t for t, row in zip(trajectories, rows) if not st.is_done(row)]
    started = start_ray(address, num_gpus)
    local = started and not address
    progress = Progress(len(trajectories), len(trajectories) - len(todo),
                        iterations_left(rows, todo))
    reported: set[int] = set()
    try:
        restarts = 0
        remaining = todo
        with progress:
            while True:
                actors, gpus = start_workers(BatchWorker, backend, workers, len(remaining),
                                             max_restarts)
                if todo and restarts == 0:
                    start_note(progress, todo, len(trajectories), len(actors), gpus,
                               f", {size} at a time each")
                    again = again_note(rows)
                    if again:
                        progress.note(again)
                try:
                    _drive_batches(sweep_dir, rows, remaining, actors, size, progress,
                                   reported, local)
                    break
                except NodeLost:
                    if restarts >= RAY_RESTARTS:
                        raise too_many_losses() from None
                    restarts += 1
                    progress.note(heal_note(restarts))
                    restart_local_ray(num_gpus)
                    # What is not done is dealt again (a batch's composition then differs).
                    remaining = [t for t in todo
                                 if not st.is_done(st.trajectory_row(sweep_dir, t))]
        for actor in actors:
            ray.kill(actor)
    except ray.exceptions.RaySystemError as error:
        raise SweepError(f"Ray failed: {first_line(error)}", code=1) from None
    finally:
        stop_ray(started)
    rows = st.table(sweep_dir, trajectories)
    st.write_table(sweep_dir, rows)
    return rows


def _drive_batches(sweep_dir: Path, rows: list[dict[str, Any]], todo: list[Trajectory],
                   actors: list[Any], size: int, progress: Progress, reported: set[int],
                   local: bool) -> None:
    """Deal `todo` to the workers and wait for every share; NodeLost (a local sweep) when the
    node under them is gone."""
    import ray

    count = len(actors)
    shares = [todo[i::count] for i in range(count)] if count else []
    inflight = {}
    for actor, share in zip(actors, shares):
        payload = [{"run_dir": str(t.run_dir(sweep_dir)), "config": t.config} for t in share]
        inflight[actor.run_batch.remote(payload, size)] = share
    jobs = {t.number: Job.started(t, sweep_dir) for t in todo}
    last_look = 0.0
    while inflight:
        try:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL)
        except ray.exceptions.RaySystemError:
            if local:
                raise NodeLost([]) from None
            raise
        for ref in ready:
            share = inflight.pop(ref)
            try:
                outcomes = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as error:
                if local and isinstance(error, ray.exceptions.RayActorError) \
                        and not local_node_alive():
                    raise NodeLost([]) from None
                cause = getattr(error, "cause", None) or error
                outcomes = [{"status": "error", "message":
                             f"worker lost: {type(cause).__name__}: "
                             f"{first_line(cause)}"}] * len(share)
            for trajectory, outcome in zip(share, outcomes):
                row = outcome_row(sweep_dir, trajectory, outcome)
                rows[trajectory.number] = row
                _poll(jobs[trajectory.number], progress)
                if trajectory.number not in reported:
                    reported.add(trajectory.number)
                    progress.finished(describe(row), iterations_unused(trajectory, row))
        if time.monotonic() - last_look > 2.0:
            # Lines for trajectories that ended inside a call still running.
            for share in inflight.values():
                for trajectory in share:
                    _poll(jobs[trajectory.number], progress)
                    if trajectory.number in reported:
                        continue
                    row = st.trajectory_row(sweep_dir, trajectory)
                    if row["state"] in st.DONE and (row["state"] != "converged"
                                                    or row["embedded"]):
                        reported.add(trajectory.number)
                        rows[trajectory.number] = row
                        progress.finished(describe(row), iterations_unused(trajectory, row))
            try:
                st.write_table(sweep_dir, rows)
            except OSError:
                pass
            last_look = time.monotonic()
