"""`truthloop runs` (issue 21): a fork's start is its parent and iteration, the time columns say
what they count (work: the iterations' own time; wall: each process's start to end), and a run's
name is never broken mid-word."""

from __future__ import annotations

import json

from fork_helpers import make_fork, make_parent
from test_review import make_run
from truthloop.cli import main
from truthloop.lookback.runs import format_duration, list_runs


def _table(capsys, folder) -> str:
    assert main(["runs", str(folder)]) == 0
    return capsys.readouterr().out


def test_a_forks_start_is_its_parent(tmp_path, capsys):
    parent = make_parent(tmp_path / "runs" / "20261206-101500-photo")
    make_fork(parent, 1, tmp_path / "runs" / "20261206-101600-fork1-photo", seed=7)
    rows = {row["run"]: row for row in list_runs(tmp_path / "runs")}
    fork = rows["20261206-101600-fork1-photo"]
    assert fork["parent"]["run"] == parent.name and fork["parent"]["at"] == 1
    assert rows[parent.name]["parent"] is None
    out = _table(capsys, tmp_path / "runs")
    assert "0001.png" not in out  # what the fork's config calls its input image
    fork_line = next(line for line in out.splitlines() if "20261206-101600-fork1-photo" in line)
    start_cell = fork_line.split("│")[2] + " ".join(
        line.split("│")[2] for line in out.splitlines()[out.splitlines().index(fork_line) + 1:]
        if line.startswith("│") and not line.split("│")[1].strip())
    assert " ".join(start_cell.split()).startswith(f"fork of {parent.name} #1")


def test_time_columns_say_what_they_count(tmp_path, capsys):
    run_dir = make_run(tmp_path / "runs")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    # two processes ran it: 2m00s and 32s of wall time; its iterations took far less
    summary["segments"] = [
        {"started": "2026-12-06T10:00:00+0000", "finished": "2026-12-06T10:02:00+0000"},
        {"started": "2026-12-06T11:00:00+0000", "finished": "2026-12-06T11:00:32+0000"}]
    summary_path.write_text(json.dumps(summary))
    row = list_runs(tmp_path / "runs")[0]
    assert row["wall_s"] == 152.0
    out = _table(capsys, tmp_path / "runs")
    assert "work / wall" in out
    assert f"{format_duration(row['duration_s'])} / 2m32s" in out
    assert "work: the iterations' own time" in out and "wall: start to end" in out


def test_run_names_are_never_broken(tmp_path, capsys):
    name = "20261206-101500-a-rather-long-photo-name-from-a-camera"
    make_run(tmp_path / "runs", name=name)
    assert name in _table(capsys, tmp_path / "runs")
