"""Through the real libraries (diffusers, transformers BLIP, open_clip, clip-interrogator) with the
tiny random-weight checkpoints: the machinery end to end, and the article preset against a plain
re-implementation of the seed script's loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from truthloop.ml.backends import load_backends
from truthloop.config import RunConfig, apply_preset
from truthloop.loop import TruthLoop
from truthloop.store import read_run

SAMPLE = Path(__file__).parent.parent / "truthloop" / "data" / "sample.png"


def sample_image():
    from truthloop.images import load_input_image

    return load_input_image(SAMPLE)


def test_tiny_models_load_through_the_same_path_as_hub_ids(tiny_models):
    from diffusers import StableDiffusionPipeline
    from transformers import BlipForConditionalGeneration

    assert isinstance(tiny_models.pipe, StableDiffusionPipeline)
    assert isinstance(tiny_models.caption_model, BlipForConditionalGeneration)
    assert tiny_models.clip_name.startswith("truthloop-tiny-clip/file-")
    # The SD tokenizer was written from open_clip's vocabulary: both give the same ids.
    import open_clip

    text = "arafed man looking at his cell phone, yee chong"
    ours = tiny_models.pipe.tokenizer(text).input_ids
    theirs = open_clip.get_tokenizer("truthloop-tiny-clip")([text])[0].tolist()
    assert ours == theirs[: len(ours)] and ours[-1] == 49407  # same ids up to end-of-text


def test_reseed_mode_gives_the_same_image_for_the_same_prompt(tiny_models):
    from truthloop.config import GenerateConfig
    from truthloop.ml.generate import Painter

    painter = Painter(tiny_models.pipe, GenerateConfig(steps=4), tiny_models.device)
    noop = lambda step, total: None  # noqa: E731
    first = painter.paint("a golf course", noop)
    assert painter.paint("a golf course", noop).tobytes() == first.tobytes()
    assert painter.paint("a train", noop).tobytes() != first.tobytes()
    shared = Painter(tiny_models.pipe, GenerateConfig(steps=4, seed_mode="shared"),
                     tiny_models.device)
    state = shared.rng_state()
    a = shared.paint("a golf course", noop)
    assert shared.paint("a golf course", noop).tobytes() != a.tobytes()
    shared.set_rng_state(state)  # what resume does: the stream continues where it was
    assert shared.paint("a golf course", noop).tobytes() == a.tobytes()


def test_a_short_tiny_run_writes_a_complete_run_directory(tmp_path, truthloop_cache):
    config = RunConfig(input_image=str(SAMPLE))
    config.models.models = "tiny"
    config.caption.mode = "fast"
    config.generate.steps = 4
    config.loop.clauses = 1
    config.loop.max_iters = 3
    events = []
    summary = TruthLoop(config, tmp_path / "run", load_backends, events.append,
                        input_image=sample_image()).run()
    view = read_run(tmp_path / "run")
    assert view.problems == []
    assert summary["status"] in ("converged", "max_iters")
    assert view.info["config"]["loop"]["clauses"] == 1
    assert {"torch", "diffusers", "clip-interrogator"} <= set(view.info["versions"])
    assert view.input_path is not None
    for record in view.records:
        assert set(record.to_json()) >= {"index", "caption", "fed_prompt", "compared", "seed", "timings",
                               "repeat_of", "image"}
        if record.image:
            assert (tmp_path / "run" / record.image).exists()
            assert -1.0 <= record.sim_start <= 1.0001
        assert record.fed_prompt == record.caption.split(",")[0]
    assert not list((tmp_path / "run").glob(".*tmp*"))


def seed_script_loop(models, image, clauses: int, max_iters: int):
    """The article's loop, as printed, over the given models (no truthloop code in the loop)."""
    from clip_interrogator import Config, Interrogator

    from truthloop.ml.interrogate import label_cache_dir

    ci_config = Config(clip_model_name=models.clip_name, chunk_size=400,
                       cache_path=label_cache_dir(), download_cache=False,
                       device=models.device, quiet=True)
    ci_config.caption_model = models.caption_model
    ci_config.caption_processor = models.caption_processor
    ci_config.clip_model = models.clip_model
    ci_config.clip_preprocess = models.clip_preprocess
    ci = Interrogator(ci_config)
    pipe = models.pipe
    generator = torch.Generator(models.device).manual_seed(42)
    n_prompt = ("low quality, worst quality, out of focus, ugly, error, jpeg artifacts, lowers, "
                "blurry, bokeh,bad anatomy, long_neck, long_body, longbody, deformed mutated "
                "disfigured, missing arms, extra_arms, mutated hands, extra_legs, bad hands, "
                "poorly_drawn_hands, malformed_hands, missing_limb, floating_limbs, "
                "disconnected_limbs, extra_fingers, bad fingers, liquid fingers, poorly drawn "
                "fingers, missing fingers, extra digit, fewer digits, ugly face, deformed eyes, "
                "partial face, partial head, bad face, inaccurate limb, cropped,multipul angle, "
                "two shot, split view, grid view")
    prompt_list, prompts, images = [], [], []
    while len(images) < max_iters:  # the script's `while True`, bounded like --max-iters
        prompt = ci.interrogate(image)
        prompt_cutted = prompt.split(",")[0] if clauses else prompt
        prompts.append(prompt)
        if prompt_cutted in prompt_list:
            break
        prompt_list.append(prompt_cutted)
        image = pipe(prompt, negative_prompt=n_prompt, generator=generator).images[0]
        images.append(image.tobytes())
    return prompts, images


def test_article_preset_reproduces_the_seed_script_step_by_step(tmp_path, tiny_models):
    """--preset article --feed full: the article's printed code (compare the cut, draw all)."""
    max_iters = 2
    expected_prompts, expected_images = seed_script_loop(tiny_models, sample_image(), 1, max_iters)

    config = RunConfig(input_image=str(SAMPLE))
    apply_preset(config, "article")
    config.models.models = "tiny"
    assert config.caption.interrogator == "fast"  # truthloop's own path, against the script's
    config.loop.clauses = 1
    config.loop.feed = "full"
    config.loop.max_iters = max_iters
    TruthLoop(config, tmp_path / "run", load_backends, input_image=sample_image()).run()
    view = read_run(tmp_path / "run")
    assert [r.caption for r in view.records] == expected_prompts
    from PIL import Image

    ours = []
    for record in view.records:
        if record.image:
            with Image.open(tmp_path / "run" / record.image) as image:
                ours.append(image.convert("RGB").tobytes())
    assert ours == expected_images
    assert view.info["config"]["generate"]["seed_mode"] == "shared"
    assert view.info["config"]["caption"]["chunk_size"] == 400


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "truthloop.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_headless_cli_demo_then_resume(tmp_path):
    out = tmp_path / "demo run"
    result = run_cli("demo", "--headless", "--out", str(out), "--max-iters", "2", "--steps", "4")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and lines[0].startswith("[   0]")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] in ("max_iters", "converged")
    if summary["status"] == "max_iters":
        result = run_cli("resume", str(out), "--max-iters", "3", "--headless")
        assert result.returncode == 0, result.stderr
        view = read_run(out)
        assert [r.index for r in view.records][:3] == [0, 1, 2]


def test_headless_prompt_start(tmp_path):
    out = tmp_path / "p"
    result = run_cli("run", "--prompt", "[bold]a red car[/], fast", "--models", "tiny",
                     "--headless", "--out", str(out), "--max-iters", "1", "--steps", "2",
                     "--mode", "caption")
    assert result.returncode == 0, result.stderr
    assert "[bold]a red car[/], fast" in result.stdout  # printed literally, never as markup
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert record["fed_prompt"] == "[bold]a red car[/], fast"


@pytest.mark.parametrize("argv, message", [
    (["run", "missing.png", "--models", "tiny"], "no such file"),
    (["run", "--models", "tiny"], "give a start image"),
    (["run", "SAMPLE", "--width", "100", "--models", "tiny"], "multiple of 8"),
    (["run", "SAMPLE", "--sd-model", "nobody/no-such-model", "--headless"], "nobody/no-such-model"),
])
def test_cli_errors_are_one_line(tmp_path, argv, message):
    argv = [str(SAMPLE) if a == "SAMPLE" else a for a in argv]
    result = run_cli(*argv, "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines()
                if line.startswith("truthloop: error:")]) == 1


@pytest.mark.parametrize("mode", ["best", "fast", "classic", "negative", "caption"])
def test_fast_captioner_gives_the_reference_string(tiny_interrogator, mode):
    """The loop's fast path (fastci + fastcaption) against clip-interrogator itself, every mode."""
    import numpy as np
    from PIL import Image

    from truthloop.config import CaptionConfig
    from truthloop.ml.interrogate import Captioner

    reference = Captioner(tiny_interrogator, CaptionConfig(mode=mode, chunk_size=400,
                                                           interrogator="reference"))
    fast = Captioner(tiny_interrogator, CaptionConfig(mode=mode, chunk_size=400,
                                                      interrogator="fast"))
    rng = np.random.default_rng(7)
    images = [sample_image(),
              Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)),
              Image.new("RGB", (64, 64), (200, 30, 40))]
    for image in images:
        assert fast.caption(image) == reference.caption(image)


@pytest.mark.parametrize("low_vram", [False, True])
def test_low_vram_runs_without_cuda_graphs(truthloop_cache, low_vram):
    """--low-vram trades speed for memory: no graph keeps its buffers for the run (on a GPU
    the captioner's graphs alone hold GBs at full size)."""
    config = RunConfig(start_prompt="a golf course")
    config.models.models = "tiny"
    config.models.low_vram = low_vram
    backends = load_backends(config, lambda event: None)
    graphed = [backends.captioner.fast._text_similarity, backends.captioner.fast._suffix_pass]
    assert backends.captioner.cuda_graphs is (not low_vram)
    assert all(g.enabled is (not low_vram) for g in graphed)
