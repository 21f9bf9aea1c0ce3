#!/usr/bin/env python
"""Kill headless truthloop runs at random instants and prove nothing is lost.

Each trial starts `truthloop demo --headless` (tiny random models, CPU) in a subprocess, SIGKILLs it
at a random moment (while Python and the models load, mid-denoising, mid-write), then checks:

  * the run directory reads back without error (store.read_run) and nothing half-written is visible
    to a reader: every log line but a torn last one parses, every image named by a record and every
    images/*.png decodes, run.json rebuilds a valid config;
  * `truthloop resume DIR` continues (exit 0, no traceback), and the finished log's prompts and end
    status equal an uninterrupted run's (reseed and `--seed-mode shared`);
  * a kill before the run directory existed leaves nothing behind, and the same command starts over.

Half the trials run the writer through a "slow writes" shim (every file write split into chunks with
pauses, every log line written in two halves, a pause before each rename), so a random kill lands
mid-write often: torn log lines and orphan temp files are exercised, not just hoped for.

    python scripts/fault_trials.py --trials 30            # prints one row per trial and a summary
    python scripts/fault_trials.py --trials 4 --keep DIR  # keep the run directories for a look

Exit status: 0 when every trial passed; 1 on any corrupt directory, failed resume or trajectory
mismatch. Uses TRUTHLOOP_CACHE (tiny models and label embeddings) like the CLI does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Long enough to have several iterations to cut into; short enough for 30 trials on two cores.
RUN_ARGS = ["demo", "--headless", "--clauses", "0", "--max-iters", "5"]
MODES = ("reseed", "shared")
SLOW_DELAY = 0.04


# -- the child: the real CLI, optionally with slowed-down writes --------------------------------
def install_slow_writes(delay: float = SLOW_DELAY) -> None:
    """Make every write in truthloop.store slow and piecewise (the code paths stay the real ones)."""
    import builtins
    import os as real_os

    from truthloop import store

    real_open = builtins.open

    class SlowFile:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            size = max(1, len(data) // 4)
            written = 0
            for start in range(0, len(data), size):
                written += self._handle.write(data[start:start + size])
                self._handle.flush()
                time.sleep(delay)
            return written

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            self._handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

    def slow_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return SlowFile(handle) if ("w" in mode or "a" in mode) else handle

    class SlowOs:
        def __getattr__(self, name):
            return getattr(real_os, name)

        def write(self, fd, data):  # a log line lands in two halves: a kill can tear it
            half = max(1, len(data) // 2)
            written = real_os.write(fd, data[:half])
            time.sleep(delay)
            if half < len(data):
                written += real_os.write(fd, data[half:])
            return written

        def replace(self, src, dst):
            time.sleep(delay)
            return real_os.replace(src, dst)

    store.open = slow_open
    store.os = SlowOs()


def child_main(argv: list[str]) -> int:
    install_slow_writes()
    from truthloop.cli import main

    return main(argv)


# -- driving ------------------------------------------------------------------------------------
def child_env(cache: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    if cache:
        env["TRUTHLOOP_CACHE"] = cache
    return env


def cli(args: list[str], slow: bool = False) -> list[str]:
    if slow:
        return [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    return [sys.executable, "-m", "truthloop.cli", *args]


def run_args(mode: str, out: Path) -> list[str]:
    return [*RUN_ARGS, "--seed-mode", mode, "--out", str(out)]


def trajectory(out: Path) -> list[tuple[str, str, int | None]]:
    from truthloop.store import read_run

    return [(r.compared, r.fed_prompt, r.repeat_of) for r in read_run(out).records]


@dataclass
class Reference:
    mode: str
    prompts: list[tuple[str, str, int | None]]
    status: str
    seconds: dict[bool, float] = field(default_factory=dict)  # slow writes? -> wall time
    iteration: dict[bool, float] = field(default_factory=dict)  # slow writes? -> s/iteration


def reference(mode: str, workdir: Path, env: dict[str, str], slow_too: bool = True) -> Reference:
    """An uninterrupted run (and its wall time, with and without slow writes)."""
    from truthloop.store import read_run

    ref = None
    for slow in ((False, True) if slow_too else (False,)):
        out = workdir / f"reference-{mode}{'-slow' if slow else ''}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.monotonic()
        done = subprocess.run(cli(run_args(mode, out), slow), env=env, capture_output=True,
                              text=True)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            raise SystemExit(f"reference run ({mode}) failed:\n{done.stderr}")
        view = read_run(out)
        totals = [r.timings["total"] for r in view.records if r.image]
        if ref is None:
            ref = Reference(mode, trajectory(out), view.status)
        elif (trajectory(out), view.status) != (ref.prompts, ref.status):
            raise SystemExit(f"the slow-writes reference ({mode}) differs from the plain one")
        ref.seconds[slow] = seconds
        ref.iteration[slow] = sum(totals) / max(1, len(totals))
    return ref


def inspect(out: Path, ref: Reference, finished: bool) -> list[str]:
    """What a reader would trip on in `out`; [] when it is sound. `finished`: no torn line allowed."""
    from truthloop.config import RunConfig
    from truthloop.store import (IMAGES_DIR, LOG_FILE, RunDirError, decode_problem, image_name,
                                 read_run)

    problems: list[str] = []
    strays = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.creating-")]
    if not out.exists():
        # A kill while the directory was being created leaves a hidden staging folder that no
        # reader lists (`runs` skips hidden names) and the next run removes; after that next
        # run (finished=True) none may be left.
        return [f"half-created directory left behind: {strays}"] if strays and finished else []
    if strays and finished:
        problems.append(f"half-created directory left behind: {strays}")
    try:
        view = read_run(out)
    except RunDirError as error:
        return [f"read_run: {error}"]
    for problem in view.problems:
        if finished or "last line is incomplete" not in problem:
            problems.append(problem)
    try:
        RunConfig.from_dict(view.config)
    except Exception as error:  # noqa: BLE001
        problems.append(f"run.json config: {error}")
    data = (out / LOG_FILE).read_bytes() if (out / LOG_FILE).exists() else b""
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines()
    if len(complete) != len(view.records):
        problems.append(f"log.jsonl: {len(complete)} complete lines but {len(view.records)} records")

    def decodes(path: Path) -> bool:
        return decode_problem(path) is None

    for number, record in enumerate(view.records):
        if record.index != number:
            problems.append(f"record {number} has index {record.index}")
        name = record.image
        if name is not None and (name != image_name(number) or not decodes(out / name)):
            problems.append(f"{name}: named by record {number} but missing or unreadable")
    for path in sorted((out / IMAGES_DIR).glob("*.png")):
        if not decodes(path):
            problems.append(f"{path}: a partial PNG is visible")
    if (out / "input.png").exists() and not decodes(out / "input.png"):
        problems.append("input.png unreadable")
    got = [(r.compared, r.fed_prompt, r.repeat_of) for r in view.records]
    if got != ref.prompts[: len(got)]:
        problems.append("the log's prompts differ from the uninterrupted run's")
    if finished:
        stale = [str(p.relative_to(out)) for p in out.rglob(".*.tmp-*")]
        if stale:
            problems.append(f"stale temp files after resume: {stale}")
    return problems


def phase_of(out: Path, stderr: str, exited: bool) -> str:
    """Where the kill landed, judged from what it left."""
    from truthloop.store import IMAGES_DIR, LOG_FILE

    if exited:
        return "after exit"
    if not out.exists():
        return "startup (no dir)"
    log = out / LOG_FILE
    data = log.read_bytes() if log.exists() else b""
    if data and not data.endswith(b"\n"):
        return "mid log line"
    if list(out.rglob(".*.tmp-*")):
        return "mid file write"
    lines = data.count(b"\n")
    images = len(list((out / IMAGES_DIR).glob("*.png")))
    if images > lines:
        return "image saved, no line"
    if "models ready" not in stderr:
        return "model load"
    return f"iteration {lines}"


@dataclass
class Trial:
    number: int
    mode: str
    slow: bool
    kill_at: float
    phase: str = ""
    killed: bool = False
    corrupt: list[str] = field(default_factory=list)
    resumed: bool = False
    equal: bool = False
    note: str = ""


def run_trial(trial: Trial, ref: Reference, workdir: Path, env: dict[str, str],
              kill_when: Callable[[Path, float], bool] | None = None) -> Trial:
    """Start a run, SIGKILL it at `trial.kill_at` seconds (or when `kill_when` says), check,
    resume, compare with `ref`."""
    out = workdir / f"trial-{trial.number:03d}-{trial.mode}{'-slow' if trial.slow else ''}"
    shutil.rmtree(out, ignore_errors=True)
    err_path = workdir / f"{out.name}.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cli(run_args(trial.mode, out), trial.slow), env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        start = time.monotonic()
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            if (kill_when(out, elapsed) if kill_when else elapsed >= trial.kill_at):
                proc.kill()  # SIGKILL: no handler, no cleanup
                trial.killed = True
                break
            time.sleep(0.002)
        proc.wait()
        trial.kill_at = time.monotonic() - start
    stderr = err_path.read_text(errors="replace")
    trial.phase = phase_of(out, stderr, exited=not trial.killed)
    if not trial.killed and proc.returncode != 0:
        trial.corrupt.append(f"run exited {proc.returncode}: {stderr.strip()[-300:]}")
    trial.corrupt += inspect(out, ref, finished=False)
    if trial.corrupt:
        return trial
    if out.exists():
        again = subprocess.run(cli(["resume", str(out), "--headless"]), env=env,
                               capture_output=True, text=True)
    else:  # killed before the run directory existed: the user just runs the command again
        again = subprocess.run(cli(run_args(trial.mode, out)), env=env, capture_output=True,
                               text=True)
        trial.note = "re-run (no dir yet)"
    trial.resumed = again.returncode == 0 and "Traceback" not in again.stderr
    if not trial.resumed:
        trial.note = f"resume exited {again.returncode}: {again.stderr.strip()[-300:]}"
        return trial
    trial.corrupt += inspect(out, ref, finished=True)
    from truthloop.store import read_run

    trial.equal = trajectory(out) == ref.prompts and read_run(out).status == ref.status
    if not trial.equal and not trial.note:
        trial.note = f"trajectory or status differs ({read_run(out).status} vs {ref.status})"
    return trial


def after_ready(lines: int, delay: float) -> Callable[[Path, float], bool]:
    """Kill `delay` seconds after the run has `lines` complete log lines and its models loaded."""
    seen: list[float] = []

    def when(out: Path, elapsed: float) -> bool:
        if not seen:
            log = out / "log.jsonl"
            err = out.parent / f"{out.name}.stderr"
            count = log.read_bytes().count(b"\n") if log.exists() else 0
            ready = count > 0 or (err.exists() and "models ready" in err.read_text(errors="replace"))
            if ready and count >= lines:
                seen.append(elapsed)
        return bool(seen) and elapsed - seen[0] >= delay

    return when


def mid_write(lines: int) -> Callable[[Path, float], bool]:
    """Kill at the first moment, once the log has `lines` lines, that a write is half done: a
    temp file is being filled or renamed, or a log line is torn (slow-writes trials only)."""

    def when(out: Path, elapsed: float) -> bool:
        log = out / "log.jsonl"
        data = log.read_bytes() if log.exists() else b""
        if data.count(b"\n") < lines:
            return False
        torn = bool(data) and not data.endswith(b"\n")
        return torn or any(out.glob(".*.tmp-*")) or any(out.glob("images/.*.tmp-*"))

    return when


def schedule(number: int, rng: random.Random, refs: dict[str, Reference]):
    """Trial `number`: mode, slow writes, kill instant (seconds) and kill condition.

    A third of the kills fall at a uniformly random time of the whole run (mostly interpreter
    start-up and model loading, which dominate a tiny run); the rest inside a random iteration:
    with plain writes at a random instant of it (mostly denoising), with slow writes at the first
    half-done write of it (an image or summary being written or renamed, a log line torn).
    """
    mode = MODES[number % 2]
    slow = (number // 2) % 2 == 1
    ref = refs[mode]
    if number % 3 == 0:
        return mode, slow, rng.uniform(0.0, 0.97 * ref.seconds[slow]), None
    images = sum(1 for _ in ref.prompts) - (1 if ref.status == "converged" else 0)
    lines = rng.randrange(max(1, images))
    if slow:
        return mode, slow, 0.0, mid_write(lines)
    return mode, slow, 0.0, after_ready(lines, rng.uniform(0.0, ref.iteration[slow]))


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1, help="seed for the kill instants")
    parser.add_argument("--keep", help="work in this directory and keep it (default: a temp dir)")
    parser.add_argument("--cache", help="TRUTHLOOP_CACHE for the runs (default: the environment's)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run side by side")
    args = parser.parse_args(argv)

    env = child_env(args.cache)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="truthloop-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    try:
        # Warm the cache (tiny models, label embeddings) so load times below are representative.
        subprocess.run(cli([*RUN_ARGS, "--max-iters", "1", "--out", str(workdir / "warmup")]),
                       env=env, capture_output=True)
        refs = {mode: reference(mode, workdir, env) for mode in MODES}
        for mode, ref in refs.items():
            print(f"reference {mode}: {len(ref.prompts)} records, {ref.status}, "
                  f"{ref.seconds[False]:.1f}s plain / {ref.seconds[True]:.1f}s slow writes",
                  flush=True)
        print(f"{'#':>3} {'mode':7} {'writes':6} {'kill@':>6}  {'phase':22} {'corrupt':7} "
              f"{'resumed':7} {'equal':5}  note")
        plans = [schedule(number, rng, refs) for number in range(args.trials)]

        def one(number: int) -> Trial:
            mode, slow, kill_at, when = plans[number]
            return run_trial(Trial(number, mode, slow, kill_at), refs[mode], workdir, env,
                             kill_when=when)

        from concurrent.futures import ThreadPoolExecutor

        trials = []
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for trial in pool.map(one, range(args.trials)):
                trials.append(trial)
                number, mode, slow = trial.number, trial.mode, trial.slow
                print(f"{number:3d} {mode:7} {'slow' if slow else 'plain':6} "
                      f"{trial.kill_at:6.2f}  {trial.phase:22} "
                      f"{'YES' if trial.corrupt else 'no':7} {'yes' if trial.resumed else 'NO':7} "
                      f"{'yes' if trial.equal else 'NO':5}  "
                      f"{'; '.join(trial.corrupt) or trial.note}", flush=True)
        killed = [t for t in trials if t.killed]
        survived = [t for t in killed if not t.corrupt and t.resumed and t.equal]
        corrupt = [t for t in trials if t.corrupt]
        equal = [t for t in trials if t.equal]
        phases: dict[str, int] = {}
        for t in killed:
            key = "iteration" if t.phase.startswith("iteration") else t.phase
            phases[key] = phases.get(key, 0) + 1
        print("kill phases: " + ", ".join(f"{k} {v}" for k, v in sorted(phases.items())))
        print(f"trials {len(trials)}  kills {len(killed)}  kills survived {len(survived)}  "
              f"corrupt {len(corrupt)}  resumed-equal {len(equal)}/{len(trials)}")
        print(json.dumps({"trials": len(trials), "kills": len(killed),
                          "survived": len(survived), "corrupt": len(corrupt),
                          "resumed_equal": len(equal)}))
        return 0 if not corrupt and len(equal) == len(trials) else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
