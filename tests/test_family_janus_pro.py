"""The janus-pro family, one model on both sides (issue 31, item 1): truthloop's image is the one
transformers' documented image-mode call gives under the same seed, pixel for pixel; its caption
is the documented text-mode call's, token for token; named on both sides with one checkpoint, the
model is loaded once; a tiny run end to end through the CLI; `truthloop models` names its licence;
what it cannot honour is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faulthelpers import assert_one_clean_error_line, run_main
from family_helpers import PROMPT, assert_a_missing_directory_is_one_line, caption_config
from family_helpers import generate_config, noise_image, three_captions
from truthloop.families import DEFAULT_INSTRUCTION

FAMILY = "janus-pro"


@pytest.fixture(scope="module")
def tiny_dir(truthloop_cache):
    from truthloop.ml.tiny import tiny_family_model

    # One checkpoint for both sides: the generator's tiny directory is the captioner's.
    path = tiny_family_model("generator", FAMILY)
    assert tiny_family_model("captioner", FAMILY) == path
    return path


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    """(model, processor, record) as a run's generator side loads them."""
    from truthloop.ml.families.painting import load_token_generator

    return load_token_generator(FAMILY, tiny_dir, "cpu")


@pytest.fixture(scope="module")
def captioner(tiny_dir):
    from truthloop.ml.families.captioning import load_captioner

    return load_captioner(FAMILY, tiny_dir, "cpu", caption_config(FAMILY))[0]


def painter(loaded, **changes):
    from truthloop.ml.families.painting import TokenPainter

    model, processor, _ = loaded
    return TokenPainter(model, processor, FAMILY, generate_config(FAMILY, **changes), "cpu")


def plain(tiny_dir):
    """A fresh model and processor, from_pretrained and nothing else."""
    from transformers import JanusForConditionalGeneration, JanusProcessor

    return (JanusForConditionalGeneration.from_pretrained(tiny_dir).eval(),
            JanusProcessor.from_pretrained(tiny_dir))


def plain_image(model, processor, prompt: str, seed: int):
    """transformers' documented text-to-image call (docs/source/en/model_doc/janus.md), under
    torch.manual_seed(seed); the decoded pixels made a picture with numpy."""
    import torch
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, generation_mode="image", return_tensors="pt")
    torch.manual_seed(seed)
    with torch.no_grad():
        tokens = model.generate(**inputs, generation_mode="image", do_sample=True,
                                use_cache=True)
        decoded = model.decode_image_tokens(tokens)
    pixels = processor.postprocess(list(decoded.float()))["pixel_values"][0]
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def test_the_image_is_the_documented_call_under_the_same_seed(tiny_dir, loaded):
    import torch

    config = generate_config(FAMILY, seed_mode="shared", seed=7)
    assert (config.steps, config.guidance, config.width, config.height) == (576, 5.0, None, None)
    ours = painter(loaded, seed_mode="shared", seed=7)
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    image = ours.paint(PROMPT, lambda step, total: None)
    # The run's stream was the sampling's; the process's own stream is left as it was.
    assert torch.equal(torch.get_rng_state(), global_state)

    model, processor = plain(tiny_dir)
    # The checkpoint's generation_config.json: the guidance the family's default repeats.
    assert model.generation_config.guidance_scale == 5
    expected = plain_image(model, processor, PROMPT, seed=7)
    assert image.size == expected.size == (64, 64)  # the tiny checkpoint's own size
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert np.asarray(image).std() > 5  # a picture, not a flat colour
    # A shared stream moved on exactly as the global one did in the plain call.
    assert torch.equal(ours._stream.generator().get_state(), torch.get_rng_state())


def test_a_seed_gives_one_image_and_the_prompt_and_seed_change_it(loaded):
    def draw(prompt: str, seed: int) -> np.ndarray:
        return np.asarray(painter(loaded, seed=seed).paint(prompt, lambda s, t: None))

    first = draw(PROMPT, 1)
    assert np.array_equal(first, draw(PROMPT, 1))
    assert not np.array_equal(first, draw(PROMPT, 2))
    assert not np.array_equal(first, draw("an old train at night", 1))


def test_a_stop_inside_the_tokens_abandons_the_image(loaded):
    from truthloop.loop import StopRequested

    steps = []

    def on_step(step, total):
        steps.append((step, total))
        if step == 2:
            raise StopRequested()

    with pytest.raises(StopRequested):
        painter(loaded).paint(PROMPT, on_step)
    assert steps == [(1, 16), (2, 16)]  # the tiny checkpoint's 4x4 image tokens


def test_the_caption_is_the_documented_text_mode_call(tiny_dir, captioner):
    import torch

    config = caption_config(FAMILY)
    assert (config.instruction, config.caption_max_length) == (DEFAULT_INSTRUCTION, 77)
    model, processor = plain(tiny_dir)
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": config.instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == f"<|User|>: <image_placeholder>\n{config.instruction}\n\n<|Assistant|>:"
    for seed in (1, 2):
        image = noise_image(seed)
        inputs = processor(images=image, text=prompt, generation_mode="text",
                           return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=77, generation_mode="text",
                                    do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1]:],
                                  skip_special_tokens=True)
        assert len(answer.split()) == 77  # the tiny checkpoint says only words, to the end
        assert captioner.caption(image) == " ".join(answer.split())


def test_captions_are_words_and_a_batch_gives_each_images_own(captioner):
    from truthloop.ml.tiny import _TINY_WORDS

    captions = three_captions(captioner, set(_TINY_WORDS))
    assert len(set(captions)) == 3, captions
    assert captioner.caption_batch([noise_image(seed) for seed in (1, 2, 3)]) == captions


def _count_from_pretrained(monkeypatch) -> list:
    from transformers import JanusForConditionalGeneration

    calls: list = []
    original = JanusForConditionalGeneration.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        calls.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(JanusForConditionalGeneration, "from_pretrained",
                        classmethod(counted))
    return calls


def _run_config(**models):
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig(start_prompt=PROMPT)
    config.models.generator = config.models.captioner = FAMILY
    apply_pair_defaults(config)
    for name, value in {"models": "tiny", "device": "cpu", **models}.items():
        setattr(config.models, name, value)
    config.validate()
    return config


def test_named_on_both_sides_it_is_loaded_once_and_draws_and_describes_as_alone(
        tiny_dir, loaded, captioner, monkeypatch):
    """One from_pretrained for both sides, one model object; an image drawn after a caption (the
    captioner turned sampling off in the shared generation config, and its static cache was
    longer) is an unshared painter's."""
    from truthloop.ml.backends import load_backends

    calls = _count_from_pretrained(monkeypatch)
    backends = load_backends(_run_config(), lambda event: None)
    assert len(calls) == 1
    assert backends.painter.model is backends.captioner.model
    assert backends.loaded["generator_model"] == backends.loaded["caption_model"]
    assert backends.captioner.model.generation_config.do_sample is False  # greedy captions
    assert backends.captioner.caption(noise_image(1)) == captioner.caption(noise_image(1))
    shared = backends.painter.paint(PROMPT, lambda step, total: None)
    alone = painter(loaded).paint(PROMPT, lambda step, total: None)
    assert np.array_equal(np.asarray(shared), np.asarray(alone))


def test_two_checkpoints_are_two_models(tiny_dir, tmp_path, monkeypatch):
    import shutil

    from truthloop.ml.backends import load_backends
    from truthloop.ml.tiny import build_tiny_models

    other = tmp_path / "janus-copy"
    shutil.copytree(tiny_dir, other)
    calls = _count_from_pretrained(monkeypatch)
    config = _run_config(models="real", generator_model=tiny_dir, caption_model=str(other),
                         clip_model=build_tiny_models().clip_model)
    backends = load_backends(config, lambda event: None)
    assert calls == [tiny_dir, str(other)]
    assert backends.painter.model is not backends.captioner.model


def test_a_tiny_run_through_the_cli(tmp_path):
    from PIL import Image

    from truthloop.store import read_run

    out = tmp_path / "run"
    assert run_main(["run", "--prompt", PROMPT, "--models", "tiny", "--device", "cpu",
                     "--generator", FAMILY, "--captioner", FAMILY, "--max-iters", "2",
                     "--headless", "--out", out]) == 0
    view = read_run(out)
    assert view.problems == [] and view.summary["status"] == "max_iters"
    assert len(view.records) == 2 and all(r.caption.strip() for r in view.records[1:])
    for record in view.records:
        with Image.open(out / record.image) as image:
            assert image.size == (64, 64)
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["models"]["generator"] == info["config"]["models"]["captioner"] == FAMILY
    assert info["config"]["models"]["generator_model"] == "deepseek-community/Janus-Pro-1B"
    assert info["config"]["generate"]["guidance"] == 5.0
    loaded = info["models_loaded"]
    assert loaded["generator_model"]["path"] == loaded["caption_model"]["path"]


def test_models_lists_both_sides_with_the_weights_licence(capsys):
    assert run_main(["models", "--json"]) == 0
    rows = [row for row in json.loads(capsys.readouterr().out) if row["family"] == FAMILY]
    assert [row["kind"] for row in rows] == ["generator", "captioner"]
    assert {row["checkpoint"] for row in rows} == {"deepseek-community/Janus-Pro-1B"}
    assert {row["licence"] for row in rows} == {"DeepSeek Model"}
    assert not any(row["default"] for row in rows)
    assert run_main(["models"]) == 0
    table = capsys.readouterr().out
    assert "gene janus-pro" in table and "capt janus-pro" in table
    assert "janus-pro: one checkpoint for both sides, loaded once" in table


@pytest.mark.parametrize("flag, reason", [
    (["--steps", "50"], "--steps: janus-pro draws an image as its checkpoint's image tokens"),
    (["--width", "512"], "--width: janus-pro draws its checkpoint's own size"),
    (["--negative-prompt", "blurry"], "--negative-prompt: janus-pro guides its tokens"),
    (["--scheduler", "ddim"], "--scheduler: janus-pro samples image tokens"),
    (["--low-vram"], "--low-vram: janus-pro is one transformers model"),
])
def test_what_it_cannot_honour_is_one_line(flag, reason, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(["run", "--prompt", PROMPT, "--models", "tiny", "--generator", FAMILY,
                     *flag, "--out", out]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, reason)
    assert not out.exists()


def test_a_batched_sweep_is_refused_in_one_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    sweep_dir = tmp_path / "sweep"
    assert run_main(["sweep", sweep_dir, "--prompts", prompts, "--models", "tiny",
                     "--grid", "generator=sdxl,janus-pro", "--captioner", "blip",
                     "--batch", "2"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err,
                                "--batch: janus-pro draws one image at a time")
    assert not sweep_dir.exists()


def test_a_missing_checkpoint_is_asked_for_once(tmp_path, monkeypatch, capsys):
    """Not in the hub cache and no hub to ask: one line, one `hf download` for both sides."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert run_main(["run", "--prompt", PROMPT, "--generator", FAMILY, "--captioner", FAMILY,
                     "--out", tmp_path / "run"]) == 2
    error = assert_one_clean_error_line(capsys.readouterr().err)
    assert error.count("hf download deepseek-community/Janus-Pro-1B") == 1


def test_a_missing_directory_is_one_line(tmp_path):
    assert_a_missing_directory_is_one_line("captioner", FAMILY, tmp_path)


def test_full_size_is_janus_pro_1b():
    """The benchmark's architecture: 2.08 B parameters (deepseek-ai/Janus-Pro-1B's 4.18 GB of
    16-bit weights are 2.09 B, SigLIP's attention-pool head included, which the transformers
    conversion drops); a caption's prompt holds 576 image tokens of a 384x384 image; an image is
    576 tokens of a 16384-code book."""
    import torch

    from truthloop.ml.families import janus_pro

    model, processor = janus_pro.full_size("meta", torch.bfloat16)
    assert 2.05e9 < sum(p.numel() for p in model.parameters()) < 2.09e9
    assert model.dtype == torch.bfloat16 and model.config.text_config.hidden_size == 2048
    assert janus_pro.image_tokens(model) == 576
    assert model.model.generation_head.vision_head.out_features == 16384
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]}],
        add_generation_prompt=True)
    inputs = processor(images=noise_image(1), text=prompt, return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 576
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 384, 384)
