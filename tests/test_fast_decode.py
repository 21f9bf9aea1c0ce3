"""The captioner families' fast decoding (ml/families/fastdecode.py, issue 29): a static KV cache
(and on CUDA its decode steps replayed from graphs) gives the plain call's tokens, and a batch of
images gives each image its single caption; truthloop's greedy loop (LLaVA-1.5, Qwen3-VL,
Janus-Pro) gives generate's tokens, stopping and padding rows as generate does, and leaves to
generate what it does not reproduce. Tiny checkpoints, CPU, float32; the tests at the end need a
GPU (bench/run_on_gpu.sh tests runs them there)."""

from __future__ import annotations

import contextlib
import dataclasses
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


def test_florence_2s_beams_reorder_the_cache_in_place_without_asking_its_length(
        truthloop_cache, monkeypatch):
    """Beam search reorders every layer's cache after every step. transformers' static layer
    asks its length (a tensor on the device) whether it is > 0 each time: on a GPU, a host wait
    per layer per token between two graph replays (~25 a token for Florence-2-large). The fast
    path reorders in place with that condition on the device: the plain call's tokens, the
    length asked only by generate's reorder after the prefill (before the first decode step),
    and the graph's tensors kept."""
    from transformers.cache_utils import StaticLayer

    from truthloop.ml.families import fastdecode

    asked, in_place = [], []
    library_reorder = StaticLayer.reorder_cache
    monkeypatch.setattr(StaticLayer, "reorder_cache",
                        lambda layer, beam_idx: (asked.append(layer),
                                                 library_reorder(layer, beam_idx))[1])
    ours = fastdecode._reorder_in_place

    def recorded(layer, beam_idx):
        kept = (layer.keys, layer.values)
        ours(layer, beam_idx)
        in_place.append(kept[0] is layer.keys and kept[1] is layer.values)

    monkeypatch.setattr(fastdecode, "_reorder_in_place", recorded)
    plain_captions, plain_tokens = _tokens(_load("florence-2", fast=False), IMAGES[:2])
    fast = _load("florence-2")
    # The graphed path's bookkeeping without the capture (a CPU has no graphs), as on a GPU.
    fast.fast = fastdecode.StaticDecoding(fast.model, graphs=True, compiled=False, capture=False)
    fast_captions, fast_tokens = _tokens(fast, IMAGES[:2])
    assert fast_captions == plain_captions
    for mine, theirs in zip(fast_tokens, plain_tokens):
        assert torch.equal(mine, theirs)
    # Each caption's cache is new: each of its layers (self- and cross-attention's) asked once,
    # by the reorder after that caption's prefill, and reordered in place at every later step.
    assert len(asked) >= 4 and len({id(layer) for layer in asked}) == len(asked)
    assert len(in_place) >= len(asked) // 2 * (MAX_TOKENS // 2) and all(in_place)


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
    assert {k: plain.decoding[k] for k in ("cache", "steps", "loop")} == \
        {"cache": "dynamic", "steps": "eager", "loop": "transformers' generate"}
    if family == "blip":
        assert fast.decoding["steps"] == "truthloop's BLIP decode"  # no graphs on the CPU
    elif family == "florence-2":  # beam search: generate's own loop
        assert {k: fast.decoding[k] for k in ("cache", "steps", "loop")} == \
            {"cache": "static", "steps": "eager",
             "loop": "transformers' generate (beam_search: num_beams 3)"}
    else:
        assert {k: fast.decoding[k] for k in ("cache", "steps", "loop")} == \
            {"cache": "static", "steps": "eager", "loop": "truthloop's greedy loop"}


@pytest.mark.parametrize("family_name", STATIC)
def test_replayed_steps_adopt_each_captions_cache(family_name, truthloop_cache):
    """The graphed decode step's bookkeeping, without the capture (a CPU has no graphs): every
    decode step goes through DecodeSteps (called by truthloop's greedy loop, or by generate's
    own for Florence-2's beams), each caption's new cache is taken into the same static
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
    loop = captioner.fast.loop
    assert (loop is None) == (family_name == "florence-2")
    assert loop is None or (loop.calls == 3 and loop.decode_steps == steps.eager_steps)


@pytest.mark.parametrize("family_name", STATIC)
def test_a_compiled_decode_step_is_traced_once_for_every_step_and_caption(
        family_name, monkeypatch, truthloop_cache):
    """`--compile`'s decode step (fastdecode.compiled_step, what StaticDecoding uses on CUDA)
    through dynamo with a counting backend that runs the traced graph eagerly (no inductor on
    this CPU): one trace serves every decode step of every caption (a recompile per step or per
    caption would cost a GPU run minutes), and the tokens are the plain call's."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from truthloop.ml.families import fastdecode

    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    torch._dynamo.reset()
    plain = _load(family_name, fast=False)
    expected, expected_tokens = _tokens(plain, IMAGES)
    captioner = _load(family_name)
    captioner.fast = fastdecode.StaticDecoding(captioner.model, graphs=True, compiled=False,
                                               capture=False)
    steps = captioner.fast.steps
    steps.forward = fastdecode.compiled_step(captioner.model)
    try:
        first, first_tokens = _tokens(captioner, IMAGES[:1])
        traced = counter.frame_count
        # Later captions (new caches, adopted into the same buffers) must reuse the trace.
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        rest, rest_tokens = _tokens(captioner, IMAGES[1:])
    finally:
        torch._dynamo.reset()
    # One frame: the step traces whole, with no graph break (each break is eager Python between
    # compiled pieces, inside the graph capture on a GPU).
    assert traced == 1 and counter.frame_count == traced and counter.op_count > 0
    assert first + rest == expected
    assert all(torch.equal(a, b) for a, b in zip(first_tokens + rest_tokens, expected_tokens))
    assert steps.eager_steps > len(IMAGES)  # the decode steps went through the compiled forward


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


# -- truthloop's greedy loop ------------------------------------------------------------------

LOOP_FAMILIES = ("llava-1.5", "qwen3-vl", "janus-pro")  # decoder-only, plain greedy
# Images of different sizes in one batch: Qwen3-VL's prompts then differ in length (padded on
# the left); the others resize every image to one size.
MIXED = [noise_image(1), noise_image(2).resize((32, 32)), noise_image(3), noise_image(4)]


@pytest.fixture(scope="module", params=LOOP_FAMILIES)
def loop_family(request, truthloop_cache):
    return request.param


@pytest.fixture(scope="module")
def loop_pair(loop_family):
    """The family's plain captioner (generate, a dynamic cache) and its fast one (the static
    cache and truthloop's greedy loop), each on a model of its own."""
    return _load(loop_family, fast=False), _load(loop_family)


def _new_tokens(captioner, images, max_new_tokens=MAX_TOKENS):
    """The tokens generate returned for `images` captioned in one batch, the prompt cut off."""
    config = captioner.config
    captioner.config = dataclasses.replace(config, caption_max_length=max_new_tokens)
    seen = []
    generate = captioner.model.generate

    def spy(**kwargs):
        tokens = generate(**kwargs)
        seen.append(tokens[:, kwargs["input_ids"].shape[1]:].clone())
        return tokens

    captioner.model.generate = spy
    try:
        captioner.caption_batch(images)
    finally:
        del captioner.model.generate
        captioner.config = config
    (tokens,) = seen
    return tokens


@contextlib.contextmanager
def _stopping_at(captioners, eos):
    """The captioners' models end a caption at the token ids `eos` (their generation config's
    eos_token_id) for the block."""
    before = [c.model.generation_config.eos_token_id for c in captioners]
    for captioner in captioners:
        captioner.model.generation_config.eos_token_id = eos
    try:
        yield
    finally:
        for captioner, ids in zip(captioners, before):
            captioner.model.generation_config.eos_token_id = ids


def _first(said: torch.Tensor, token: int) -> list[int | None]:
    """Where each row first says `token` (None: never)."""
    return [int(row.tolist().index(token)) if token in row.tolist() else None for row in said]


def test_the_greedy_loop_gives_generates_tokens(loop_pair):
    """Image by image and a batch of different images (for Qwen3-VL of two sizes: padded), the
    loop's tokens are the plain call's (generate's own loop), and the loop made them."""
    plain, fast = loop_pair
    loop = fast.fast.loop
    calls = loop.calls
    plain_captions, plain_tokens = _tokens(plain, IMAGES)
    fast_captions, fast_tokens = _tokens(fast, IMAGES)
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(fast_tokens, plain_tokens))
    assert fast_captions == plain_captions and len(set(plain_captions)) > 1
    batch = _new_tokens(fast, MIXED)
    assert torch.equal(batch, _new_tokens(plain, MIXED))
    assert len({tuple(row) for row in batch.tolist()}) == len(MIXED)
    assert loop.calls == calls + 4 and not loop.fallbacks


def test_qwen3_vl_the_greedy_loop_decodes_a_padded_batch(truthloop_cache):
    """The batch of two sizes is padded (generate hands the loop a 2-D mask to grow)."""
    captioner = _load("qwen3-vl")
    masks = []
    generate = captioner.model.generate

    def spy(**kwargs):
        masks.append(kwargs["attention_mask"])
        return generate(**kwargs)

    captioner.model.generate = spy
    try:
        captioner.caption_batch(MIXED)
    finally:
        del captioner.model.generate
    assert (masks[0] == 0).any(dim=1).tolist() == [False, True, False, False]
    assert captioner.fast.loop.calls == 1


@pytest.mark.parametrize("stop", ["some rows", "every row"])
def test_the_greedy_loop_stops_and_pads_rows_as_generate_does(loop_pair, stop):
    """With an end-of-sequence token the tiny model says: a row that says it is padded after
    it while the others go on ("some rows"), and a batch whose rows all said it ends there,
    the steps the loop had queued past it dropped ("every row")."""
    from truthloop.ml.families.fastdecode import STEPS_AHEAD

    plain, fast = loop_pair
    said = _new_tokens(plain, MIXED)
    if stop == "some rows":  # a word of the first row's that another row says later or never
        eos = next([token] for token in said[0, :-2].tolist()
                   if len(set(_first(said, token))) > 1)
    else:  # every row has stopped by its fifth token
        eos = sorted(set(said[:, 4].tolist()))
    with _stopping_at((plain, fast), eos):
        expected = _new_tokens(plain, MIXED)
        before = fast.fast.loop.decode_steps
        got = _new_tokens(fast, MIXED)
        decoded = fast.fast.loop.decode_steps - before
    assert torch.equal(got, expected)
    pad = plain.model.generation_config.pad_token_id
    stops = [_first(got, token) for token in eos]
    ends = [min((row_stops[i] for row_stops in stops if row_stops[i] is not None), default=None)
            for i in range(len(MIXED))]
    if stop == "some rows":
        stopped = [row for row, end in enumerate(ends) if end is not None
                   and end < got.shape[1] - 1]
        assert stopped and all((got[row, ends[row] + 1:] == pad).all() for row in stopped)
        assert got.shape[1] == MAX_TOKENS or len(set(ends)) > 1
    else:
        assert None not in ends and got.shape[1] == max(ends) + 1 <= 5
        # the loop learns that late: it decoded steps past the stop, and dropped them
        assert got.shape[1] - 1 < decoded <= got.shape[1] - 1 + STEPS_AHEAD


@pytest.mark.parametrize("max_new_tokens", [1, 2, 5, 11])
def test_the_greedy_loop_at_any_caption_length(loop_pair, max_new_tokens):
    """A length that is no multiple of the steps the loop queues ahead, and a batch that stops
    in the last of them: generate's tokens."""
    plain, fast = loop_pair
    said = _new_tokens(plain, MIXED, max_new_tokens)
    assert said.shape[1] == max_new_tokens
    assert torch.equal(_new_tokens(fast, MIXED, max_new_tokens), said)
    if max_new_tokens > 1:  # every row has stopped by its second-to-last token
        eos = sorted(set(said[:, -2].tolist()))
        with _stopping_at((plain, fast), eos):
            expected = _new_tokens(plain, MIXED, max_new_tokens)
            assert expected.shape[1] < max_new_tokens
            assert torch.equal(_new_tokens(fast, MIXED, max_new_tokens), expected)


def _forward_calls(captioner, images):
    """Every model call of `images`' batch caption: its arguments, tensors copied."""
    from transformers.cache_utils import Cache

    calls = []
    model = captioner.model
    forward = model.forward

    @functools.wraps(forward)  # generate checks its arguments against forward's signature
    def spy(*args, **kwargs):
        calls.append({name: value.clone() if isinstance(value, torch.Tensor) else
                      type(value).__name__ if isinstance(value, (Cache, dict)) else value
                      for name, value in kwargs.items()})
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        captioner.caption_batch(images)
    finally:
        del model.forward
    return calls


def test_the_greedy_loop_calls_the_model_as_generate_does(loop_family):
    """Every decode step gets what generate's own loop gives it over the same static cache (the
    new token, the positions, the 4-D mask of the grown padding mask, the rest unchanged): the
    same names, dtypes, shapes and values. (The prefill is generate's own in both.)"""
    ours = _forward_calls(_load(loop_family), MIXED)
    theirs = _forward_calls(_load(loop_family, greedy_loop=False), MIXED)
    assert len(theirs) > 2 and 0 <= len(ours) - len(theirs) <= 4
    for step, (got, expected) in enumerate(zip(ours[1:], theirs[1:]), start=1):
        assert got.keys() == expected.keys(), step
        for name, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert got[name].dtype == value.dtype and torch.equal(got[name], value), \
                    (step, name)
            else:
                assert got[name] == value, (step, name)
    assert {"input_ids", "position_ids", "attention_mask", "cache"} <= theirs[2].keys()
    assert theirs[2]["attention_mask"].dim() == 4


def test_a_checkpoint_asking_for_more_than_greedy_decodes_with_generate(truthloop_cache):
    """repetition_penalty 1.2 in the generation config: generate's own loop decodes, and the
    record says why; the tokens are the plain call's with the penalty (which it changes)."""
    from truthloop.ml.families.captioning import FamilyCaptioner

    plain, fast = _load("llava-1.5", fast=False), _load("llava-1.5")
    free = _tokens(plain, IMAGES[:2])[1]
    for captioner in (plain, fast):
        captioner.model.generation_config.repetition_penalty = 1.2
    fast = FamilyCaptioner("llava-1.5", fast.model, fast.processor, fast.config)
    assert fast.decoding["repetition_penalty"] == 1.2
    assert fast.decoding["loop"] == "transformers' generate (repetition_penalty 1.2)"
    assert fast.fast.loop is None
    expected = _tokens(plain, IMAGES[:2])[1]
    assert not all(torch.equal(a, b) for a, b in zip(expected, free))
    assert all(torch.equal(a, b) for a, b in zip(_tokens(fast, IMAGES[:2])[1], expected))


def test_a_call_asking_for_more_than_greedy_goes_to_generate(truthloop_cache):
    """The loop also checks each call as generate resolved it: a call with a repetition
    penalty is decoded by generate's own loop (the plain call's tokens), one without by the
    loop."""
    from truthloop.ml.families import llava

    plain, fast = _load("llava-1.5", fast=False), _load("llava-1.5")
    loop = fast.fast.loop
    image, instruction = IMAGES[0], plain.config.instruction

    def caption(captioner, generate, **options):
        with torch.inference_mode():
            captioner.fast.before_generate()
            return llava.caption(captioner.model, captioner.processor, image, instruction,
                                 MAX_TOKENS, generate=functools.partial(generate, **options))

    penalised = caption(fast, fast.fast.generate(fast.model), repetition_penalty=1.2)
    assert loop.fallbacks == ["repetition_penalty 1.2"] and loop.calls == 0
    assert penalised == caption(plain, plain.model.generate, repetition_penalty=1.2)
    greedy = caption(fast, fast.fast.generate(fast.model))
    assert loop.calls == 1 and len(loop.fallbacks) == 1
    assert greedy == caption(plain, plain.model.generate) != penalised


def test_a_call_with_a_streamer_goes_to_generate(truthloop_cache):
    """generate drops a streamer (and the like) it would hand its own loop when the loop is a
    custom_generate: such a call is generate's own, and the streamer sees every token."""
    from transformers.generation.streamers import BaseStreamer

    from truthloop.ml.families import llava

    fast = _load("llava-1.5")
    loop = fast.fast.loop

    class Tokens(BaseStreamer):
        said: list = []

        def put(self, value):
            self.said.append(value.tolist())

        def end(self):
            pass

    streamer = Tokens()
    with torch.inference_mode():
        fast.fast.before_generate()
        caption = llava.caption(fast.model, fast.processor, IMAGES[0], fast.config.instruction,
                                MAX_TOKENS, generate=functools.partial(
                                    fast.fast.generate(fast.model), streamer=streamer))
    assert loop.calls == 0 and loop.fallbacks == ["streamer"]
    assert caption == fast.caption(IMAGES[0]) and loop.calls == 1
    assert len(streamer.said) == 1 + MAX_TOKENS  # the prompt, then each new token


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
    assert {k: graphed.describe()[k] for k in ("cache", "steps")} == \
        {"cache": "static", "steps": "CUDA graphs"}
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


@cuda
@pytest.mark.parametrize("family_name", LOOP_FAMILIES)
def test_on_a_gpu_the_greedy_loop_gives_generates_tokens(family_name, truthloop_cache):
    """On CUDA the loop's steps replay from their graph while the host queues the next ones
    (reading whether every row has finished late): its tokens are those of generate's own loop
    over the same graphed steps, a caption at a time, in a padded batch, and with every row
    stopping early (the steps queued past the stop dropped)."""
    fast = _load(family_name, "cuda")
    generate = _load(family_name, "cuda", greedy_loop=False)
    assert fast.decoding["loop"] == "truthloop's greedy loop"
    assert fast.decoding["steps"] == generate.decoding["steps"] == "CUDA graphs"
    assert generate.decoding["loop"] == "transformers' generate"
    ours, theirs = _tokens(fast, IMAGES)[1], _tokens(generate, IMAGES)[1]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert torch.equal(_new_tokens(fast, MIXED), _new_tokens(generate, MIXED))
    eos = sorted(set(_new_tokens(generate, MIXED)[:, 4].tolist()))
    with _stopping_at((fast, generate), eos):
        expected = _new_tokens(generate, MIXED)
        assert expected.shape[1] <= 5
        assert torch.equal(_new_tokens(fast, MIXED), expected)
    steps = fast.fast.steps
    assert not steps.failures and steps.eager_steps == 0 and steps.replays > 2 * MAX_TOKENS
    assert fast.fast.loop.calls == len(IMAGES) + 2 and not fast.fast.loop.fallbacks
