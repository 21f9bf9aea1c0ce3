"""Every generator family with every captioner family, end to end on the tiny checkpoints
(issue 22): a run of each pair, resume after a kill, a fork that swaps the captioner, a sweep
whose grid spans two pairs and its atlas. Each family's own agreement with its library's plain
call is in tests/test_family_<name>.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faulthelpers import cli_subprocess, run_main
from truthloop.config import RunConfig, apply_pair_defaults
from truthloop.families import CAPTIONERS, GENERATORS
from truthloop.store import read_run, resume_problem

START = "a red house on a hill, at dusk"


def pair_config(generator: str, captioner: str, iters: int = 3) -> RunConfig:
    config = RunConfig(start_prompt=START)
    config.models.models, config.models.device = "tiny", "cpu"
    config.models.generator, config.models.captioner = generator, captioner
    apply_pair_defaults(config)
    if not GENERATORS[generator].autoregressive:  # (janus-pro draws its checkpoint's tokens)
        # The machinery, quickly: a few denoising steps whatever the family's default.
        config.generate.steps = min(config.generate.steps, 3)
        # z-image's pipeline draws 1024x1024 when no size is given, whatever the checkpoint.
        config.generate.width = config.generate.height = 64
    if CAPTIONERS[captioner].interrogates:
        config.caption.mode, config.caption.chunk_size = "fast", 400
    config.loop.max_iters = iters
    config.validate()
    return config


def run_pair(run_dir: Path, config: RunConfig) -> dict:
    from truthloop.loop import TruthLoop
    from truthloop.ml.backends import load_backends

    return TruthLoop(config, run_dir, load_backends).run()


@pytest.mark.parametrize("generator", list(GENERATORS))
@pytest.mark.parametrize("captioner", list(CAPTIONERS))
def test_every_pair_runs_and_records_what_it_used(tmp_path, generator, captioner):
    config = pair_config(generator, captioner)
    summary = run_pair(tmp_path / "run", config)
    assert summary["status"] in ("converged", "max_iters"), summary
    view = read_run(tmp_path / "run")
    assert view.problems == [] and resume_problem(view) is None
    assert len(view.records) >= 2
    assert all(r.caption.strip() for r in view.records[1:])  # every caption says something
    assert all((tmp_path / "run" / r.image).exists() for r in view.records if r.image)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert recorded["models"]["generator"] == generator
    assert recorded["models"]["captioner"] == captioner
    # The family's own settings were written into the run (resume rebuilds from them).
    assert recorded["generate"]["guidance"] == config.generate.guidance
    assert recorded["caption"]["instruction"] == config.caption.instruction
    loaded = view.summary["models_loaded"]
    assert set(loaded) == {"generator_model", "caption_model", "clip_model"}
    # The drift measures come from the one CLIP every pair loads.
    assert all(r.sim_start is not None for r in view.records[1:] if r.image)


def _wait_for_records(run_dir: Path, count: int, process: subprocess.Popen,
                      timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    records = run_dir / "log.jsonl"
    while time.monotonic() < deadline:
        if records.exists() and len(records.read_text().splitlines()) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("no records in time")


def test_a_new_pair_resumes_after_a_kill_and_matches_an_unbroken_run(tmp_path):
    """flux2-klein + qwen3-vl (both new families): SIGKILL mid-run, `truthloop resume`, and the
    prompts equal an uninterrupted run's; the resumed run rebuilt its pair from run.json."""
    args = ["run", "--prompt", START, "--models", "tiny", "--device", "cpu", "--generator",
            "flux2-klein", "--captioner", "qwen3-vl", "--steps", "40", "--max-iters", "12",
            "--width", "64", "--height", "64",
            "--headless"]
    whole = tmp_path / "whole"
    done = cli_subprocess([*args, "--out", whole])
    assert done.returncode == 0, done.stderr
    broken = tmp_path / "broken"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "truthloop.cli", *args, "--out",
                                str(broken)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_records(broken, 2, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(read_run(broken).records) < 12  # killed mid-run
    resumed = cli_subprocess(["resume", broken, "--headless"])
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = read_run(broken), read_run(whole)
    assert [r.compared for r in ours.records] == [r.compared for r in theirs.records]
    assert ours.config["models"]["generator"] == "flux2-klein"
    assert ours.config["models"]["captioner"] == "qwen3-vl"


def test_a_fork_that_swaps_the_captioner_takes_the_new_familys_settings(tmp_path):
    from truthloop.fork import make_fork_loop, plan_fork
    from truthloop.ml.backends import load_backends

    parent = tmp_path / "parent"
    run_pair(parent, pair_config("sdxl", "blip"))
    plan = plan_fork(parent, 1, {"captioner": "llava-1.5"}, out=tmp_path / "fork")
    assert plan.config.models.captioner == "llava-1.5"
    assert plan.config.caption.instruction == CAPTIONERS["llava-1.5"].defaults["instruction"]
    assert plan.changed["captioner"] == "llava-1.5"
    assert plan.changed["caption_model"] == CAPTIONERS["llava-1.5"].default_model
    assert plan.config.models.generator == "sdxl"  # the other side stays the parent's
    summary = make_fork_loop(plan, load_backends).run()
    assert summary["status"] in ("converged", "max_iters")
    fork = read_run(tmp_path / "fork")
    assert fork.info["parent"]["changed"]["captioner"] == "llava-1.5"
    assert fork.config["models"]["captioner"] == "llava-1.5"
    # Its first caption is of the parent's image 1, by the new captioner.
    assert fork.records[0].caption.strip()


def test_a_sweep_over_two_pairs_and_the_atlas_over_both(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text(START + "\n")
    sweep_dir = tmp_path / "pairs"
    code = run_main(["sweep", sweep_dir, "--prompts", prompts, "--seeds", "1", "--models",
                     "tiny", "--device", "cpu", "--steps", "2", "--max-iters", "4", "--width",
                     "64", "--height", "64",
                     "--grid", "generator=sd,z-image", "--grid", "captioner=blip", "--workers",
                     "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    assert spec["grid"] == {"generator": ["sd", "z-image"], "captioner": ["blip"]}
    runs = sorted((sweep_dir / "runs").iterdir())
    assert len(runs) == 2
    configs = {read_run(run).config["models"]["generator"]: read_run(run).config
               for run in runs}
    # Each grid point has its own family's settings, except what the command line said.
    assert configs["z-image"]["generate"]["guidance"] == GENERATORS["z-image"].defaults["guidance"]
    assert configs["sd"]["generate"]["guidance"] == 7.5
    assert configs["z-image"]["generate"]["steps"] == configs["sd"]["generate"]["steps"] == 2
    assert configs["z-image"]["generate"]["negative_prompt"] == ""
    assert all(c["models"]["captioner"] == "blip" for c in configs.values())
    code = run_main(["atlas", sweep_dir])
    assert code == 0, capsys.readouterr().err
    atlas = json.loads((sweep_dir / "atlas" / "atlas.json").read_text())
    rows = [json.loads(line) for line in (sweep_dir / "trajectories.jsonl").read_text()
            .splitlines()]
    assert atlas["converged"] == sum(r["state"] == "converged" for r in rows)
    for run in runs:  # both pairs' attractors embedded by the one CLIP: one space
        stored = run / "embedding.json"
        if stored.exists():
            assert len(json.loads(stored.read_text())["image"]) == 32  # the tiny CLIP's width
