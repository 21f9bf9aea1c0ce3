"""`truthloop sweep`'s refusals and words, none of which needs Ray to run: a failed --address
leaves nothing behind, a sweep that starts at the same instant is told another holds the
directory, a changed --batch is named, empty --seeds and image-less folders are refused, the help
and the plurals read right, and the sweep package leaves torch to ml/.
"""

from __future__ import annotations

import ast
import fcntl
import os
import socket
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from faulthelpers import assert_one_clean_error_line, run_main  # noqa: E402
from truthloop.sweep.spec import Trajectory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BACKEND = "sweep_fakes:attractor_factory"


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a1\nb1\n")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def args(sweep_dir: Path, prompts_file: Path, *extra: str) -> list[str]:
    return ["sweep", str(sweep_dir), "--prompts", str(prompts_file), "--max-iters", "8",
            "--backend", BACKEND, *extra]


@pytest.fixture
def no_ray(monkeypatch):
    """The sweep's Ray part replaced: what the command writes before it is what is tested."""
    import truthloop.sweep.command as command

    ran: list[Path] = []
    monkeypatch.setattr(command, "_run", lambda a, sweep_dir, spec: ran.append(sweep_dir) or 0)
    return ran


def test_a_failed_address_writes_nothing_and_a_corrected_retry_is_not_refused(
        tmp_path, prompts_file, capsys, no_ray):
    sweep_dir = tmp_path / "s"
    code = run_main(args(sweep_dir, prompts_file, "--seeds", "0-3", "--address",
                         f"127.0.0.1:{free_port()}"))
    assert code == 1
    assert_one_clean_error_line(capsys.readouterr().err, "cannot reach the Ray cluster")
    assert not sweep_dir.exists()
    # The same directory, other seeds: not "holds another sweep".
    assert run_main(args(sweep_dir, prompts_file, "--seeds", "4-5")) == 0
    assert no_ray == [sweep_dir]
    # An existing empty directory is left as it was found, too.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_main(args(empty, prompts_file, "--address", f"127.0.0.1:{free_port()}")) == 1
    assert list(empty.iterdir()) == []


def test_ray_that_never_started_takes_back_what_was_written(tmp_path, prompts_file, capsys,
                                                            monkeypatch):
    import truthloop.sweep.command as command
    from truthloop.sweep.driver import SweepError

    def fails(a, sweep_dir, spec):
        error = command.CommandError("cannot start Ray here: boom", code=1)
        error.started = False
        raise error

    monkeypatch.setattr(command, "_run", fails)
    sweep_dir = tmp_path / "s"
    assert run_main(args(sweep_dir, prompts_file)) == 1
    assert_one_clean_error_line(capsys.readouterr().err, "cannot start Ray here")
    assert not sweep_dir.exists()
    assert SweepError("x").started  # by default an error comes from a sweep that ran


def test_a_sweep_starting_at_the_same_instant_is_told_another_holds_the_directory(
        tmp_path, prompts_file, capsys, no_ray):
    """The winner has made the directory and holds sweep.lock, and its sweep.json is still
    being written (only its temporary file exists): the loser names the other sweep."""
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / ".sweep.json.tmp-12345").write_text("{")
    fd = os.open(sweep_dir / "sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_main(args(sweep_dir, prompts_file)) == 2
        assert_one_clean_error_line(capsys.readouterr().err,
                                    "is being run by another `truthloop sweep`")
        # Only the lock file held (the winner has not begun its spec): the same.
        (sweep_dir / ".sweep.json.tmp-12345").unlink()
        assert run_main(args(sweep_dir, prompts_file)) == 2
        assert_one_clean_error_line(capsys.readouterr().err, "being run by another")
    finally:
        os.close(fd)
    assert no_ray == []
    # A directory of someone else's files is still refused as such.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_main(args(other, prompts_file)) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "is not a sweep directory")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_changed_batch_is_named(tmp_path, prompts_file, capsys, no_ray):
    sweep_dir = tmp_path / "s"
    assert run_main(args(sweep_dir, prompts_file)) == 0
    capsys.readouterr()
    assert run_main(args(sweep_dir, prompts_file, "--batch", "4")) == 2
    line = assert_one_clean_error_line(capsys.readouterr().err, "holds another sweep")
    assert "batch: was 1, now 4" in line and "compile" not in line


def test_empty_seeds_and_an_image_less_folder_are_refused(tmp_path, prompts_file, capsys,
                                                           no_ray):
    assert run_main(args(tmp_path / "s", prompts_file, "--seeds", "")) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "--seeds is empty")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    assert run_main(["sweep", str(tmp_path / "s2"), "--images", str(folder)]) == 2
    line = assert_one_clean_error_line(capsys.readouterr().err, str(folder),
                                       "the folder has no images")
    assert "could be read" not in line
    assert no_ray == []
    assert not (tmp_path / "s").exists() and not (tmp_path / "s2").exists()


def test_a_grid_value_of_the_wrong_type_is_named_in_plain_words(tmp_path, prompts_file, capsys,
                                                                 no_ray):
    assert run_main(args(tmp_path / "s", prompts_file, "--grid", "steps=abc")) == 2
    line = assert_one_clean_error_line(capsys.readouterr().err, "--grid steps: 'abc'",
                                       "is not a whole number")
    assert "a int" not in line
    assert not (tmp_path / "s").exists()


def test_what_the_workers_could_not_load_is_refused_before_anything_is_written(
        tmp_path, prompts_file, capsys, monkeypatch, no_ray):
    """A local sweep of the real models checks them on this machine first, as `run` does:
    --fp8 on a CPU, a checkpoint under --models tiny, a model not here (every one named, each
    with its `hf download`, over every pair of the grid). Nothing written, Ray never started."""
    import huggingface_hub.constants

    from truthloop.ml.fp8 import fp8_refusal
    from truthloop.ml.models import pick_device

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    sweep_dir = tmp_path / "s"
    base = ["sweep", str(sweep_dir), "--prompts", str(prompts_file), "--max-iters", "4"]
    if fp8_refusal(pick_device("auto")) is not None:
        assert run_main([*base, "--models", "tiny", "--fp8"]) == 2
        assert_one_clean_error_line(capsys.readouterr().err, "--fp8 needs an NVIDIA GPU")
    assert run_main([*base, "--models", "tiny", "--clip-model", "ViT-B-32/openai"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "--clip-model chooses a checkpoint",
                                "--models is tiny")
    assert run_main([*base, "--generator-model", "nosuchorg/nosuchmodel",
                     "--grid", "captioner=clip-interrogator,florence-2"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "'nosuchorg/nosuchmodel'",
                                "caption model 'blip-large'",
                                "caption model 'florence-community/Florence-2-large'",
                                "`hf download timm/vit_large_patch14_clip_224.openai`")
    assert not sweep_dir.exists() and no_ray == []


def test_a_reruns_note_names_what_continues_and_counts_the_rest():
    from truthloop.sweep.driver import again_note

    def row(number, state, embedded=False):
        return {"number": number, "run": f"{number:05d}-p-s0", "state": state,
                "embedded": embedded}

    assert again_note([row(0, "pending"), row(1, "max_iters"), row(2, "converged", True)]) \
        is None
    rows = [row(n, "interrupted") for n in range(6)] + [row(6, "error"), row(7, "pending")]
    assert again_note(rows) == (
        "7 trajectories started before continue from their run directories (6 interrupted, "
        "1 after an error): 00000-p-s0, 00001-p-s0, 00002-p-s0, 00003-p-s0, 00004-p-s0 and 2 more")
    assert again_note([row(3, "stopped")]) == (
        "1 trajectory started before continues from its run directory (1 stopped): 00003-p-s0")


def test_sweep_help_shows_no_placeholders(capsys):
    with pytest.raises(SystemExit) as done:
        run_main(["sweep", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--prompts" in text and "--batch" in text
    for bad in ("SUPPRESS", "(default: [])", "default: not set", "--max-restarts",
                "--backend"):
        assert bad not in text, bad


def test_counts_agree_with_their_nouns():
    from truthloop.sweep.driver import describe, start_note

    row = {"state": "converged", "number": 0, "run": "00000-x", "iterations": 1,
           "cycle": {"length": 1}, "truth": "a house"}
    assert "after 1 image:" in describe(row)
    assert "after 2 images:" in describe(row | {"iterations": 2})
    assert describe(row | {"state": "running"}).endswith(": 1 image")

    class Notes:
        def __init__(self):
            self.lines = []

        def note(self, line):
            self.lines.append(line)

    def todo(count: int, compile: bool = False) -> list:
        return [Trajectory(i, f"{i:05d}", {"prompt": "x"}, 0, {},
                           {"generate": {"compile": compile}}) for i in range(count)]

    notes = Notes()
    start_note(notes, todo(1), 1, 1, 0)
    start_note(notes, todo(2), 28, 2, 2)
    assert notes.lines == ["1 of 1 trajectory to run on 1 worker (no GPU)",
                           "2 of 28 trajectories to run on 2 workers (2 GPUs)"]


def test_a_compiled_sweep_on_gpus_says_why_its_first_images_wait():
    """With --compile on GPUs the first images wait minutes for torch.compile while the bar
    shows no rate: the sweep says so at the start; not on a CPU (it draws eagerly there)."""
    from truthloop.sweep.driver import compile_note

    def todo(compile: bool) -> list:
        return [Trajectory(0, "00000", {"prompt": "x"}, 0, {},
                           {"generate": {"compile": compile}})]

    assert "each worker's first images wait for torch.compile" in compile_note(todo(True), 1)
    assert compile_note(todo(True), 0) is None and compile_note(todo(False), 2) is None


def test_the_sweep_package_leaves_torch_to_ml():
    for path in (REPO / "truthloop" / "sweep").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "torch" or n.startswith("torch.") for n in names), path


def test_the_readmes_offline_sweep_example_brings_its_own_files():
    """Every file the offline example names is in the repository or made by the example."""
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("# offline, on a CPU", 1)[1].split("```", 1)[0]
    made = set(re.findall(r"> (\S+)", block))
    named = re.findall(r"--(?:prompts|images) (\S+)", block)
    assert named
    for name in named:
        assert name in made or (REPO / name).exists(), name


def test_the_bars_rate_counts_a_lockstep_batchs_burst_once():
    """A batch of 8 trajectories in lockstep writes its 8 records within milliseconds, every
    10 s: the bar says 0.80 it/s, never 8 records over the milliseconds between them (a tiny
    sweep's bar read 5587 it/s); iterations that trickle in half a second apart still count."""
    from truthloop.sweep.driver import Progress

    progress = Progress(8, 0)
    for wave in range(3):
        for i in range(8):
            progress.add_iterations(1, now=100.0 + 10 * wave + 0.001 * i)
            if wave == 0:
                assert progress.rate() == "-"  # one burst: no rate yet
    assert progress.rate() == "0.80"
    trickle = Progress(8, 0)
    for i in range(10):
        trickle.add_iterations(1, now=0.5 * i)
    assert trickle.rate() == "2.00"


def test_the_batch_hint_claims_the_measured_speed_up_only_for_the_seed_pair():
    from truthloop.sweep.driver import batch_hint

    assert "~2.2x" in batch_hint({("sd", "clip-interrogator")})
    other = batch_hint({("sd", "clip-interrogator"), ("sdxl", "llava-1.5")})
    assert "2.2x" not in other and "--batch N" in other


def test_the_bars_time_left_counts_iterations_at_most_and_ends_at_none():
    """A study's ETA: at most how many iterations the unfinished trajectories can still take
    (their limits less their records), each new record one off, a trajectory that ends early
    takes off what it will not use; the time is those iterations at the bar's rate."""
    from truthloop.sweep.driver import Progress

    progress = Progress(4, 0, iterations_left=4 * 100)
    assert progress.time_left() == "≤ 400 iterations left"  # no rate yet
    for wave in range(3):  # a lockstep batch of 4: 4 records every 10 s
        progress.add_iterations(4, now=10.0 * wave)
    assert progress.rate() == "0.40"
    assert progress.time_left() == "ETA ≤ 0:16:10 (≤ 388 iterations left)"  # 388 / 0.4 s
    progress.finished("converged", unused=100 - 3)  # converged after its 3 images
    assert progress.time_left() == "ETA ≤ 0:12:08 (≤ 291 iterations left)"
    for _ in range(3):
        progress.finished("max_iters", unused=97)
    assert progress.time_left() == "no iterations left"
    assert Progress(4, 0).time_left() == ""  # nothing known: nothing said


def test_a_sweeps_iterations_left_are_each_trajectorys_limit_less_its_records(tmp_path):
    """What the bar starts from: a new trajectory's whole limit; a resumed one's less the records
    it has (its state row's last record, as the table read it); a fixed-length chain's
    (--generations) its chain's length."""
    from truthloop.config import RunConfig
    from truthloop.store import LOG_FILE
    from truthloop.sweep.driver import Job, iterations_left, iterations_unused

    def trajectory(number: int, **loop) -> Trajectory:
        config = RunConfig(start_prompt="a house")
        for name, value in loop.items():
            setattr(config.loop, name, value)
        return Trajectory(number, f"{number:05d}", {"prompt": "a house"}, 0, {},
                          config.to_dict())

    fresh, resumed, chain = trajectory(0, max_iters=50), trajectory(1, max_iters=50), \
        trajectory(2, generations=10)
    run_dir = resumed.run_dir(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / LOG_FILE).write_text("{}\n" * 7)
    rows = [{"index": None}, {"index": 6}, {"index": None}]  # 7 records: indices 0 to 6
    limit = chain.run_config().loop.iteration_limit(False)
    assert iterations_left(rows, [fresh, resumed, chain]) == 50 + 43 + limit
    job = Job.started(resumed, tmp_path)  # its 7 records are not new iterations
    assert job.log_size == len("{}\n" * 7) and iterations_unused(resumed, rows[1]) == 43


def test_a_sweep_ends_with_what_it_drew_an_hour():
    """The figure a study plans by, from any sweep: images drawn by this call over its whole
    time (Ray's start and loading in it, and said)."""
    from truthloop.sweep.command import throughput

    line = throughput(160, 396.6)
    assert line == ("160 images drawn in 0:06:37: 1,452 trajectory-iterations an hour (Ray's "
                    "start and the models' loading included)")
    assert throughput(1, 2.0).startswith("1 image drawn in 0:00:02")
    assert throughput(0, 10.0) is None  # nothing drawn (all done before): nothing said


def test_a_sweep_also_says_its_rate_after_the_first_batches(tmp_path):
    """A study of 10,000 iterations pays the first batches' compiles once: the rate after them,
    from the times this call's image files were written (the images drawn before it left out)."""
    import os

    from truthloop.sweep.command import _drawn_times, settled_pace

    # The H200's compiled sweep, 32 at a time: the first wave at 256 s, the second 88 s later (a
    # caption's compile), then a batch every 54 s.
    waves = [256.0, 344.0, 398.0, 452.0, 506.0]
    times = [end for end in waves for _ in range(32)]
    assert settled_pace(times, 64) == "after the first 64 images, 2,133 an hour"  # 96 in 162 s
    assert settled_pace(times[:127], 64) is None  # fewer after the warm-up than in it
    assert settled_pace(times, 0) is None

    class Trajectory:
        def __init__(self, name):
            self.name = name

        def run_dir(self, sweep_dir):
            return sweep_dir / "runs" / self.name

    trajs = [Trajectory("resumed"), Trajectory("new"), Trajectory("not-started")]
    for name, written in (("resumed", [10.0, 20.0, 30.0]), ("new", [25.0, 35.0])):
        images = tmp_path / "runs" / name / "images"
        images.mkdir(parents=True)
        for index, when in enumerate(written):
            path = images / f"{index:04d}.png"
            path.write_bytes(b"")
            os.utime(path, (when, when))
    assert _drawn_times(tmp_path, trajs, [1, 0, 0]) == [20.0, 25.0, 30.0, 35.0]
