"""The captioner families' fast decoding (ml/families/fastdecode.py, issue 29): a static KV cache
(and on CUDA its decode steps replayed from graphs) gives the plain call's tokens, and a batch of
images gives each image its single caption. Tiny checkpoints, CPU, float32; the tests at the end
need a GPU (bench/run_on_gpu.sh tests runs them there)."""

from __future__ import annotations

import functools

import pytest
import torch

from family_helpers import caption_config, noise_image

FAMILIES = ("blip", "florence-2", "llava-1.5", "qwen3-vl")
# Captions of 24 tokens: every decode step is the same kind after the first few, and 77 would
# triple the suite's time here (Florence-2 decodes three beams).
MAX_TOKENS = 24
STATIC = ("florence-2", "llava-1.5", "qwen3-vl")  # transformers' static cache; BLIP has its own


def _load(family: str, device: str = "cpu", **options):
    """The family's tiny captioner as the loop loads it (its own model instance)."""
    from truthloop.ml.families.captioning import FamilyCaptioner, load_captioner
    from truthloop.ml.tiny import tiny_family_model

    captioner, _ = load_captioner(family, tiny_family_model("captioner", family), device,
                                  caption_config(family, caption_max_length=MAX_TOKENS))
    if options:
        captioner = FamilyCaptioner(family, captioner.model, captioner.processor,
                                    captioner.config, **options)
    return captioner


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, truthloop_cache):
    return request.param


@pytest.fixture(scope="module")
def plain(family):
    return _load(family, fast=False)


@pytest.fixture(scope="module")
def fast(family):
    return _load(family)


class _Tokens:
    """What the captioner's decode produced, call by call: generate's output tensors (or BLIP's
    own decode's), and the cache each model call got."""

    def __init__(self, captioner):
        self.outputs: list[torch.Tensor] = []
        self.caches: list[str] = []
        model = captioner.model
        if getattr(captioner.fast, "fast", None) is not None:  # BLIP's FastCaptioner
            self._wrap(captioner.fast.fast, "generate_ids")
        self._wrap(model, "generate")
        self.model = model

    def _wrap(self, owner, name):
        original = getattr(owner, name)

        def recorded(*args, **kwargs):
            out = original(*args, **kwargs)
            self.outputs.append(out.clone())
            return out

        setattr(owner, name, recorded)

    def close(self):
        for owner in (self.model,):
            owner.__dict__.pop("generate", None)


def _tokens(captioner, images):
    """The captions of `images` and the token tensors decoded for them."""
    spy = _Tokens(captioner)
    try:
        captions = [captioner.caption(image) for image in images]
    finally:
        spy.close()
        inner = getattr(captioner.fast, "fast", None)
        if inner is not None:
            inner.__dict__.pop("generate_ids", None)
    return captions, spy.outputs


IMAGES = [noise_image(seed) for seed in (1, 2, 3)]


def test_the_fast_decoding_gives_the_plain_calls_tokens(family, plain, fast):
    plain_captions, plain_tokens = _tokens(plain, IMAGES)
    fast_captions, fast_tokens = _tokens(fast, IMAGES)
    assert len(plain_tokens) == len(fast_tokens) == 3
    for ours, theirs in zip(fast_tokens, plain_tokens):
        assert torch.equal(ours, theirs)
    assert fast_captions == plain_captions and len(set(fast_captions)) > 1
    # ...and it was the fast path that made them
    if family == "blip":
        assert fast.fast.last_reason is None  # truthloop's BLIP decode, not generate
    else:
        assert fast.model.generation_config.cache_implementation == "static"
        assert plain.model.generation_config.cache_implementation is None


@pytest.mark.parametrize("family_name", STATIC)
def test_a_decode_step_gets_the_static_cache(family_name, truthloop_cache):
    """Every model call after the prefill writes into a static cache of fixed size (the plain
    call's cache grows instead)."""
    seen = []
    captioner = _load(family_name)
    model = captioner.model
    forward = model.forward

    @functools.wraps(forward)  # generate checks its arguments against forward's signature
    def spy(*args, **kwargs):
        cache = kwargs.get("cache")
        inner = getattr(cache, "self_attention_cache", cache)
        seen.append(type(inner).__name__)
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        captioner.caption(noise_image(1))
    finally:
        del model.forward
    assert seen and set(seen) == {"StaticCache"}, seen


def test_the_record_says_how_it_decodes(family, plain, fast):
    assert {k: plain.decoding[k] for k in ("cache", "steps")} == \
        {"cache": "dynamic", "steps": "eager"}
    if family == "blip":
        assert fast.decoding["steps"] == "truthloop's BLIP decode"  # no graphs on the CPU
    else:
        assert {k: fast.decoding[k] for k in ("cache", "steps")} == \
            {"cache": "static", "steps": "eager"}


@pytest.mark.parametrize("family_name", STATIC)
def test_replayed_steps_adopt_each_captions_cache(family_name, truthloop_cache):
    """The graphed decode step's bookkeeping, without the capture (a CPU has no graphs): every
    decode step goes through DecodeSteps, each caption's new cache is taken into the same static
    buffers, and the tokens are the plain call's."""
    from truthloop.ml.families.fastdecode import StaticDecoding

    plain = _load(family_name, fast=False)
    captioner = _load(family_name)
    captioner.fast = StaticDecoding(captioner.model, graphs=True, compiled=False, capture=False)
    steps = captioner.fast.steps
    expected, expected_tokens = _tokens(plain, IMAGES)
    got, got_tokens = _tokens(captioner, IMAGES)
    assert got == expected
    assert all(torch.equal(a, b) for a, b in zip(got_tokens, expected_tokens))
    decode_steps = sum(tokens.shape[-1] for tokens in got_tokens)  # bounds the count below
    assert 0 < steps.eager_steps <= decode_steps * max(1, captioner.decoding["num_beams"])
    assert len(steps._eager_buffers) == 1  # three captions, one static cache
    assert captioner.model.forward is not type(captioner.model).forward


def test_a_batch_of_one_is_the_single_caption(family, fast):
    for image in IMAGES[:2]:
        assert fast.caption_batch([image]) == [fast.caption(image)]


def test_a_batch_gives_each_image_its_single_caption(family, fast):
    images = [noise_image(seed) for seed in (1, 2, 3, 4, 5)]
    singles = [fast.caption(image) for image in images]
    assert len(set(singles)) > 1
    assert fast.caption_batch(images) == singles


def test_qwen3_vl_pads_a_batch_of_different_sizes_on_the_left(truthloop_cache):
    """Qwen3-VL's image tokens follow the image's size: a batch of two sizes pads the shorter
    prompt on the left, and each image still gets its single caption."""
    from PIL import Image

    captioner = _load("qwen3-vl")
    small = noise_image(2).resize((32, 32), Image.Resampling.NEAREST)
    images = [noise_image(1), small, noise_image(3)]
    lengths = []
    generate = captioner.model.generate

    def spy(**kwargs):
        lengths.append(kwargs["attention_mask"].sum(-1).tolist())
        return generate(**kwargs)

    captioner.model.generate = spy
    try:
        batch = captioner.caption_batch(images)
    finally:
        del captioner.model.generate
    assert len(set(lengths[0])) == 2  # the small image's prompt is shorter: padded
    assert batch == [captioner.caption(image) for image in images]


def test_a_plain_captioner_puts_the_model_back(truthloop_cache):
    """FamilyCaptioner(fast=False) on a model a fast one set up decodes plainly again."""
    from truthloop.ml.families.captioning import FamilyCaptioner

    fast = _load("llava-1.5")
    assert fast.model.generation_config.cache_implementation == "static"
    plain = FamilyCaptioner("llava-1.5", fast.model, fast.processor, fast.config, fast=False)
    assert plain.model.generation_config.cache_implementation is None
    assert not plain.model.generation_config.disable_compile
    assert "forward" not in plain.model.__dict__


# -- on a GPU ---------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _generate(captioner, image, **options):
    """generate's sequences and per-step logits for `image` through the family's own inputs."""
    processor, model = captioner.processor, captioner.model
    family, instruction = captioner.family, captioner.config.instruction
    if family == "llava-1.5":
        conversation = [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": instruction}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
    elif family == "qwen3-vl":
        messages = [{"role": "user", "content": [
            {"type": "image", "image": image}, {"type": "text", "text": instruction}]}]
        inputs = processor.apply_chat_template(messages, tokenize=True,
                                               add_generation_prompt=True, return_dict=True,
                                               return_tensors="pt")
    else:
        inputs = processor(text=instruction, images=image, return_tensors="pt")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        captioner.fast.before_generate()
        out = model.generate(**inputs, max_new_tokens=20, return_dict_in_generate=True,
                             output_logits=True, **options)
    return out.sequences, torch.stack(out.logits)


@cuda
@pytest.mark.parametrize("family_name", STATIC)
def test_graphed_steps_give_the_same_tokens_from_the_first_call_on(family_name, truthloop_cache):
    """Every decode step of a graphed caption comes from the graph, the first call's too (it
    captures at first sight): a caption's tokens and logits are the same bit for bit whether its
    graph was captured in this call or replayed from an earlier one. (An eager first step took
    another path through transformers than its replays and moved a batch's captions between
    two calls on an H100.) The logits are the eager static steps' within float32 rounding."""
    from truthloop.ml.families.fastdecode import StaticDecoding

    captioner = _load(family_name, "cuda")
    captioner.fast = StaticDecoding(captioner.model, graphs=False, compiled=False)
    eager = [_generate(captioner, image) for image in IMAGES]
    graphed = captioner.fast = StaticDecoding(captioner.model, graphs=True, compiled=False)
    assert graphed.describe() == {"cache": "static", "steps": "CUDA graphs"}
    first = [_generate(captioner, image) for image in IMAGES]
    again = [_generate(captioner, image) for image in reversed(IMAGES)][::-1]
    for (sequences, logits), (got_sequences, got_logits), (eager_sequences, eager_logits) in zip(
            first, again, eager):
        assert torch.equal(got_sequences, sequences)
        assert torch.equal(got_logits, logits)
        assert torch.allclose(logits, eager_logits, rtol=1e-4, atol=1e-4)
    steps = graphed.steps
    assert not steps.failures, steps.failures
    assert steps.eager_steps == 0
    # One graph for the steps (two where a family's first decode step has a shape of its own),
    # shared by every caption.
    assert 1 <= steps.captures <= 2 and steps.replays > 2 * 15


@cuda
@pytest.mark.parametrize("family_name", STATIC)
def test_on_a_gpu_a_graphed_batch_is_the_same_every_call(family_name, truthloop_cache):
    """What bench/bench_captioners.py caught at full size: the same batch twice, the same
    captions (its graph captured in the first call, replayed in the second)."""
    captioner = _load(family_name, "cuda")
    images = [noise_image(seed) for seed in (1, 2, 3, 4)]
    first = captioner.caption_batch(images)
    assert captioner.caption_batch(images) == first
    assert captioner.fast.steps.eager_steps == 0


@cuda
@pytest.mark.parametrize("family_name", FAMILIES)
def test_on_a_gpu_fast_captions_are_the_plain_ones(family_name, truthloop_cache):
    plain = _load(family_name, "cuda", fast=False)
    fast = _load(family_name, "cuda")
    images = [noise_image(seed) for seed in (1, 2, 3, 4)]
    singles = [fast.caption(image) for image in images]
    assert singles == [plain.caption(image) for image in images]
    assert fast.caption_batch(images[:1]) == singles[:1]
    assert fast.decoding["steps"].endswith("CUDA graphs")
