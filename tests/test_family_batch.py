"""`truthloop sweep --batch N` for every model pair (issue 29): the families' lockstep batch
(truthloop/ml/families/batched.py) on the tiny checkpoints, CPU, fp32.

- every generator family: a batch of 1 is the single run pixel for pixel (and its random stream
  moves on as the single run's); in a padded batch each trajectory keeps its own stream;
- a batched sweep over a two-pair grid: each trajectory is its single run (the same prompts and
  captions; images the same but where batched arithmetic moves a pixel by a level, as
  docs/model-families.md "Batched sweeps" documents);
- a worker killed mid-sweep: Ray restarts it, the lockstep batch resumes its run directories,
  and every trajectory equals the unbroken sweep's.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faulthelpers import run_main, sigkill_a_trajectory_mid_way
from family_helpers import generate_config
from truthloop.families import DEFAULT_GENERATOR, GENERATORS
from truthloop.store import read_run, resume_problem

# (janus-pro draws one image at a time: `sweep --batch` refuses it, tests/test_family_janus_pro.py)
FAMILIES = [name for name in GENERATORS
            if name != DEFAULT_GENERATOR and not GENERATORS[name].autoregressive]
PROMPTS = ["a red dog sitting in a field", "an old train at night, in the rain"]
# Batched arithmetic rounds otherwise than batch 1 (docs/model-families.md, "Batched sweeps"): on
# these checkpoints an image moves by at most one level in one pixel of 4096, where it moves at
# all. The bound checked leaves room for another CPU's kernels, and none for wrong noise or a
# wrong prompt (those change most pixels by tens of levels).
MOST_LEVELS, MOST_PIXELS = 2, 0.01


def assert_batched_arithmetic_only(image: Image.Image, single: Image.Image) -> None:
    """`image` is `single`, but for a few pixels a level or two off."""
    ours, theirs = np.asarray(image).astype(int), np.asarray(single).astype(int)
    assert ours.shape == theirs.shape
    moved = np.abs(ours - theirs)
    assert moved.max() <= MOST_LEVELS
    assert (moved.max(axis=-1) > 0).mean() <= MOST_PIXELS


@pytest.fixture(scope="module")
def pipes(truthloop_cache):
    """Each generator family's tiny pipeline, loaded as a run loads it (on first use)."""
    from truthloop.ml.families.painting import load_generator
    from truthloop.ml.tiny import tiny_family_model

    loaded: dict = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = load_generator(family, tiny_family_model("generator", family),
                                            "cpu")[0]
        return loaded[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_of_one_is_the_single_run_and_each_row_keeps_its_stream(pipes, family):
    from truthloop.ml.families.batched import BatchedFamilyPainter
    from truthloop.ml.families.painting import FamilyPainter
    from truthloop.ml.generate import RandomStream

    def config(seed: int):
        # z-image's pipeline draws 1024x1024 without a size, whatever the checkpoint.
        return generate_config(family, steps=2, width=64, height=64, seed=seed,
                               seed_mode="shared")

    # The single run's first image, from its shared stream.
    single = FamilyPainter(pipes(family), family, config(3), "cpu")
    alone = single.paint(PROMPTS[0], lambda step, total: None)

    batched = BatchedFamilyPainter(FamilyPainter(pipes(family), family, config(3), "cpu"))
    stream = RandomStream(config(3), "cpu")
    steps: list = []
    image, = batched.paint([PROMPTS[0]], [stream.generator()],
                           lambda step, total: steps.append((step, total)), pad_to=1)
    assert np.array_equal(np.asarray(image), np.asarray(alone))
    assert stream.rng_state() == single.rng_state()  # the stream moved on as the run's did
    assert steps == [(1, 2), (2, 2)]

    # Two trajectories in a batch padded to 3 (seed 3's first image again, and another seed's):
    # each row is drawn from its own stream (its single run's noise), whatever sits beside it.
    other = FamilyPainter(pipes(family), family, config(6), "cpu")
    expected = [alone, other.paint(PROMPTS[1], lambda step, total: None)]
    streams = [RandomStream(config(seed), "cpu") for seed in (3, 6)]
    images = batched.paint(PROMPTS, [s.generator() for s in streams], lambda s, t: None,
                           pad_to=3)
    assert len(images) == 2
    for image, single_image in zip(images, expected):
        assert_batched_arithmetic_only(image, single_image)
    assert streams[1].rng_state() == other.rng_state()


# -- a batched sweep of two pairs ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session(truthloop_cache):
    pytest.importorskip("ray")
    pytest.importorskip("sklearn")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def sweep_args(sweep_dir: Path, prompts: Path) -> list:
    return ["sweep", sweep_dir, "--prompts", prompts, "--seeds", "1-2", "--models", "tiny",
            "--device", "cpu", "--steps", "2", "--width", "64", "--height", "64",
            "--max-iters", "3", "--grid", "generator=sdxl,z-image", "--captioner", "blip",
            "--batch", "2", "--workers", "1", "--no-atlas"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(PROMPTS[0] + "\n")
    return path


@pytest.fixture(scope="module")
def batched_sweep(ray_session, tmp_path_factory, prompts_file) -> Path:
    sweep_dir = tmp_path_factory.mktemp("family-batch") / "sweep"
    assert run_main(sweep_args(sweep_dir, prompts_file)) == 0
    return sweep_dir


def assert_same_trajectory(run_dir: Path, reference: Path) -> None:
    """The run is the reference run: its status, every caption and prompt, every image but for
    batched arithmetic's pixels."""
    ours, theirs = read_run(run_dir), read_run(reference)
    assert ours.summary["status"] == theirs.summary["status"]
    assert [(r.caption, r.fed_prompt, r.seed) for r in ours.records] == \
        [(r.caption, r.fed_prompt, r.seed) for r in theirs.records]
    for mine, other in zip(ours.records, theirs.records):
        assert (mine.image is None) == (other.image is None)
        if mine.image:
            with Image.open(run_dir / mine.image) as image, \
                    Image.open(reference / other.image) as expected:
                assert_batched_arithmetic_only(image.convert("RGB"), expected.convert("RGB"))


def test_a_batched_sweep_over_two_pairs_is_each_trajectorys_single_run(batched_sweep, tmp_path):
    from truthloop.config import RunConfig
    from truthloop.sweep.worker import TrajectoryWorker

    runs = sorted((batched_sweep / "runs").iterdir())
    assert len(runs) == 4  # one prompt x seeds 1, 2 x sdxl, z-image
    worker = TrajectoryWorker()  # one trajectory at a time: `truthloop run`'s loop and models
    for run_dir in runs:
        view = read_run(run_dir)
        assert view.problems == [] and resume_problem(view) is None
        assert view.summary["status"] in ("converged", "max_iters")
        assert view.info["batch"] == {"size": 2, "exact": False, "pad": True,
                                      "engine": "lockstep"}
        assert view.config["models"]["captioner"] == "blip"
        assert view.config["generate"]["compile"] is False  # sd's fast path only
        config = RunConfig.from_dict(view.config)
        outcome = worker.run({"run_dir": str(tmp_path / run_dir.name),
                              "config": config.to_dict()})
        assert outcome["status"] == view.summary["status"]
        assert_same_trajectory(run_dir, tmp_path / run_dir.name)
    assert {read_run(r).config["models"]["generator"] for r in runs} == {"sdxl", "z-image"}


def test_a_worker_killed_mid_batch_resumes_to_the_unbroken_sweep(batched_sweep, prompts_file,
                                                                 tmp_path):
    """SIGKILL the worker while its lockstep batch is mid-trajectory: Ray restarts it, the retried
    call resumes every run directory in lockstep, and each trajectory equals the unbroken
    sweep's."""
    sweep_dir = tmp_path / "killed"
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        run_main(sweep_args(sweep_dir, prompts_file))))
    thread.start()
    killed = None
    try:
        killed = sigkill_a_trajectory_mid_way(sweep_dir, thread)
    finally:
        thread.join(600)
    assert killed is not None, "no trajectory was caught mid-way"
    assert result == [0]
    run_dir, pid = killed
    assert int((run_dir / "lock").read_text()) != pid  # a new worker finished it
    names = sorted(p.name for p in (batched_sweep / "runs").iterdir())
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == names
    for name in names:
        view = read_run(sweep_dir / "runs" / name)
        assert view.problems == [] and resume_problem(view) is None
        assert_same_trajectory(sweep_dir / "runs" / name, batched_sweep / "runs" / name)
    # the killed trajectory's run.json says it was resumed in a batch as it started
    assert read_run(run_dir).info["batch"]["size"] == 2


def test_a_batchs_clip_features_are_each_images_single_run_features(truthloop_cache):
    """A batch's drift columns: its images preprocessed side by side, then each through CLIP
    alone, get the very features a single run gives each (the pair's OpenClipEmbedder)."""
    from family_helpers import noise_image
    from truthloop.config import RunConfig, apply_pair_defaults
    from truthloop.ml.backends import load_backends
    from truthloop.ml.embedding import OpenClipEmbedder
    from truthloop.ml.families.batched import FamilyBatchModels

    config = RunConfig(start_prompt="-")
    config.models.models, config.models.device = "tiny", "cpu"
    config.models.captioner = "blip"
    apply_pair_defaults(config)
    single = load_backends(config, lambda event: None)
    assert isinstance(single.embedder, OpenClipEmbedder)
    batched = FamilyBatchModels(single, config)
    images = [noise_image(seed) for seed in range(3)]
    found = batched.features(images)
    assert found == [single.embedder.features(image) for image in images]
    assert found[0] != found[1] and len(found[0]) == single.embedder.model.visual.output_dim
