"""Helpers for the reliability and bad-input tests: the real CLI in-process with fake backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fakes
from truthloop import cli
from truthloop.store import decode_problem, is_locked

REPO = Path(__file__).resolve().parent.parent

# start image -> "step 0" -> "step 1" ... "step 5" -> "step 2": a 4-cycle found at iteration 6.
SCRIPT = {f"step {i}": f"step {i + 1}" for i in range(5)} | {"step 5": "step 2"}
TRAJECTORY = ["step 0", "step 1", "step 2", "step 3", "step 4", "step 5", "step 2"]


def fake_start_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fakes.start_image().save(path)
    return path


def use_fakes(monkeypatch, captioner=None, painter=None, factory=None):
    """Make the CLI build fake backends instead of loading models; returns (captioner, painter)."""
    captioner = captioner or fakes.FakeCaptioner(SCRIPT, start="step 0")
    painter = painter or fakes.FakePainter()
    build = factory or fakes.factory(captioner, painter)
    monkeypatch.setattr(cli, "_loading_factory", lambda control: build)
    return captioner, painter


def count_loads(monkeypatch) -> list:
    """The real CLI path, its checks before loading included, with the model loader replaced: it
    records each load's config and hands the loop fake backends. An empty list: no model was
    ever loaded."""
    import truthloop.ml.backends as backends

    calls: list = []

    def load(config, emit):
        calls.append(config)
        return fakes.factory(fakes.FakeCaptioner(SCRIPT, start="step 0"),
                             fakes.FakePainter())(config, emit)

    monkeypatch.setattr(backends, "load_backends", load)
    return calls


def run_main(argv: list[str]) -> int:
    return cli.main([str(a) for a in argv])


def prompts(run_dir: Path) -> list[str]:
    from truthloop.store import read_run

    return [r.compared for r in read_run(run_dir).records]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def assert_one_clean_error_line(stderr: str, *needles: str) -> str:
    """stderr holds one `truthloop: error:` line (plus at most a 'run directory kept' note)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("truthloop: error:")]
    assert len(errors) == 1, stderr
    extra = [line for line in lines if line not in errors and not line.startswith(
        ("run directory kept:", "run directory:", "resuming:", "models ready", "note:",
                                           "continue with:"))]
    assert not extra, stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def cli_subprocess(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "truthloop.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def image_ok(path: Path) -> bool:
    return decode_problem(path) is None


def sigkill_a_trajectory_mid_way(sweep_dir: Path, sweep: Any) -> tuple[Path, int] | None:
    """While the sweep thread `sweep` runs, SIGKILL the process writing the first trajectory
    found with two records and its lock held (a worker mid-trajectory); a run directory that
    process left unfinished and its pid, or None if the sweep ended first.

    The trajectory may end between the look and the kill (a busy machine widens that window),
    and a lockstep worker holds an ended trajectory's lock until its batch ends: the run
    returned is one the dead process had under way, and when it had none, the search goes on."""
    runs = sweep_dir / "runs"
    spared: set[int] = set()
    while sweep.is_alive():
        for run_dir in sorted(runs.glob("*")) if runs.exists() else []:
            log = run_dir / "log.jsonl"
            if not is_locked(run_dir) or not log.exists() or log.read_text().count("\n") < 2:
                continue
            pid = _lock_holder(run_dir)
            if pid is None or pid in spared:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            while is_locked(run_dir) and _lock_holder(run_dir) == pid:
                time.sleep(0.01)  # until the kernel has let the dead process's locks go
            for left in sorted(runs.glob("*")):
                if _lock_holder(left) == pid and _summary_status(left) == "running":
                    return left, pid
            spared.add(pid)  # everything it wrote had ended just before the kill
        time.sleep(0.01)
    return None


def _lock_holder(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "lock").read_text())
    except (OSError, ValueError):  # no lock yet, or a new writer between truncate and write
        return None


def _summary_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None
