"""Where each trajectory of a sweep stands, read from its run directory (no Ray, no torch).

The run directories are the truth: the driver, `truthloop view SWEEP_DIR` and the atlas all derive
the state table from them, so a killed driver or worker leaves nothing to reconcile. The driver
also writes the table to `trajectories.jsonl` (one row per trajectory) for scripts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from truthloop.store import (
    LOG_FILE, RUN_FILE, SUMMARY_FILE, RunDirError, atomic_write_bytes, json_bytes,
    read_valid_run_info, run_status,
)
from truthloop.sweep.spec import TABLE_FILE, Trajectory

EMBEDDING_FILE = "embedding.json"
# A trajectory in one of these states needs no more work (converged ones also need embedding.json).
DONE = ("converged", "max_iters")


def last_record(run_dir: Path, tail: int = 65536) -> dict[str, Any] | None:
    """The last complete line of log.jsonl as a dict, reading only the file's tail."""
    path = Path(run_dir) / LOG_FILE
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - tail))
            data = handle.read()
    except OSError:
        return None
    end = data.rfind(b"\n")
    if end < 0:
        return None
    start = data.rfind(b"\n", 0, end) + 1
    try:
        record = json.loads(data[start:end])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def trajectory_row(sweep_dir: Path, trajectory: Trajectory) -> dict[str, Any]:
    """The state row of one trajectory: what the table shows and trajectories.jsonl holds."""
    run_dir = trajectory.run_dir(sweep_dir)
    row: dict[str, Any] = {
        "number": trajectory.number, "run": trajectory.name, "start": trajectory.label,
        "seed": trajectory.seed, "settings": trajectory.settings, "state": "pending",
        "iterations": 0, "index": None, "caption": None, "cycle": None, "truth": None,
        "embedded": False,
    }
    if not (run_dir / RUN_FILE).exists():
        return row
    try:
        read_valid_run_info(run_dir)
    except RunDirError as error:
        # Damaged (a truncated run.json): whatever its summary says, the run cannot be opened,
        # resumed or trusted. Said as the run view says it, less the sweep's own path.
        row["state"] = "damaged"
        row["message"] = str(error).replace(f"{run_dir}/", "")
        return row
    summary = read_summary(run_dir) or {}
    # No summary yet beside a run.json: a run being created (or killed while it was).
    status = run_status(run_dir, summary, missing="running")
    row["state"] = status
    last = last_record(run_dir)
    if last is not None:
        row["index"] = last.get("index")
        caption = last.get("caption")
        row["caption"] = caption if isinstance(caption, str) else last.get("fed_prompt")
        # Images drawn so far: the last record has one unless it is the repeat found.
        index = last.get("index") if isinstance(last.get("index"), int) else -1
        row["iterations"] = index + (1 if last.get("image") else 0)
    if isinstance(summary.get("iterations"), int) and status != "running":
        row["iterations"] = summary["iterations"]
    if status == "converged":
        row["cycle"] = summary.get("cycle")
        truths = summary.get("truth_prompts") or []
        row["truth"] = truths[0] if truths else None
    if status == "error":
        row["message"] = summary.get("message")
    row["embedded"] = (run_dir / EMBEDDING_FILE).exists()
    return row


def is_done(row: dict[str, Any]) -> bool:
    return row["state"] in DONE and (row["state"] != "converged" or row["embedded"])


def table(sweep_dir: Path, trajectories: list[Trajectory]) -> list[dict[str, Any]]:
    return [trajectory_row(sweep_dir, t) for t in trajectories]


def write_table(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """trajectories.jsonl, rewritten whole and renamed into place (a reader never sees half)."""
    data = b"".join(json_bytes(row) + b"\n" for row in rows)
    atomic_write_bytes(Path(sweep_dir) / TABLE_FILE, data)
