"""`truthloop sweep --batch N` on a local Ray (CPU, two logical GPUs): the designed attractors of
sweep_fakes, found by workers that run their trajectories in lockstep; the same trajectories as
one at a time; the batch recorded in each run and in the spec."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("sklearn")

from faulthelpers import run_main  # noqa: E402
from truthloop.store import read_run, resume_problem  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def ray_session(truthloop_cache):
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent),
                                                os.environ.get("PYTHONPATH", "")])
    ray.init(num_gpus=2, num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_a_batched_sweep_is_the_one_at_a_time_sweep(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a1\nb1\nc1\ne1\nn1\n")
    common = ["--prompts", str(prompts), "--seeds", "0-2", "--max-iters", "8", "--no-atlas",
              "--backend", "batch_fakes:attractor_factory"]
    assert run_main(["sweep", tmp_path / "batched", *common, "--batch", "3"]) == 0
    assert run_main(["sweep", tmp_path / "single", *common]) == 0
    runs = sorted(p.name for p in (tmp_path / "single" / "runs").iterdir())
    assert runs == sorted(p.name for p in (tmp_path / "batched" / "runs").iterdir())
    assert len(runs) == 15
    for name in runs:
        batched, single = (read_run(tmp_path / d / "runs" / name) for d in ("batched", "single"))
        assert [r.fed_prompt for r in batched.records] == [r.fed_prompt for r in single.records]
        assert batched.summary["status"] == single.summary["status"]
        assert resume_problem(batched) is None
        assert batched.info["batch"]["size"] == 3 and "batch" not in single.info
        if batched.summary["status"] == "converged":
            assert (tmp_path / "batched" / "runs" / name / "embedding.json").exists()
    spec = json.loads((tmp_path / "batched" / "sweep.json").read_text())
    assert spec["batch"] == 3
    # --batch compiles by default; a worker without CUDA (this one) draws eagerly and says so
    assert spec["config"]["generate"]["compile"] is True
    assert {read_run(tmp_path / "batched" / "runs" / name).config["generate"]["compile"]
            for name in runs} == {False}
    # the same command again: nothing left to do; another --batch is another sweep
    assert run_main(["sweep", tmp_path / "batched", *common, "--batch", "3"]) == 0
    capsys.readouterr()
    assert run_main(["sweep", tmp_path / "batched", *common, "--batch", "2"]) == 2
    assert "batch: was 3, now 2" in capsys.readouterr().err


def test_batch_options_that_cannot_go_together_say_so(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a1\n")
    common = ["--prompts", str(prompts), "--seeds", "1", "--backend", "batch_fakes:attractor_factory"]
    assert run_main(["sweep", tmp_path / "a", *common, "--exact", "--batch", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["truthloop: error: --exact runs one trajectory at a time: leave out --batch, "
                   "or leave out --exact"]
    assert not (tmp_path / "a").exists()
