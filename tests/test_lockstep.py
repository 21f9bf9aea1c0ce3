"""The lockstep engine (truthloop/lockstep.py) with fake batched models: every trajectory's run
directory is a single run's, slots refill as trajectories end, the batch setting is recorded,
runs resume. The tiny real models: --exact is `truthloop run` bit for bit, batches repeat."""

from __future__ import annotations

import json

import pytest

import fakes
from batch_fakes import FakeBatchModels, factory
from truthloop import events as ev
from truthloop.config import RunConfig
from truthloop.lockstep import Job, Lockstep, throughput
from truthloop.loop import TruthLoop
from truthloop.store import read_run, resume_problem


def chain(name: str, length: int) -> dict[str, str]:
    """name0 -> name1 -> ... -> name{length-1}, a fixed point: `length` images, then the repeat."""
    steps = {f"{name}{i}": f"{name}{i + 1}" for i in range(length - 1)}
    steps[f"{name}{length - 1}"] = f"{name}{length - 1}"
    return steps


SCRIPT = {**chain("a", 2), **chain("b", 3), **chain("c", 2), **chain("d", 4), **chain("e", 2),
          **chain("long", 40)}


def config(prompt: str, seed: int = 42, seed_mode: str = "reseed", max_iters: int = 6):
    cfg = RunConfig(start_prompt=prompt)
    cfg.generate.seed, cfg.generate.seed_mode = seed, seed_mode
    cfg.loop.max_iters = max_iters
    return cfg


JOBS = [("a0", 1, "reseed"), ("long0", 2, "shared"), ("b0", 3, "reseed"), ("c0", 4, "shared"),
        ("d0", 5, "reseed"), ("e0", 6, "reseed")]


def comparable(run_dir):
    """A run as a single run writes it, minus what may differ between two processes: timings."""
    view = read_run(run_dir)
    records = [{k: v for k, v in r.to_json().items() if k != "timings"} for r in view.records]
    images = {r.image: (run_dir / r.image).read_bytes() for r in view.records if r.image}
    summary = {k: v for k, v in (view.summary or {}).items()
               if k not in ("started", "finished", "elapsed_this_process", "pid", "segments")}
    return records, images, summary, view.config


def run_alone(run_dir, cfg):
    painter = fakes.FakePainter(seed=cfg.generate.seed, seed_mode=cfg.generate.seed_mode)
    TruthLoop(cfg, run_dir, fakes.factory(fakes.FakeCaptioner(SCRIPT), painter)).run()


def run_batch(tmp_path, size, name="batch", jobs=JOBS, events=None):
    models = FakeBatchModels(SCRIPT)
    engine = Lockstep(factory(models), size,
                      on_event=(lambda key, e: events.append((key, e, len(models.calls))))
                      if events is not None else None)
    outcomes = engine.run([Job(tmp_path / name / p, config(p, seed, mode), key=p)
                           for p, seed, mode in jobs])
    return engine, models, outcomes


def test_each_trajectory_is_written_as_its_single_run(tmp_path):
    engine, models, outcomes = run_batch(tmp_path, 3)
    assert [o["status"] for o in outcomes] == ["converged", "max_iters", "converged",
                                               "converged", "converged", "converged"]
    for prompt, seed, mode in JOBS:
        run_alone(tmp_path / "alone" / prompt, config(prompt, seed, mode))
        batched = tmp_path / "batch" / prompt
        assert comparable(batched) == comparable(tmp_path / "alone" / prompt), prompt
        view = read_run(batched)
        assert view.problems == [] and resume_problem(view) is None
        info = json.loads((batched / "run.json").read_text())
        assert info["batch"] == {"size": 3, "exact": False, "pad": True, "engine": "lockstep"}
    # the shared generator's state travels per trajectory, as a single run's does
    assert read_run(tmp_path / "batch" / "long0").records[-1].rng_state is not None
    assert engine.images == sum(len(c[1]) for c in models.calls if c[0] == "paint")


def test_a_freed_slot_takes_the_next_trajectory_before_the_next_batch(tmp_path):
    events: list = []
    engine, models, _ = run_batch(tmp_path, 2, events=events)
    starts = [calls for key, event, calls in events if isinstance(event, ev.RunStarted)]
    assert len(starts) == len(JOBS)
    last_start = max(starts)
    paints = [(i, c) for i, c in enumerate(models.calls) if c[0] == "paint"]
    # Until the queue is empty, every drawing batch is full; all are padded to the size.
    assert all(len(c[1]) == 2 for i, c in paints if i < last_start)
    assert all(c[2] == 2 for _, c in paints)
    # 2+40-capped-at-6+3+2+4+2 = 19 images; full batches all the way but for the tail
    assert engine.images == 19
    assert throughput(engine, skip_paints=1)["images"] == 19 - len(paints[0][1][1])


def test_image_starts_join_the_drawing_batch_in_step(tmp_path):
    """A start image is embedded and captioned first: the others wait for it to draw."""
    models = FakeBatchModels(SCRIPT)
    image_config = RunConfig(input_image="start.png")
    image_config.loop.max_iters = 4
    jobs = [Job(tmp_path / "a0", config("a0")), Job(tmp_path / "long0", config("long0")),
            Job(tmp_path / "img", image_config, input_image=fakes.start_image())]
    outcomes = Lockstep(factory(models), 2).run(jobs)
    assert [o["status"] for o in outcomes] == ["converged", "max_iters", "converged"]
    paints = [c for c in models.calls if c[0] == "paint"]
    assert [len(c[1]) for c in paints][:4] == [2, 2, 2, 2]
    TruthLoop(image_config, tmp_path / "alone", fakes.factory(
        fakes.FakeCaptioner(SCRIPT), fakes.FakePainter()), input_image=fakes.start_image()).run()
    assert comparable(tmp_path / "img")[:3] == comparable(tmp_path / "alone")[:3]
    assert (tmp_path / "img" / "input.png").exists()


def test_the_same_batch_twice_gives_the_same_runs_and_calls(tmp_path):
    _, first, _ = run_batch(tmp_path, 4, name="one")
    _, second, _ = run_batch(tmp_path, 4, name="two")
    assert first.calls == second.calls
    for prompt, _, _ in JOBS:
        assert comparable(tmp_path / "one" / prompt)[:3] == comparable(tmp_path / "two" / prompt)[:3]


def test_a_batched_run_resumes_alone_and_in_a_batch(tmp_path):
    jobs = [("long0", 2, "shared"), ("a0", 1, "reseed")]
    models = FakeBatchModels(SCRIPT)
    Lockstep(factory(models), 2).run(
        [Job(tmp_path / "runs" / p, config(p, s, m, max_iters=3), key=p) for p, s, m in jobs])
    run_dir = tmp_path / "runs" / "long0"
    assert read_run(run_dir).summary["status"] == "max_iters"
    # `truthloop resume` is TruthLoop.for_resume with a single run's backends
    painter = fakes.FakePainter(seed=2, seed_mode="shared")
    TruthLoop.for_resume(run_dir, fakes.factory(fakes.FakeCaptioner(SCRIPT), painter),
                         max_iters=5).run()
    # ... and again in a batch of another size: recorded, same trajectory as one run of 7
    outcome = Lockstep(factory(FakeBatchModels(SCRIPT)), 3).run(
        [Job(run_dir, resume=True, max_iters=7)])
    assert outcome[0]["status"] == "max_iters"
    run_alone(tmp_path / "alone", config("long0", 2, "shared", max_iters=7))
    assert comparable(run_dir)[:2] == comparable(tmp_path / "alone")[:2]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["batch"]["size"] == 2
    assert info["batch_resumed"] == [{"size": 3, "exact": False, "pad": True,
                                      "engine": "lockstep", "from_index": 5}]


def test_a_trajectory_of_other_settings_fails_alone(tmp_path):
    models = FakeBatchModels(SCRIPT)
    other = config("b0")
    other.generate.steps = 7
    outcomes = Lockstep(factory(models), 2).run(
        [Job(tmp_path / "a0", config("a0")), Job(tmp_path / "b0", other)])
    assert outcomes[0]["status"] == "converged"
    assert outcomes[1]["status"] == "error" and "differ from the batch" in outcomes[1]["message"]


def test_a_stop_in_one_trajectory_leaves_the_others_running(tmp_path):
    models = FakeBatchModels(SCRIPT)
    engine = Lockstep(factory(models), 2)

    def on_event(key, event):
        if key == "long0" and isinstance(event, ev.DenoiseStep) and event.index == 2:
            slot = next(s for s in engine._slots if s.job is not None and s.job.key == "long0")
            slot.control.stop()

    engine.on_event = on_event
    outcomes = engine.run([Job(tmp_path / p, config(p, s, m), key=p) for p, s, m in JOBS[:3]])
    assert [o["status"] for o in outcomes] == ["converged", "stopped", "converged"]
    assert len(read_run(tmp_path / "long0").records) == 2


# -- the tiny real models ------------------------------------------------------------------------
def tiny_args(out, *extra):
    return ["run", "--prompt", "a photo of a cat", "--models", "tiny", "--device", "cpu",
            "--headless", "--steps", "6", "--mode", "fast", "--max-iters", "3", "--out", str(out),
            *extra]


def test_exact_is_truthloop_run_bit_for_bit(tmp_path, tiny_interrogator, capsys):
    from truthloop.cli import main
    from truthloop.ml.batch_factory import exact_factory

    assert main(tiny_args(tmp_path / "single", "--seed-mode", "shared")) == 0
    cfg = RunConfig.from_dict(json.loads((tmp_path / "single" / "run.json").read_text())["config"])
    other = RunConfig.from_dict(cfg.to_dict())
    other.generate.seed = 7
    engine = Lockstep(exact_factory, 1, exact=True)
    outcomes = engine.run([Job(tmp_path / "exact", cfg), Job(tmp_path / "other", other)])
    assert [o["status"] for o in outcomes] == ["max_iters", "max_iters"]
    single, exact = comparable(tmp_path / "single"), comparable(tmp_path / "exact")
    assert exact[0] == single[0]  # captions, prompts, seeds, rng states, similarities
    assert exact[1] == single[1]  # every PNG, byte for byte
    assert exact[3] == single[3]
    info = json.loads((tmp_path / "exact" / "run.json").read_text())
    assert info["batch"] == {"size": 1, "exact": True, "pad": False, "engine": "lockstep"}


def test_a_tiny_batch_repeats_itself_and_resumes(tmp_path, tiny_interrogator, capsys):
    from truthloop.cli import main
    from truthloop.ml.batch_factory import batched_factory

    def jobs(name):
        out = []
        for seed in (1, 2, 3):
            cfg = RunConfig(start_prompt=f"a photo number {seed}")
            cfg.models.models, cfg.models.device = "tiny", "cpu"
            cfg.caption.mode, cfg.generate.steps, cfg.loop.max_iters = "fast", 6, 2
            cfg.generate.seed, cfg.generate.seed_mode = seed, "shared"
            out.append(Job(tmp_path / name / f"s{seed}", cfg))
        return out

    first = Lockstep(batched_factory, 3)
    assert {o["status"] for o in first.run(jobs("one"))} == {"max_iters"}
    assert {o["status"] for o in Lockstep(batched_factory, 3).run(jobs("two"))} == {"max_iters"}
    assert [k for k, n in first.models.batch_sizes] == ["paint", "caption", "paint"]
    assert [n for k, n in first.models.batch_sizes] == [3, 3, 3]
    for seed in (1, 2, 3):
        one, two = comparable(tmp_path / "one" / f"s{seed}"), comparable(tmp_path / "two" / f"s{seed}")
        assert one[:2] == two[:2]  # records and images
        info = json.loads((tmp_path / "one" / f"s{seed}" / "run.json").read_text())
        assert info["batch"]["size"] == 3
        # The drift measures' text side is served in batches too (one call for the batch).
        assert all(r.text_start is not None for r in read_run(tmp_path / "one" / f"s{seed}")
                   .records)
    assert "text" in {kind for kind, _ in first.models.batch_sizes} or any(
        tick.kind == "text" for tick in first.ticks)
    run_dir = tmp_path / "one" / "s2"
    assert main(["resume", str(run_dir), "--headless", "--max-iters", "3"]) == 0
    view = read_run(run_dir)
    assert view.summary["status"] == "max_iters" and len(view.records) == 3
    assert view.problems == [] and resume_problem(view) is None


def test_batched_models_reuse_work_with_the_same_numbers(tiny_interrogator):
    """What a batch does once (the negative prompt's encoding, an image's CLIP features shared by
    its drift columns and its caption) and side by side (preprocessing in threads) gives a single
    run's numbers."""
    import torch

    from truthloop.config import SEED_NEGATIVE_PROMPT
    from truthloop.ml.backends import load_backends
    from truthloop.ml.batched import BatchedBackends

    cfg = RunConfig(start_prompt="-")
    cfg.models.models, cfg.models.device = "tiny", "cpu"
    cfg.caption.mode = "best"
    cfg.generate.negative_prompt = SEED_NEGATIVE_PROMPT
    single = load_backends(cfg, lambda event: None)
    batched = BatchedBackends(single, cfg)
    pipe = single.painter.pipe
    with torch.inference_mode():
        embeds, uncond = pipe.encode_prompt("a red bicycle", "cpu", 1, True,
                                            negative_prompt=SEED_NEGATIVE_PROMPT)
        assert torch.equal(single.painter.negative_embeds(cfg.generate), uncond)
        assert torch.equal(pipe.encode_prompt("a red bicycle", "cpu", 1, False)[0], embeds)

    images = [fakes.start_image(), *(single.painter.paint(p, lambda s, t: None)
                                     for p in ("a cat", "a lighthouse"))]
    assert batched.features(images) == [single.embedder.features(i) for i in images]
    assert len(batched._features) == 3
    captions = batched.caption(images)  # the features above serve the ranking
    assert batched._features == {}
    fresh = BatchedBackends(single, cfg)
    assert fresh.caption([i.copy() for i in images]) == captions  # computed anew: the same
    assert captions == [single.captioner.caption(i) for i in images]
    # ranked in two threads (each its own interrogator): the same strings
    threaded = BatchedBackends(single, cfg, rank_threads=2)
    for _ in range(2):
        assert threaded.caption([i.copy() for i in images]) == captions
    assert len(threaded._rankers) == 2 and threaded._rankers[0] is single.captioner.fast
    assert threaded._rankers[1].merged is single.captioner.fast.merged  # tables shared
