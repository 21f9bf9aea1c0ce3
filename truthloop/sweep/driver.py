"""The sweep driver: starts (or joins) Ray, keeps one `TrajectoryWorker` actor per GPU busy, and
shows progress. The only module of truthloop that imports Ray at the top level of a function call.

Faults are Ray's business: actors are created with `max_restarts` and their calls with
`max_task_retries`, so when a worker process dies (kill -9, a lost node) Ray starts a new one
(models loaded again) and calls `run` again with the same trajectory, which continues from its run
directory: at most the iteration in flight is lost. The driver only hands out trajectories and
reads run directories back (shared storage: every node sees the sweep directory).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from truthloop.store import LOG_FILE
from truthloop.sweep import localray, state as st
from truthloop.sweep.spec import Trajectory
from truthloop.text import clip, count, first_line, visible

TABLE_INTERVAL = 2.0  # s between rewrites of trajectories.jsonl while running
POLL = 0.5


class SweepError(Exception):
    """One line for the user (exit code in .code)."""

    def __init__(self, message: str, code: int = 2, started: bool = True):
        super().__init__(message)
        self.code = code
        self.started = started  # False: nothing ran (the sweep directory may be taken back)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a cluster address does not answer: `ray.init` itself retries
    for minutes and logs from C++ before it gives up."""
    if address in ("auto", "local") or address.startswith("ray://"):
        host_port = address[len("ray://"):] if address.startswith("ray://") else None
        if host_port is None:
            return
    else:
        host_port = address
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r} is not HOST:PORT (or ray://HOST:PORT)",
                         started=False)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SweepError(f"cannot reach the Ray cluster at {address}: {reason}", code=1,
                         started=False) from None


def start_ray(address: str | None, num_gpus: int | None) -> bool:
    """Join a cluster at `address`, or start Ray on this machine. Returns whether we started it
    (then we shut it down at the end, with `stop_ray`). An already-initialised Ray (tests) is used
    as it is. Failing before anything ran is a SweepError with `started` False."""
    if address:
        check_address(address)
    else:
        localray.keep_to_loopback()  # before `import ray` reads it
    import ray

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
        except Exception as error:  # noqa: BLE001 - Ray raises many kinds; one line for the user
            raise SweepError(f"cannot join the Ray cluster at {address}: "
                             f"{first_line(error)}", code=1, started=False) from None
        return True
    _init_local(num_gpus, first=True)
    return True


_REAPER: localray.Reaper | None = None
RAY_RESTARTS = 3  # times a local sweep restarts its Ray after losing it, before it gives up


def _init_local(num_gpus: int | None, first: bool) -> None:
    """Start Ray here: loopback only, no dashboard (an HTTP server on 8265), token
    authentication on with a token file only its owner reads, and a reaper that ends Ray's
    processes with the driver (localray.py)."""
    import ray

    global _REAPER
    # Ray's token authentication is on by default for a new local Ray (it sets
    # RAY_AUTH_MODE=token itself; setting it here, after `import ray`, would leave this process's
    # cached setting behind its children's). Only an explicit opt-out turns it off, and then the
    # user is told.
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token" and first:
        print("truthloop: note: Ray's token authentication is off (RAY_AUTH_MODE="
              f"{os.environ['RAY_AUTH_MODE']}): anyone who reaches this machine's Ray ports "
              "can run code here", file=sys.stderr)
    if mode == "token":
        try:
            note = localray.private_token()
        except OSError as error:
            raise SweepError(f"cannot write Ray's token file: {error.strerror or error}",
                             code=1, started=False) from None
        if note:
            print(f"truthloop: note: {visible(note)}", file=sys.stderr)
    kwargs: dict[str, Any] = {}
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    if _REAPER is None:
        _REAPER = localray.Reaper()
    try:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", **kwargs)
    except Exception as error:  # noqa: BLE001 - one line for the user
        stop_ray(True)
        raise SweepError(f"cannot start Ray here: {first_line(error)}", code=1,
                         started=False) from None
    here = ray.util.get_node_ip_address()
    if not localray.is_loopback(here) and first:
        print(f"truthloop: note: Ray took {here} as this node's address, not loopback: its "
              "ports may be reachable from other machines", file=sys.stderr)


def stop_ray(started: bool) -> None:
    """Shut down the Ray we started, and end whatever of it is left (agents that would linger)."""
    global _REAPER
    if not started:
        return
    import ray

    ray.shutdown()
    if _REAPER is not None:
        _REAPER.close()
        _REAPER = None


def restart_local_ray(num_gpus: int | None) -> None:
    """After the local node was lost: shut Ray down, end its stragglers, start it again."""
    import ray

    ray.shutdown()
    if _REAPER is not None:
        _REAPER.kill_leftovers()
    _init_local(num_gpus, first=False)


def local_node_alive(wait: float = 3.0) -> bool:
    """Whether the Ray this driver started still runs whole (GCS, raylet and what they need).
    An agent's or the raylet's death takes the node down; give it `wait` s to show."""
    import ray

    deadline = time.monotonic() + wait
    while True:
        node = getattr(ray._private.worker, "_global_node", None)
        check = getattr(node, "remaining_processes_alive", None)
        try:
            alive = bool(check()) if check is not None else \
                any(n.get("Alive") for n in ray.nodes())
        except Exception:  # noqa: BLE001 - a GCS that does not answer is a lost node
            alive = False
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.25)


class NodeLost(Exception):
    """The local Ray is gone; `unfinished` trajectories go back in the queue."""

    def __init__(self, unfinished: list[Trajectory]):
        super().__init__("Ray's local node was lost")
        self.unfinished = unfinished


def heal_note(restarts: int) -> str:
    return (f"Ray's local node was lost (one of its processes died); restarting Ray and going "
            f"on ({restarts} of {RAY_RESTARTS})")


def too_many_losses() -> SweepError:
    return SweepError(f"Ray's local node was lost {RAY_RESTARTS + 1} times; stopped (run the "
                      f"same command again to continue)", code=1)


@dataclass
class Job:
    trajectory: Trajectory
    run_dir: Path
    log_size: int = 0
    iterations: int = 0

    @classmethod
    def started(cls, trajectory: Trajectory, sweep_dir: Path) -> "Job":
        """A job whose records so far (a resumed trajectory's) are not new iterations."""
        job = cls(trajectory, trajectory.run_dir(sweep_dir))
        job.log_size, _ = _count_lines(job.run_dir, 0)
        return job


def iterations_unused(trajectory: Trajectory, row: dict[str, Any]) -> int:
    """The most iterations the trajectory can still take, from its state row (which read its
    last record): its limit (max_iters, or a fixed-length chain's) less the records it has.
    For a trajectory that has ended, what it will no longer take."""
    index = row.get("index")
    records = index + 1 if isinstance(index, int) else 0
    limit = trajectory.run_config().loop.iteration_limit("image" in trajectory.start)
    return max(0, limit - records)


def iterations_left(rows: list[dict[str, Any]], todo: list[Trajectory]) -> int:
    """The most iterations the unfinished trajectories can still take (`rows`: the state table,
    by trajectory number)."""
    return sum(iterations_unused(t, rows[t.number]) for t in todo)


class Progress:
    """Headless: one Rich progress bar on stderr (trajectories done / total, iterations per
    second, the time left) and one line per finished trajectory on stdout (through the bar's
    console when stdout is the same terminal, so lines land above the bar).

    The time left is counted in iterations, not trajectories: a lockstep batch ends its
    trajectories together, so their pace says nothing until the end. `iterations_left` is the
    most the unfinished trajectories can still take (their limits less their records); each new
    record takes one off, and a trajectory that ends early (converged, failed) takes off what
    it will not use. So the ETA is an upper bound: the time those iterations take at the
    bar's current rate."""

    def __init__(self, total: int, done: int, iterations_left: int | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
        self.bar = RichProgress(
            TextColumn("trajectories", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} it/s", markup=False), TimeElapsedColumn(),
            TextColumn("{task.fields[left]}", markup=False),
            console=self.console, redirect_stdout=True, transient=False)
        self.left = iterations_left
        self.window: deque[tuple[float, int]] = deque()
        self.burst_start = 0.0
        self.iterations = 0
        self.task = self.bar.add_task("sweep", total=total, completed=done, rate="-",
                                      left=self.time_left())

    def __enter__(self) -> "Progress":
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def add_iterations(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.iterations += count
        # Iterations seen within a second of a burst's first came out together (a lockstep batch's,
        # or several workers' read in one poll): one sample at the burst's last moment, so the
        # rate is the iterations after the window's first burst over the time since it, never
        # a burst over the milliseconds between its own records.
        if self.window and now - self.burst_start < self.BURST_S:
            self.window.pop()
        else:
            self.burst_start = now
        self.window.append((now, self.iterations))
        while len(self.window) > 2 and now - self.window[0][0] > 60:
            self.window.popleft()
        if self.left is not None:
            self.left = max(0, self.left - count)
        self.bar.update(self.task, rate=self.rate(), left=self.time_left())

    BURST_S = 1.0

    def per_second(self) -> float | None:
        """Iterations per second over the last minute's samples (None until two bursts have
        been seen)."""
        if len(self.window) < 2:
            return None
        (first, done_then), (last, done_now) = self.window[0], self.window[-1]
        return (done_now - done_then) / (last - first)

    def rate(self) -> str:
        """The rate as the bar shows it ("-" until it is known)."""
        rate = self.per_second()
        return "-" if rate is None else f"{rate:.2f}"

    def time_left(self) -> str:
        """The bar's last column: at most how many iterations are left and, once the rate is
        known, how long they take at it (an upper bound: trajectories may converge sooner)."""
        if self.left is None:
            return ""
        if self.left == 0:
            return "no iterations left"
        left = f"≤ {self.left:,} iterations left"
        rate = self.per_second()
        if not rate:
            return left
        return f"ETA ≤ {datetime.timedelta(seconds=round(self.left / rate))} ({left})"

    def finished(self, line: str, unused: int = 0) -> None:
        """A trajectory ended; `unused`: the iterations it will no longer take."""
        if self.left is not None:
            self.left = max(0, self.left - unused)
        self.bar.update(self.task, advance=1, left=self.time_left())
        print(line, flush=True)

    def note(self, line: str) -> None:
        self.console.print(line)


def batch_hint(pairs: set[tuple[str, str]]) -> str:
    """The note of a sweep run one trajectory at a time on GPUs: what --batch would give, as
    measured for these pairs (the seed pair's lockstep figure is the only one measured so far)."""
    from truthloop.families import DEFAULT_CAPTIONER, DEFAULT_GENERATOR

    if pairs == {(DEFAULT_GENERATOR, DEFAULT_CAPTIONER)}:
        return ("one at a time, each exactly `truthloop run`; with many trajectories, "
                "--batch 16 draws ~2.2x the images per GPU-second (docs/batching.md)")
    return ("one at a time, each exactly `truthloop run`; with many trajectories, --batch N "
            "runs N of them in lockstep (docs/model-families.md, \"Batched sweeps\")")


def describe(row: dict[str, Any]) -> str:
    head = f"{row['state']:<10} {row['number']:5d} {visible(row['run'])}"
    if row["state"] == "converged":
        cycle = row.get("cycle") or {}
        kind = "fixed point" if cycle.get("length") == 1 else f"{cycle.get('length')}-cycle"
        # One line: the truth clipped (the whole of it is in the run directory and the atlas).
        return (f"{head}: {kind} after {count(row['iterations'], 'image')}: "
                f"{clip(visible(row['truth']), 100)}")
    if row["state"] in ("error", "damaged"):
        return f"{head}: {visible(row.get('message') or '')}"
    return f"{head}: {count(row['iterations'], 'image')}"


def start_workers(worker_class: type, backend: str | None, workers: int | None, todo: int,
                  max_restarts: int) -> tuple[list[Any], int]:
    """The sweep's long-lived workers: `workers` of them (default one per GPU Ray sees, one with
    no GPU), never more than there is work; returns (actors, GPUs in the cluster). One GPU each
    where there are GPUs (Ray sets CUDA_VISIBLE_DEVICES for the actor); Ray restarts a dead one
    and retries its call (max_restarts / max_task_retries), which continues its run directories."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = workers or max(1, gpus)
    count = max(1, min(count, todo)) if todo else 0
    actor_class = ray.remote(worker_class).options(
        num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
        max_restarts=max_restarts, max_task_retries=max_restarts)
    return [actor_class.remote(backend) for _ in range(count)], gpus


def run_sweep(sweep_dir: Path, trajectories: list[Trajectory], backend: str | None,
              address: str | None = None, workers: int | None = None,
              num_gpus: int | None = None, max_restarts: int = 8,
              on_started: Callable[[list[Any]], None] | None = None,
              rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run every trajectory not yet done; returns the final state table. A local Ray that is
    lost (an agent or the raylet died) is started again, up to RAY_RESTARTS times, and the
    trajectories it was running continue from their run directories. `rows`: the state table
    as the caller just read it (st.table), else it is read here."""
    import ray

    from truthloop.sweep.worker import TrajectoryWorker

    rows = st.table(sweep_dir, trajectories) if rows is None else rows
    todo = [t for t, row in zip(trajectories, rows) if not st.is_done(row)]
    # A worker keeps its models while the pair stays the same: a grid over generators or
    # captioners runs one pair's trajectories together (in order within each), so a worker
    # loads a pair once rather than at every change of grid point.
    def pair(t: Trajectory) -> tuple[str, str]:
        return t.config["models"]["generator"], t.config["models"]["captioner"]

    order: dict[tuple[str, str], int] = {}
    for t in todo:
        order.setdefault(pair(t), len(order))
    todo.sort(key=lambda t: order[pair(t)])  # stable: each pair's own order is kept
    started = start_ray(address, num_gpus)
    local = started and not address
    progress = Progress(len(trajectories), len(trajectories) - len(todo),
                        iterations_left(rows, todo))
    try:
        queue = deque(todo)
        restarts = 0
        with progress:
            while True:
                actors, gpus = start_workers(TrajectoryWorker, backend, workers, len(queue),
                                             max_restarts)
                if restarts == 0:
                    if on_started is not None:
                        on_started(actors)
                    if todo:
                        start_note(progress, todo, len(trajectories), len(actors), gpus)
                        again = again_note(rows)
                        if again:
                            progress.note(again)
                        if gpus and len(todo) >= 2 * len(actors):
                            progress.note(batch_hint({pair(t) for t in todo}))
                try:
                    _drive(sweep_dir, rows, queue, actors, progress, local)
                    break
                except NodeLost as lost:
                    if restarts >= RAY_RESTARTS:
                        raise too_many_losses() from None
                    restarts += 1
                    progress.note(heal_note(restarts))
                    queue.extendleft(reversed(lost.unfinished))
                    restart_local_ray(num_gpus)
        for actor in actors:
            ray.kill(actor)
    finally:
        stop_ray(started)
    rows = st.table(sweep_dir, trajectories)
    st.write_table(sweep_dir, rows)
    return rows


def _drive(sweep_dir: Path, rows: list[dict[str, Any]], queue: deque, actors: list[Any],
           progress: Progress, local: bool) -> None:
    """Keep the workers busy until the queue is empty. NodeLost (a local sweep only) when the
    node under them is gone, with every trajectory that was running."""
    import ray

    inflight: dict[Any, tuple[Any, Job]] = {}
    idle = list(actors)
    last_table = last_poll = 0.0

    def lost(*also: Job) -> NodeLost:
        jobs = [job for _, job in inflight.values()] + list(also)
        return NodeLost(sorted((job.trajectory for job in jobs), key=lambda t: t.number))

    while queue or inflight:
        while idle and queue:
            actor, trajectory = idle.pop(), queue.popleft()
            job = Job.started(trajectory, sweep_dir)
            ref = actor.run.remote({"run_dir": str(job.run_dir), "config": trajectory.config})
            inflight[ref] = (actor, job)
        try:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL)
        except ray.exceptions.RaySystemError:
            if local:
                raise lost() from None
            raise
        for ref in ready:
            actor, job = inflight.pop(ref)
            try:
                outcome = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as error:
                if local and not local_node_alive():
                    raise lost(job) from None
                # Out of restarts: this worker is gone for good; the others go on.
                outcome = {"status": "error",
                           "message": f"worker lost: {type(error).__name__}"}
            except ray.exceptions.RayTaskError as error:
                # A bug, not a fault: the worker is fine, this trajectory is not.
                idle.append(actor)
                cause = error.cause if error.cause is not None else error
                outcome = {"status": "error",
                           "message": f"{type(cause).__name__}: {first_line(cause)}"}
            _poll(job, progress)
            row = outcome_row(sweep_dir, job.trajectory, outcome)
            rows[job.trajectory.number] = row
            progress.finished(describe(row), iterations_unused(job.trajectory, row))
        # A stat per running trajectory: every 0.5 s, or less often when there are so
        # many that the stats would keep a shared file system busy (about 1 ms each).
        if time.monotonic() - last_poll > max(POLL, len(inflight) / 1000):
            for _, job in inflight.values():
                _poll(job, progress)
            last_poll = time.monotonic()
        # The table is rewritten whole: every 2 s for a small sweep, less often for a big
        # one (about 1 s per 2,000 rows), so its cost stays a fraction of the driver's.
        if time.monotonic() - last_table > max(TABLE_INTERVAL, len(rows) / 2000):
            _write_table(sweep_dir, rows, inflight)
            last_table = time.monotonic()
        if not idle and not inflight and queue:
            if local and not local_node_alive(wait=0):
                raise lost()
            raise SweepError("every worker was lost; run the same command again to "
                             "continue", code=1)


def start_note(progress: Progress, todo: list[Trajectory], total: int, workers: int, gpus: int,
               each: str = "") -> None:
    progress.note(f"{len(todo)} of {count(total, 'trajectory', 'trajectories')} to run on "
                  f"{count(workers, 'worker')}{each}"
                  f"{f' ({gpus} GPUs)' if gpus else ' (no GPU)'}")
    compiling = compile_note(todo, gpus)
    if compiling:
        progress.note(compiling)


def compile_note(todo: list[Trajectory], gpus: int) -> str | None:
    """Why nothing moves for minutes at first with --compile on GPUs (on a CPU it draws
    eagerly, and nothing compiles)."""
    if not gpus or not any(t.config.get("generate", {}).get("compile") for t in todo):
        return None
    return ("--compile: each worker's first images wait for torch.compile (minutes the first "
            "time on a machine; inductor's cache serves later runs); the rate and the ETA "
            "follow from the images after them")


# Why a trajectory that started before is not done, by its state (run_status: "interrupted" is
# a run whose writer died, as a killed driver's runs are; "running" a run killed while created).
AGAIN = {"interrupted": "interrupted", "running": "interrupted", "stopped": "stopped",
         "error": "after an error", "converged": "to embed"}
NAMED = 5  # the trajectories a rerun's note names; the rest are counted


def again_note(rows: list[dict[str, Any]]) -> str | None:
    """A rerun's one line naming the trajectories that started before (a driver killed, a run
    stopped or failed) and continue now from their run directories: how many, why, the first
    few names. None when every trajectory to run is new."""
    again = [row for row in rows if row["state"] != "pending" and not st.is_done(row)]
    if not again:
        return None
    why: dict[str, int] = {}
    for row in again:
        reason = AGAIN.get(row["state"], row["state"])
        why[reason] = why.get(reason, 0) + 1
    names = ", ".join(visible(row["run"]) for row in again[:NAMED])
    more = f" and {len(again) - NAMED} more" if len(again) > NAMED else ""
    reasons = ", ".join(f"{n} {reason}" for reason, n in why.items())
    where = "continues from its run directory" if len(again) == 1 else \
        "continue from their run directories"
    return (f"{count(len(again), 'trajectory', 'trajectories')} started before {where} "
            f"({reasons}): {names}{more}")


def outcome_row(sweep_dir: Path, trajectory: Trajectory, outcome: dict[str, Any]) -> dict[str, Any]:
    """The trajectory's row as its run directory says, marked as an error if its worker said
    so and the directory could not (a run that never started, a worker lost)."""
    row = st.trajectory_row(sweep_dir, trajectory)
    if outcome.get("status") == "error" and row["state"] != "error":
        row["state"], row["message"] = "error", outcome.get("message")
    return row


def _write_table(sweep_dir: Path, rows: list[dict[str, Any]], inflight: dict) -> None:
    for _, job in inflight.values():
        rows[job.trajectory.number] = st.trajectory_row(sweep_dir, job.trajectory)
    try:
        st.write_table(sweep_dir, rows)
    except OSError:
        pass  # the table is a convenience; the run directories hold the state


def _count_lines(run_dir: Path, offset: int) -> tuple[int, int]:
    """(new size, newlines added since offset) of the run's log.jsonl."""
    path = run_dir / LOG_FILE
    try:
        size = path.stat().st_size
    except OSError:
        return offset, 0
    if size <= offset:
        return size, 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        return size, handle.read(size - offset).count(b"\n")


def _poll(job: Job, progress: Progress) -> None:
    size, lines = _count_lines(job.run_dir, job.log_size)
    if size < job.log_size:  # trimmed by a resume (a torn last line): count from there
        job.log_size = size
    elif lines:
        job.log_size = size
        progress.add_iterations(lines)


def announce_skipped(problems: list[str]) -> None:
    for problem in problems:
        print(f"truthloop: skipped: {visible(problem)}", file=sys.stderr)
