"""`truthloop sweep` on a local Ray with two logical GPUs (CPU only): designed attractors found with
their basins, resumed and refused sweeps, a worker killed mid-trajectory, bad input, the tiny
real-library models end to end.

One Ray session for the module (starting Ray takes seconds); the CLI's driver finds it running
and uses it. Fake backends are built by name inside the worker processes
(`--backend sweep_fakes:attractor_factory`), so this folder goes on the workers' PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("sklearn")

import sweep_fakes  # noqa: E402
from faulthelpers import (assert_one_clean_error_line, run_main,  # noqa: E402
                          sigkill_a_trajectory_mid_way)
from truthloop.store import read_run, resume_problem  # noqa: E402

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BACKEND = "sweep_fakes:attractor_factory"
PROMPTS = ["a1", "b1", "c1", "e1", "n1"]
# 5 prompts + 2 images (a1's and d1's colours) × 4 seeds = 28 trajectories; expected attractors:
EXPECTED = {("fixA",): 8, ("cycB1", "cycB2"): 4, ("cyc3x", "cyc3y", "cyc3z"): 8, ("fixE",): 4}


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fake-control")


@pytest.fixture(scope="module", autouse=True)
def ray_session(fake_dir, truthloop_cache):
    import ray

    # Worker processes inherit this environment from the Ray started here.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO),
                                                os.environ.get("PYTHONPATH", "")])
    os.environ["TRUTHLOOP_FAKE_DIR"] = str(fake_dir)
    ray.init(num_gpus=2, num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()
    os.environ.pop("TRUTHLOOP_FAKE_DIR", None)


@pytest.fixture
def starts(tmp_path) -> tuple[Path, Path]:
    """A prompts file, and an image folder with two good start images and one broken file."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n# a comment\n")
    images = tmp_path / "images"
    images.mkdir()
    sweep_fakes.start_image("a1").save(images / "alpha.png")
    sweep_fakes.start_image("d1").save(images / "delta.png")
    (images / "broken.png").write_bytes(b"not a png at all")
    return prompts, images


def sweep_args(sweep_dir: Path, starts: tuple[Path, Path], *extra: str) -> list[str]:
    prompts, images = starts
    return ["sweep", str(sweep_dir), "--images", str(images), "--prompts", str(prompts),
            "--seeds", "0-3", "--max-iters", "8", "--backend", BACKEND, *extra]


def paints(fake_dir: Path) -> int:
    log = fake_dir / "paints.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def images_drawn(sweep_dir: Path) -> int:
    return sum(1 for _ in (sweep_dir / "runs").glob("*/images/*.png"))


def attractors(sweep_dir: Path) -> dict[tuple[str, ...], int]:
    atlas = json.loads((sweep_dir / "atlas" / "atlas.json").read_text())
    return {tuple(a["prompts"]): a["basin_size"] for a in atlas["attractors"]}


def atlas_essentials(sweep_dir: Path) -> dict:
    atlas = json.loads((sweep_dir / "atlas" / "atlas.json").read_text())
    return {"attractors": [(a["prompts"], a["basin_size"], sorted(a["members"]), a["motif"])
                           for a in atlas["attractors"]],
            "motifs": [(m["attractors"], m["basin_size"]) for m in atlas["motifs"]],
            "histogram": atlas["cycle_length_histogram"],
            "never": atlas["never_converged_fraction"]}


def test_fake_sweep_finds_the_designed_attractors_with_their_basins(tmp_path, starts, capsys,
                                                                    fake_dir):
    sweep_dir = tmp_path / "sweep"
    before = paints(fake_dir)
    assert run_main(sweep_args(sweep_dir, starts)) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    # The unreadable image is named once, and the sweep goes on without it.
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "broken.png" in skipped[0], err

    atlas = json.loads((sweep_dir / "atlas" / "atlas.json").read_text())
    assert atlas["trajectories"] == 28
    assert attractors(sweep_dir) == EXPECTED
    assert atlas["cycle_length_histogram"] == {"1": 12, "2": 4, "3": 8}
    assert atlas["never_converged_fraction"] == pytest.approx(4 / 28, abs=1e-3)
    assert atlas["not_converged"] == {"max_iters": 4}
    # Motifs: the designed embeddings put {fixA, cycB} and {cyc3, fixE} together.
    motifs = {frozenset(tuple(atlas["attractors"][i]["prompts"]) for i in m["attractors"]):
              m["basin_size"] for m in atlas["motifs"]}
    assert motifs == {frozenset({("fixA",), ("cycB1", "cycB2")}): 12,
                      frozenset({("cyc3x", "cyc3y", "cyc3z"), ("fixE",)}): 12}
    for name in ("atlas.png", "atlas.html"):
        assert (sweep_dir / "atlas" / name).stat().st_size > 0

    # One line per converged trajectory on stdout.
    assert sum(line.startswith("converged") for line in out.splitlines()) == 24
    # The state table: one row per trajectory.
    rows = [json.loads(line) for line in (sweep_dir / "trajectories.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 28 and {r["state"] for r in rows} == {"converged", "max_iters"}
    # Every trajectory is an ordinary, complete run directory; both logical GPUs had a worker.
    run_dirs = sorted((sweep_dir / "runs").iterdir())
    assert len(run_dirs) == 28
    for run_dir in run_dirs:
        view = read_run(run_dir)
        assert not view.problems and resume_problem(view) is None
    writers = {(d / "lock").read_text() for d in run_dirs}
    assert len(writers) == 2
    # Nothing drawn twice.
    assert paints(fake_dir) - before == images_drawn(sweep_dir)


def test_same_command_continues_and_another_spec_is_refused(tmp_path, starts, capsys, fake_dir):
    sweep_dir = tmp_path / "sweep"
    assert run_main(sweep_args(sweep_dir, starts, "--no-atlas")) == 0
    # Stop one trajectory early, as a stop (or a kill) would leave it: its last two records gone.
    run_dir = next((sweep_dir / "runs").glob("*-prompt2-s1"))  # c1: 5 images then the repeat
    log = run_dir / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-2]))
    (run_dir / "images" / f"{len(lines) - 2:04d}.png").unlink()
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["status"] = "stopped"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "embedding.json").unlink()
    capsys.readouterr()
    before = paints(fake_dir)

    assert run_main(sweep_args(sweep_dir, starts)) == 0
    err = capsys.readouterr().err
    # Only the stopped trajectory ran, from where it stopped: one image redrawn.
    assert paints(fake_dir) - before == 1
    assert "1 of 28 trajectories to run" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "converged"
    assert attractors(sweep_dir) == EXPECTED

    # Another spec for the same directory: one line naming the difference, exit 2.
    code = run_main(sweep_args(sweep_dir, starts) + ["--seeds", "0-4"])
    assert code == 2
    line = one_error(capsys.readouterr().err, "seeds")
    assert "0-3" in line and "0-4" in line


def test_a_killed_worker_loses_at_most_the_iteration_in_flight(tmp_path, starts, capsys,
                                                               fake_dir):
    """SIGKILL one worker mid-trajectory: Ray restarts it and retries the call, the trajectory
    continues from its run directory, and the atlas equals an unbroken sweep's."""
    unbroken = tmp_path / "unbroken"
    assert run_main(sweep_args(unbroken, starts)) == 0
    sweep_dir = tmp_path / "killed"
    (fake_dir / "delay").write_text("0.05")
    before = paints(fake_dir)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_main(sweep_args(sweep_dir,
                                                                               starts))))
    thread.start()
    killed = None
    try:
        killed = sigkill_a_trajectory_mid_way(sweep_dir, thread)
    finally:
        (fake_dir / "delay").unlink()
        thread.join(120)
    assert killed is not None, "no trajectory was caught mid-way"
    assert result == [0]
    run_dir, pid = killed
    assert int((run_dir / "lock").read_text()) != pid  # a new process finished it
    view = read_run(run_dir)
    assert not view.problems and resume_problem(view) is None
    assert view.summary["status"] in ("converged", "max_iters")
    # At most one image was drawn and lost (the one in flight when the worker died).
    assert 0 <= paints(fake_dir) - before - images_drawn(sweep_dir) <= 1
    assert atlas_essentials(sweep_dir) == atlas_essentials(unbroken)


def one_error(stderr: str, *needles: str) -> str:
    """One `truthloop: error:` line besides the lines naming skipped images."""
    kept = "\n".join(line for line in stderr.splitlines()
                     if not line.startswith("truthloop: skipped:"))
    return assert_one_clean_error_line(kept, *needles)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_address_is_one_line(tmp_path, starts, capsys):
    code = run_main(sweep_args(tmp_path / "s", starts, "--address", f"127.0.0.1:{free_port()}"))
    assert code == 1
    one_error(capsys.readouterr().err, "cannot reach the Ray cluster")


def test_missing_extras_name_the_install_line(tmp_path, starts, capsys, monkeypatch):
    import truthloop.sweep as sweep_package

    real = sweep_package.find_spec
    monkeypatch.setattr(sweep_package, "find_spec",
                        lambda name: None if name == "ray" else real(name))
    assert run_main(sweep_args(tmp_path / "s", starts)) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "ray is not installed",
                                "pip install 'truthloop[sweep]'")
    assert not (tmp_path / "s").exists()


def test_bad_specs_are_one_line(tmp_path, starts, capsys):
    for extra, needle in ((["--grid", "clauses=x"], "clauses"),
                          (["--grid", "width=64"], "cannot be varied"),
                          (["--seeds", "5-2"], "backwards")):
        assert run_main(sweep_args(tmp_path / "s", starts) + extra) == 2
        one_error(capsys.readouterr().err, needle)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    assert run_main(["sweep", str(tmp_path / "s2"), "--images", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "none of the --images could be read" in err
    assert "Traceback" not in err


def test_local_ray_runs_without_dashboard_and_with_token_auth(tmp_path):
    """The driver's own local Ray (a fresh one, in a child process): no dashboard listening, and
    Ray's token authentication on. What listens is printed for the record (Ray 2.60's gRPC
    servers bind every interface; see README "Sweeps")."""
    script = (
        "import os, subprocess, ray\n"
        "from truthloop.sweep.driver import start_ray\n"
        "start_ray(None, 0)\n"
        "print('AUTH', os.environ.get('RAY_AUTH_MODE'))\n"
        "print(subprocess.run(['ss', '-ltnp'], capture_output=True, text=True).stdout)\n"
        "ray.shutdown()\n")
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "AUTH token" in done.stdout
    listening = [line for line in done.stdout.splitlines() if "LISTEN" in line]
    print("\n".join(listening))
    assert any("gcs_server" in line for line in listening)  # ss saw Ray's own servers
    assert not any(":8265 " in line for line in listening), listening  # no dashboard


def test_tiny_models_end_to_end(tmp_path, tiny_interrogator, capsys):
    """The real libraries (diffusers, BLIP, open_clip via clip-interrogator) at tiny size, on two
    workers: every trajectory ends, embeddings have CLIP's width, the atlas is written."""
    from truthloop.cli import SAMPLE_IMAGE

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red house\n")
    sweep_dir = tmp_path / "tiny"
    code = run_main(["sweep", str(sweep_dir), "--images", str(SAMPLE_IMAGE), "--prompts",
                     str(prompts), "--seeds", "1-2", "--models", "tiny", "--device", "cpu",
                     "--steps", "2", "--width", "64", "--height", "64", "--mode", "fast",
                     "--chunk-size", "400", "--clauses", "1", "--max-iters", "4"])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = [json.loads(line) for line in (sweep_dir / "trajectories.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 4 and all(r["state"] in ("converged", "max_iters") for r in rows), rows
    for run_dir in (sweep_dir / "runs").iterdir():
        view = read_run(run_dir)
        assert view.summary["models_loaded"] and resume_problem(view) is None
        if view.summary["status"] == "converged":
            stored = json.loads((run_dir / "embedding.json").read_text())
            assert len(stored["image"]) == len(stored["text"]) == 32  # the tiny CLIP's width
    atlas = json.loads((sweep_dir / "atlas" / "atlas.json").read_text()) \
        if (sweep_dir / "atlas" / "atlas.json").exists() else None
    converged = sum(r["state"] == "converged" for r in rows)
    if converged:
        assert atlas["converged"] == converged
        assert sum(a["basin_size"] for a in atlas["attractors"]) == converged


def test_a_retargeted_painter_draws_what_a_fresh_one_draws(tiny_models):
    """A worker keeps its models across trajectories of different seeds: after
    `start_trajectory`, the painter's images equal those of a painter made for that seed (the
    shared generator starts over, not where the last trajectory left it)."""
    import numpy as np

    from truthloop.config import GenerateConfig
    from truthloop.ml.generate import Painter

    def config(seed: int) -> GenerateConfig:
        return GenerateConfig(steps=2, width=64, height=64, seed=seed, seed_mode="shared")

    def draw(painter: Painter) -> list:
        return [np.asarray(painter.paint("a red house", lambda *a: None)) for _ in range(2)]

    reused = Painter(tiny_models.pipe, config(1), tiny_models.device)
    draw(reused)  # the first trajectory moves the shared generator on
    reused.start_trajectory(config(2))
    fresh = Painter(tiny_models.pipe, config(2), tiny_models.device)
    for mine, theirs in zip(draw(reused), draw(fresh)):
        assert np.array_equal(mine, theirs)
