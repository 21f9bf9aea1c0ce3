"""`truthloop runs` (issue 21): a fork's start is its parent and iteration, the time columns say
what they count (work: the iterations' own time; wall: each process's start to end), and a run's
name is never broken mid-word. Issue 30: a sweep directory lists its runs; in a narrow terminal
every run is one line with its status in full and the truth cut, the least needed columns left out
(and named); the models column names the pair as chosen; --json keeps its fields."""

from __future__ import annotations

import json

import pytest

from fork_helpers import make_fork, make_parent
from sweep_fakes import make_sweep
from test_review import make_run
from truthloop.cli import main
from truthloop.lookback.runs import LEAVE_OUT_ORDER, format_duration, list_runs, models_label


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch):
    """The table's width is COLUMNS where set, else 160 into a pipe: none from the caller."""
    monkeypatch.delenv("COLUMNS", raising=False)


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


# -- issue 30 -------------------------------------------------------------------------------------
LONG_TRUTH = "a very long caption about a painting of a harbour " * 6


def test_a_sweep_directory_lists_its_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    trajectories = make_sweep(sweep, ["a1", "b1"], [0, 1])
    names = sorted(t.run_dir(sweep).name for t in trajectories)
    assert len(names) == 4
    out = _table(capsys, sweep)
    assert "no runs" not in out
    assert f"4 runs in {sweep / 'runs'}" in out
    for name in names:
        assert name in out
    assert main(["runs", str(sweep), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["run"] for row in rows] == names
    assert {row["status"] for row in rows} == {"converged"}


def _runs_at(capsys, monkeypatch, folder, columns: int) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["runs", str(folder)]) == 0
    return capsys.readouterr().out.splitlines()


def _narrow_folder(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, name="20261206-101500-photo",
             script={"start": LONG_TRUTH + ", x", LONG_TRUTH: LONG_TRUTH + ", y"})
    make_run(runs, name="20261206-101600-photo", script={}, max_iters=2)  # never repeats
    return runs


@pytest.mark.parametrize("columns", [80, 120])
def test_each_run_is_one_line_that_fits(tmp_path, capsys, monkeypatch, columns):
    lines = _runs_at(capsys, monkeypatch, _narrow_folder(tmp_path), columns)
    assert all(len(line.rstrip()) <= columns for line in lines), "\n".join(lines)
    statuses = {"20261206-101500-photo": "converged", "20261206-101600-photo": "max_iters"}
    for name, status in statuses.items():
        at = [number for number, line in enumerate(lines) if name in line]
        assert len(at) == 1, "\n".join(lines)
        line = lines[at[0]]
        assert f"│{status} " in line  # the whole word, not "co…"
        # the next line is the next run or the table's bottom: nothing wrapped onto it
        following = lines[at[0] + 1]
        assert following.startswith("└") or any(other in following for other in statuses)
    converged = next(line for line in lines if "20261206-101500-photo" in line)
    truth = converged.split("│")[5]
    assert truth.startswith("a very long caption about") and truth.rstrip().endswith("…")
    assert len(truth.strip()) >= 24  # the truth keeps room; columns go first


def test_a_narrow_terminal_leaves_out_the_least_needed_columns_and_says_so(tmp_path, capsys,
                                                                           monkeypatch):
    folder = _narrow_folder(tmp_path)
    narrow = "\n".join(_runs_at(capsys, monkeypatch, folder, 80))
    header = next(line for line in narrow.splitlines() if "truth prompt" in line)
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "run", "status", "iters", "cycle", "truth prompt"]
    said = " ".join(narrow.split("left out to fit 80 columns: ")[1].split())
    assert said.startswith("start, work / wall, models, seed, clauses (")
    wide = "\n".join(_runs_at(capsys, monkeypatch, folder, 120))
    header = next(line for line in wide.splitlines() if "truth prompt" in line)
    shown = [cell.strip() for cell in header.strip("┃").split("┃")]
    assert "models" in shown and "status" in shown
    # what goes is a tail of LEAVE_OUT_ORDER's head: never a more needed column before a less
    left_out = [name for name in LEAVE_OUT_ORDER if name not in shown]
    assert left_out == list(LEAVE_OUT_ORDER[:len(left_out)])
    assert "sd + clip-interrogator (tiny)" in wide
    everything = "\n".join(_runs_at(capsys, monkeypatch, folder, 250))
    assert "left out" not in everything
    assert "clauses" in everything and "work / wall" in everything


def test_the_models_column_names_the_pair_as_chosen(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    seed_pair = make_run(runs, name="20261206-101500-photo")
    other = make_run(runs, name="20261206-101600-photo")
    info = json.loads((other / "run.json").read_text())
    info["config"]["models"] |= {"models": "real", "generator": "sdxl", "captioner": "blip",
                                 "generator_model": "stabilityai/stable-diffusion-xl-base-1.0",
                                 "caption_model": "Salesforce/blip-image-captioning-large"}
    (other / "run.json").write_text(json.dumps(info))
    summary = json.loads((seed_pair / "summary.json").read_text())
    summary["models_loaded"] = {  # what the loader records for a tiny run
        name: {"requested": "x", "repo": None, "revision": None, "path": f"/c/tiny-v3/{short}"}
        for name, short in (("generator_model", "sd"), ("caption_model", "blip"),
                            ("clip_model", "clip/open_clip_model.safetensors"))}
    (seed_pair / "summary.json").write_text(json.dumps(summary))
    rows = {row["run"]: row for row in list_runs(runs)}
    seed_row, other_row = rows[seed_pair.name], rows[other.name]
    assert models_label(seed_row) == "sd + clip-interrogator (tiny random: sd / blip / clip)"
    assert models_label(seed_row, checkpoints=False) == "sd + clip-interrogator (tiny)"
    # not loaded yet: the checkpoints its config names
    assert models_label(other_row) == ("sdxl + blip (stable-diffusion-xl-base-1.0 / "
                                       "blip-image-captioning-large / ViT-L-14/openai)")
    wide = "\n".join(_runs_at(capsys, monkeypatch, runs, 250))
    assert "sd + clip-interrogator (tiny random: sd / blip / clip)" in wide
    assert "sdxl + blip (stable-diffusion-xl-base-1.0" in wide
    assert "sd / blip / clip" not in wide.replace("(tiny random: sd / blip / clip)", "")
    middling = "\n".join(_runs_at(capsys, monkeypatch, runs, 140))
    assert "sd + clip-interrogator (tiny)" in middling and "sdxl + blip" in middling


# Every field `runs --json` had before issue 30: scripts read them, so none may go or be renamed.
JSON_FIELDS = {"run", "path", "start_image", "start_prompt", "parent", "status", "iterations",
               "records", "cycle_start", "cycle_length", "truth_prompts", "duration_s", "wall_s",
               "models", "generator", "captioner", "generator_model", "caption_model",
               "clip_model", "models_loaded", "seed_mode", "seed", "clauses", "feed",
               "max_iters", "started", "finished", "problems"}


def test_runs_json_keeps_its_fields(tmp_path, capsys):
    make_run(tmp_path / "runs")
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert JSON_FIELDS <= set(row)
    assert row["generator"] == "sd" and row["captioner"] == "clip-interrogator"
