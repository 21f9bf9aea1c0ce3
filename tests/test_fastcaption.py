"""FastCaptioner gives exactly HF generate's BLIP tokens and caption (tiny BLIP, CPU)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from truthloop.ml.fastcaption import FastCaptioner, fast_generate_caption

LENGTHS = (1, 5, 32)


def _images() -> dict[str, Image.Image]:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    images = {
        "red": Image.new("RGB", (64, 64), (255, 0, 0)),
        "black": Image.new("RGB", (40, 40), (0, 0, 0)),
        "white": Image.new("RGB", (64, 64), (255, 255, 255)),
        "gradient": Image.fromarray(np.stack(np.broadcast_arrays(
            ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)),
        "vgradient": Image.fromarray(np.stack(np.broadcast_arrays(
            ramp[:, None], 255 - ramp[:, None], ramp[None, :] // 2), axis=-1)),
    }
    for seed, shape in enumerate([(64, 64, 3), (48, 80, 3), (100, 30, 3), (32, 32, 3)]):
        images[f"noise{seed}"] = Image.fromarray(
            np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return images


IMAGES = _images()


def _hf_caption(model, processor, image, max_new_tokens, dtype=torch.float32) -> str:
    """clip-interrogator 0.6.0 generate_caption, verbatim."""
    inputs = processor(images=image, return_tensors="pt").to("cpu")
    inputs = inputs.to(dtype)
    tokens = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()


def _without_ngram_rule(model):
    """The tiny checkpoint's no_repeat_ngram_size=1 makes us fall back; this copy does not."""
    model = copy.deepcopy(model)
    model.generation_config.no_repeat_ngram_size = None
    model.text_decoder.generation_config.no_repeat_ngram_size = None
    return model


@pytest.fixture(scope="module")
def processor(tiny_models):
    return tiny_models.caption_processor


@pytest.fixture(scope="module")
def plain_model(tiny_models):
    return _without_ngram_rule(tiny_models.caption_model)


@pytest.fixture(scope="module")
def varied_model(tiny_models):
    """Wider random weights: captions that differ between images and between positions."""
    model = _without_ngram_rule(tiny_models.caption_model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.8)
    return model


def _assert_same(model, processor, dtype, image, max_new_tokens, **kwargs):
    fast = FastCaptioner(model, processor, "cpu", dtype, **kwargs)
    inputs = fast._inputs(image)
    assert fast.unsupported(inputs, max_new_tokens) is None
    reference = fast.reference_ids(image, max_new_tokens)
    ours = fast.generate_ids(inputs["pixel_values"], max_new_tokens)
    assert ours.dtype == reference.dtype and torch.equal(ours, reference), (reference, ours)
    caption = fast.caption(image, max_new_tokens)
    assert fast.reason is None
    assert caption == _hf_caption(model, processor, image, max_new_tokens, dtype)
    return reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("which", ["plain", "varied"])
def test_tokens_and_caption_match_hf(which, dtype, processor, plain_model, varied_model):
    model = copy.deepcopy(plain_model if which == "plain" else varied_model).to(dtype)
    captions = set()
    for image in IMAGES.values():
        for max_new_tokens in LENGTHS:
            tokens = _assert_same(model, processor, dtype, image, max_new_tokens)
            captions.add(processor.batch_decode(tokens, skip_special_tokens=True)[0])
    if which == "varied":  # the comparison is not between constant outputs
        assert len(captions) > len(IMAGES)


def test_float16_matches_hf(processor, varied_model):
    model = copy.deepcopy(varied_model).to(torch.float16)
    for name in ("red", "gradient", "noise0", "noise1"):
        _assert_same(model, processor, torch.float16, IMAGES[name], 32)


def _eos_biased(model, bias: float):
    model = copy.deepcopy(model)
    sep = model.config.text_config.sep_token_id
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[sep] += bias
    return model


def _stop_biases(model, processor, image, max_new_tokens=32) -> list[float]:
    """SEP-logit biases that make greedy decoding stop at different, known steps.

    Unbiased, step t's gap is (best logit - SEP logit). With SEP's logit raised by b, decoding
    stops at the first t whose gap is below b: each new low of the running minimum is a stop
    we can reach, by a bias halfway between it and the previous low.
    """
    sep = model.config.text_config.sep_token_id
    inputs = processor(images=image, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, output_scores=True,
                         return_dict_in_generate=True)
    gaps = [float(score[0].max() - score[0, sep]) for score in out.scores]
    biases, low = [], float("inf")
    for gap in gaps:
        if gap < low - 0.2:
            biases.append(gap + min(0.1, (low - gap) / 2))
            low = gap
    return biases


@pytest.mark.parametrize("check_every", [None, 3, 8])
def test_early_eos_stops_where_hf_stops(check_every, processor, varied_model):
    """A SEP bias makes captions end early, at different steps; HF and we stop at the same one."""
    sep = varied_model.config.text_config.sep_token_id
    stops = set()
    for image in IMAGES.values():
        for bias in _stop_biases(varied_model, processor, image):
            model = _eos_biased(varied_model, bias)
            tokens = _assert_same(model, processor, torch.float32, image, 32,
                                  check_every=check_every)
            if tokens[0, -1].item() == sep:
                stops.add(tokens.shape[1] - 1)  # new tokens, SEP included
    model = _eos_biased(varied_model, 100.0)
    tokens = _assert_same(model, processor, torch.float32, IMAGES["red"], 32)
    assert tokens.tolist() == [[model.config.text_config.bos_token_id, sep]]  # empty caption
    assert len(stops - {1}) >= 3, stops  # mid-caption stops
    assert any(stop % 3 and stop % 8 for stop in stops)  # not on a check boundary


# -- fallback ------------------------------------------------------------------------------


def _fallback_case(model, processor, max_new_tokens=5, expect=None, seed=None):
    fast = FastCaptioner(model, processor, "cpu", torch.float32)
    image = IMAGES["noise0"]
    if seed is not None:
        torch.manual_seed(seed)
    caption = fast.caption(image, max_new_tokens)
    assert fast.reason is not None and (expect is None or expect in fast.reason), fast.reason
    if seed is not None:
        torch.manual_seed(seed)
    assert caption == _hf_caption(model, processor, image, max_new_tokens)


def test_tiny_checkpoint_takes_the_fast_path(tiny_models):
    # The tiny BLIP's generation config holds nothing we do not replicate, so the loop's default
    # captioner runs the fast path on it (and tests through the tiny models exercise it).
    from truthloop.ml.fastcaption import FastCaptioner

    captioner = FastCaptioner(tiny_models.caption_model, tiny_models.caption_processor,
                              tiny_models.device, tiny_models.dtype)
    inputs = tiny_models.caption_processor(images=IMAGES["gradient"], return_tensors="pt")
    assert captioner.unsupported(inputs, 32) is None


@pytest.mark.parametrize("key,value", [
    ("no_repeat_ngram_size", 2),
    ("repetition_penalty", 1.3),
    ("num_beams", 2),
    ("min_new_tokens", 3),
    ("min_length", 4),
    ("bad_words_ids", [[10]]),
    ("suppress_tokens", [10]),
    ("forced_eos_token_id", 3),
    ("use_cache", False),
    ("cache_implementation", "static"),
    ("return_dict_in_generate", True),
])
def test_unreplicated_options_fall_back(key, value, processor, varied_model):
    model = copy.deepcopy(varied_model)
    setattr(model.text_decoder.generation_config, key, value)
    fast = FastCaptioner(model, processor, "cpu", torch.float32)
    assert key in (fast.unsupported(fast._inputs(IMAGES["red"]), 5) or "")
    # HF returns a dict with return_dict_in_generate (the caller's decode fails), and its static
    # cache cannot hold BLIP's image keys (generate raises): only the decision is checked there.
    if key not in ("return_dict_in_generate", "cache_implementation"):
        _fallback_case(model, processor, expect=key)
    # the outer config is checked as well
    model = copy.deepcopy(varied_model)
    setattr(model.generation_config, key, value)
    fast = FastCaptioner(model, processor, "cpu", torch.float32)
    assert key in (fast.unsupported(fast._inputs(IMAGES["red"]), 5) or "")


def test_sampling_falls_back(processor, varied_model):
    model = copy.deepcopy(varied_model)
    model.text_decoder.generation_config.do_sample = True
    model.text_decoder.generation_config.temperature = 3.0
    _fallback_case(model, processor, max_new_tokens=8, expect="do_sample", seed=11)


def test_sampling_knobs_without_sampling_stay_fast(processor, varied_model):
    model = copy.deepcopy(varied_model)
    config = model.text_decoder.generation_config
    config.do_sample, config.temperature, config.top_k, config.top_p = False, 0.5, 5, 0.5
    config.max_length = 7
    _assert_same(model, processor, torch.float32, IMAGES["gradient"], 12)


def test_other_fallbacks(processor, varied_model):
    model = copy.deepcopy(varied_model)
    fast = FastCaptioner(model, processor, "cpu", torch.float32)
    inputs = fast._inputs(IMAGES["red"])
    for bad in (0, -1, None, 2.0, True):
        assert "max_new_tokens" in fast.unsupported(inputs, bad)
    positions = model.config.text_config.max_position_embeddings
    assert fast.unsupported(inputs, positions - 1) is None
    assert "position" in fast.unsupported(inputs, positions)
    model.train()
    try:
        assert "training" in fast.unsupported(inputs, 5)
        torch.manual_seed(0)
        fast.caption(IMAGES["red"], 5)
        assert "training" in fast.reason
    finally:
        model.eval()
    handle = model.text_decoder.register_forward_hook(lambda *args: None)
    try:
        assert "hooks" in fast.unsupported(inputs, 5)
    finally:
        handle.remove()
    assert fast.unsupported(inputs, 5) is None


def test_fast_generate_caption_is_generate_caption(tiny_interrogator, varied_model):
    ci = tiny_interrogator
    image = IMAGES["gradient"]
    # the tiny checkpoint itself: the fast path
    assert fast_generate_caption(ci, image) == ci.generate_caption(image)
    assert ci._truthloop_fast_captioner.reason is None
    original = ci.caption_model
    ci.caption_model = varied_model
    try:
        for image in IMAGES.values():
            assert fast_generate_caption(ci, image) == ci.generate_caption(image)
            assert ci._truthloop_fast_captioner.reason is None
    finally:
        ci.caption_model = original
