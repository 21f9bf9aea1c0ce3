"""The captioner families' captions at their hardware's speed: the library's own `generate`, with a
static KV cache, its decode steps replayed from CUDA graphs and, for plain greedy decoding,
truthloop's own loop in place of generate's (issue 29).

Eager `generate` on a GPU spends most of a token in the host: LLaVA-1.5-7B and Qwen3-VL-2B took
the same ~37 ms a token on an H100 although one is 3.5x larger. Four things change, and nothing
else (the family's own call, its processor and its decoding settings stay as they are):

* **A static KV cache** (transformers' `cache_implementation="static"`, set in the generation
  config `generate` reads): the keys and values live in tensors of a fixed size, written in
  place at a position the cache keeps on the device, and `generate` hands the model a 4-D mask of
  that fixed size. Every decode step then has the same shapes. LLaVA-1.5, Qwen3-VL and Florence-2
  (an encoder-decoder: a static cross-attention cache too) support it.
* **The decode steps replayed from a CUDA graph** (`DecodeSteps`, installed as the decoding
  model's `forward`): from the second step of the first caption on, a step is one graph replay
  instead of some thousand kernel launches from Python. The graph holds the kernels eager chose,
  so its logits are what the eager step computes. The vision tower and the prefill run eagerly,
  once per image (generate encodes the image before the first step). Greedy search and beam
  search (Florence-2's three beams) go through the same forward, so both are graphed.
* **Optionally compiled** (`--compile`): the step's forward is torch.compile'd (inductor's fused
  kernels, not bit-equal to eager) and then graphed as above, as the sd UNet is.
* **truthloop's greedy loop** (`GreedyLoop`, handed to `generate` as its `custom_generate`) for the
  decoder-only families whose decoding is plain greedy (LLaVA-1.5, Qwen3-VL, Janus-Pro's text
  mode): generate prepares the call as ever and the loop replaces its per-step Python and its
  read of the device every step (are all rows done?), so the host queues steps ahead of the GPU.
  Graphed, a step was still 10.4 ms of LLaVA-1.5-7B's token on an H100 where reading its weights
  takes ~4.2. The tokens are generate's; a decoding it does not reproduce (Florence-2's beams, a
  repetition penalty, ...) stays generate's, and the record says why.

transformers would otherwise compile the decode step itself whenever the cache is static on a GPU
(`disable_compile` turns that off): truthloop chooses, and a run records what it chose
(`FastDecoding.describe`, run.json's "decoding").

BLIP's text decoder cannot take transformers' static cache (its cross-attention writes the image's
keys into the decoder's own cache unless the cache is an EncoderDecoderCache, which generate makes
only for encoder-decoder configs; it fails with an IndexError). BLIP's fast path is truthloop's
own: ml/fastcaption.py's FastCaptioner, which replays BLIP's greedy decode op for op (the same
tokens as generate, tests/test_fastcaption.py) and graphs the whole caption on CUDA.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

# The static cache's self-attention layers must be plain StaticLayers: a sliding-window layer
# keeps a Python int of its length, which a replayed graph would not advance.
_GRAPHABLE_LAYER = "StaticLayer"
# Graphs kept per model, the least recently replayed dropped first: each holds a static cache
# of its own (a run's images share one size, so one graph, or one per batch size, serves it;
# Qwen3-VL's prompt length follows the image size).
MAX_GRAPHS = 8


# The captioners' graphed decode steps, and truthloop's greedy loop on CUDA (its flags read late
# from pinned memory), are the default since their GPU tests passed on an H100 (2026-12-07: 16
# of tests/test_fast_decode.py's GPU tests, `bash bench/run_on_gpu.sh tests`; log
# docs/bench-2026-12-07-h100-cuda-tests-fast-decode.log). False: the static cache alone and
# generate's own loop on CUDA. The bench (bench/bench_captioners.py) measures either way.
GRAPHED_DECODE_BY_DEFAULT = True


def _cache_layers(cache: Any) -> list[Any] | None:
    """The layers of a static cache (self-attention, then cross-attention for an
    encoder-decoder), or None where a layer is not a plain initialized StaticLayer."""
    parts = [cache]
    if hasattr(cache, "self_attention_cache"):
        parts = [cache.self_attention_cache, cache.cross_attention_cache]
    layers = [layer for part in parts for layer in getattr(part, "layers", [])]
    if not layers or any(type(layer).__name__ != _GRAPHABLE_LAYER or not layer.is_initialized
                         for layer in layers):
        return None
    return layers


class _Graph:
    """One captured decode step: its input buffers, the static cache it writes (keys, values and
    length of each layer), and its outputs."""

    def __init__(self, graph: Any, inputs: list, cache: list, spec: Any, outputs: dict,
                 output_type: type, captured_cache: Any):
        self.graph = graph
        self.inputs = inputs
        self.cache = cache
        self.spec = spec
        self.outputs = outputs
        self.output_type = output_type
        self.captured_cache = captured_cache


def _reorder_in_place(layer: Any, beam_idx: Any) -> None:
    """A static layer's reorder for beam search (Florence-2's 3 beams), the values
    transformers' StaticLayer.reorder_cache gives, without its cost between two graph replays:
    it asks `get_seq_length() > 0` of every layer every step, a read of the device (a static
    layer's length is a tensor) that made the host wait for the GPU about 25 times a token for
    Florence-2-large, and its gather makes new tensors, which the next replay then copied back
    into the graph's (adoption). Here the condition is applied on the device and the gathered
    rows are written back in place: the same values, the graph's tensors kept."""
    import torch

    if not layer.is_initialized:  # get_seq_length() is 0 then, and nothing is reordered
        return
    filled = layer.cumulative_length > 0
    for name in ("keys", "values"):
        tensor = getattr(layer, name)
        gathered = tensor.index_select(0, beam_idx.to(tensor.device))
        tensor.copy_(torch.where(filled, gathered, tensor))


class DecodeSteps:
    """A decoding model's `forward`, with the decode steps (a static cache already filled by the
    prefill) replayed from a CUDA graph per input signature; every other call (the prefill,
    anything with a dynamic cache, autograd on, off CUDA) is the original forward.

    The graph owns a static cache of its own. Before a replay the generate call's cache is
    *adopted*: where a layer's tensors are not the graph's (a new caption's cache, or beam
    search's reordered one), they are copied into the graph's and the layer is pointed at them,
    so generate reads and writes the very tensors the graph does. `capture=False` keeps the
    adoption and the signature handling but calls the forward eagerly (the CPU tests run it).
    """

    def __init__(self, model: Any, forward: Any = None, capture: bool = True):
        import torch

        self.model = model
        # The class's forward, bound: never a wrapper installed earlier.
        self.original = type(model).forward.__get__(model)
        self.forward = forward or self.original
        self.capture = capture
        self._graphs: dict[Any, _Graph] = {}
        self._eager_buffers: dict[Any, list] = {}  # capture=False: the adopted caches
        self.failures: dict[Any, str] = {}
        self.captures = 0
        self.replays = 0
        self.eager_steps = 0
        self._pool = None
        self._torch = torch

    # -- installing ----------------------------------------------------------------------

    def install(self) -> "DecodeSteps":
        """Become `model.forward` (generate calls the model, whose __call__ calls forward);
        generate checks its arguments against forward's signature, so that is the original's."""
        model = self.model

        @functools.wraps(self.original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            return self(*args, **kwargs)

        forward.__signature__ = inspect.signature(self.original)
        model.forward = forward
        return self

    def uninstall(self) -> None:
        self.model.__dict__.pop("forward", None)

    # -- one call ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        torch = self._torch
        cache = kwargs.get("cache")
        layers = _cache_layers(cache) if cache is not None and not args else None
        if layers is None or torch.is_grad_enabled():
            # The prefill (the cache still empty), or a call that is no decode step.
            return self.original(*args, **kwargs)
        rest = {name: value for name, value in kwargs.items() if name != "cache"}
        key = self._signature(rest, cache, layers)
        if key is None or key in self.failures:
            return self.forward(**kwargs)
        if not (self.capture and layers[0].keys.device.type == "cuda"):
            return self._eager_adopted(key, rest, cache, layers)
        graph = self._graphs.get(key)
        if graph is None:
            # Captured at first sight, never run eagerly first: transformers takes other paths
            # while a stream captures (`is_tracing`: the attention mask is built, not skipped
            # after a host read), so an eager step and its replay may differ in the last bits,
            # and a caption's tokens would depend on which of its steps first met the shape
            # (seen on an H100: a batch's captions changed between two calls).
            from truthloop.ml.cudagraph import _CAPTURE_LOCK

            try:
                with _CAPTURE_LOCK:
                    graph = self._capture(rest, cache, layers)
            except Exception as error:  # noqa: BLE001 - any capture failure: stay eager
                # The layers hold the graph's copies of their values (with the warm-up's
                # lengths put back): the step runs eagerly on them, and so does every later
                # step of this signature.
                self.failures[key] = f"{type(error).__name__}: {error}"
                torch.cuda.synchronize()
                self.eager_steps += 1
                return self.forward(**kwargs)
            self._graphs[key] = graph
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
        else:
            self._graphs[key] = self._graphs.pop(key)  # the most recently used last
        return self._replay(graph, rest, cache, layers)

    def _signature(self, rest: dict, cache: Any, layers: list) -> Any:
        """What a graph is made for: the arguments' structure, every tensor's shape, stride,
        dtype and device, every other argument's value, the cache's shapes (and, for an
        encoder-decoder, which cross-attention layers are filled)."""
        from torch.utils._pytree import tree_flatten

        leaves, spec = tree_flatten(rest)
        meta = []
        for leaf in leaves:
            if isinstance(leaf, self._torch.Tensor):
                meta.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, str(leaf.device)))
            else:
                try:
                    hash(leaf)
                except TypeError:
                    return None
                meta.append(("value", type(leaf).__name__, leaf))
        shapes = tuple((tuple(layer.keys.shape), tuple(layer.values.shape), layer.keys.dtype)
                       for layer in layers)
        updated = tuple(sorted(getattr(cache, "is_updated", {}).items()))
        return spec, tuple(meta), shapes, updated

    # -- the cache -----------------------------------------------------------------------

    @staticmethod
    def _adopt(layers: list, buffers: list) -> None:
        """Point every layer at the graph's tensors, copying its own values in first; and give
        it beam search's reorder in place, without a read of the device (_reorder_in_place)."""
        for layer, (keys, values, length) in zip(layers, buffers):
            if "reorder_cache" not in vars(layer):
                layer.reorder_cache = functools.partial(_reorder_in_place, layer)
            if layer.keys is not keys:
                keys.copy_(layer.keys)
                layer.keys = keys
            if layer.values is not values:
                values.copy_(layer.values)
                layer.values = values
            if layer.cumulative_length is not length:
                length.copy_(layer.cumulative_length)
                layer.cumulative_length = length

    def _eager_adopted(self, key: Any, rest: dict, cache: Any, layers: list) -> Any:
        """The step with the adopted static cache, eagerly (no capture): what a replay does, op
        for op, off CUDA."""
        buffers = self._eager_buffers.get(key)
        if buffers is None:
            buffers = self._eager_buffers[key] = self._new_buffers(layers)
        self._adopt(layers, buffers)
        self.eager_steps += 1
        return self.forward(cache=cache, **rest)

    @staticmethod
    def _new_buffers(layers: list) -> list:
        return [(layer.keys.clone(), layer.values.clone(), layer.cumulative_length.clone())
                for layer in layers]

    # -- capture and replay ----------------------------------------------------------------

    def _capture(self, rest: dict, cache: Any, layers: list) -> _Graph:
        from torch.utils._pytree import tree_flatten, tree_unflatten

        from truthloop.ml.cudagraph import _capture_stream

        torch = self._torch
        buffers = self._new_buffers(layers)
        self._adopt(layers, buffers)
        leaves, spec = tree_flatten(rest)
        tensor_at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        static = list(leaves)
        for i in tensor_at:
            static[i] = leaves[i].clone()
        static_kwargs = tree_unflatten(static, spec)
        lengths = [length.clone() for _, _, length in buffers]
        stream = _capture_stream()
        stream.wait_stream(torch.cuda.current_stream())
        # Warm up on the capture stream first (lazy per-stream state such as cuBLAS workspaces
        # must not be created during capture). The warm-up is a real step: it writes this
        # step's keys and values (the replay writes them again, the same) and advances each
        # layer's length, which is put back.
        with torch.cuda.stream(stream):
            try:
                self.forward(cache=cache, **static_kwargs)
            finally:
                for (_, _, length), before in zip(buffers, lengths):
                    length.copy_(before)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            # One pool for every signature's graph: replays never overlap, and each replay's
            # outputs are copied out before the next.
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream,
                              capture_error_mode="thread_local"):
            out = self.forward(cache=cache, **static_kwargs)
        self.captures += 1
        inputs = [(i, static[i]) for i in tensor_at]
        outputs = {}
        for name, value in out.items():
            # An output that is one of the step's inputs (an encoder-decoder hands back the
            # encoder's states) is the current call's, not the buffer's.
            aliased = [i for i, buffer in inputs if buffer is value]
            outputs[name] = ("input", aliased[0]) if aliased else ("output", value)
        return _Graph(graph, inputs, buffers, spec, outputs, type(out), cache)

    def _replay(self, graph: _Graph, rest: dict, cache: Any, layers: list) -> Any:
        from torch.utils._pytree import tree_flatten

        torch = self._torch
        self._adopt(layers, graph.cache)
        leaves, _ = tree_flatten(rest)
        for i, buffer in graph.inputs:
            buffer.copy_(leaves[i])
        graph.graph.replay()
        self.replays += 1
        fields = {}
        for name, (kind, value) in graph.outputs.items():
            if kind == "input":
                value = leaves[value]
            elif value is graph.captured_cache:
                value = cache  # the output names the cache it was given
            elif isinstance(value, torch.Tensor):
                value = value.clone()  # the next replay overwrites the graph's outputs
            fields[name] = value
        return graph.output_type(**fields)


# The generation-config settings under which generate's greedy search does anything but take
# each row's argmax until it says its end-of-sequence token or reaches max_new_tokens (each
# makes a logits processor, a stopping criterion or another output), with the value that leaves
# the argmax alone. Where the config sets one otherwise, truthloop's greedy loop steps aside
# and generate decodes (GreedyLoop.refusal); the loop checks the processors and criteria
# generate actually made at each call too.
_PLAIN_GREEDY = {
    "guidance_scale": (None, 1), "sequence_bias": (None,), "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "remove_invalid_values": (None, False),
    "exponential_decay_length_penalty": (None,), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "watermarking_config": (None,),
    "renormalize_logits": (None, False), "max_time": (None,), "stop_strings": (None,),
    "token_healing": (None, False), "return_dict_in_generate": (None, False),
    "output_scores": (None, False), "output_logits": (None, False),
    "output_attentions": (None, False), "output_hidden_states": (None, False),
}
# How many decode steps the host may queue past the oldest step whose "have all rows finished"
# flag it has not read yet. The flag of a step is copied to the host as soon as the device has
# run it and read without waiting when it is there; the host waits only for a flag this many
# steps old, so the device always has steps queued. A batch that finishes before
# max_new_tokens decodes at most this many steps too many (dropped: the tokens are generate's).
STEPS_AHEAD = 4
# What generate hands its own loops but drops for a custom_generate: a call passing one of these
# is decoded by generate's own loop.
_FOR_GENERATES_LOOP = ("streamer", "assistant_model", "assistant_tokenizer", "tokenizer",
                       "synced_gpus")


class GreedyLoop:
    """truthloop's greedy decode loop, in place of generate's own (`_sample`) for a decoder-only
    model whose decoding is plain greedy: handed to `generate` as its `custom_generate`, so
    generate still prepares everything (the generation config, the processor's inputs, the
    vision encoder's outputs, the static cache sized as it sizes it, the position ids and the
    attention mask) and this replaces only the loop.

    The prefill is generate's own (`_prefill`); the first decode step's inputs are generate's
    own (`_update_model_kwargs_for_generation`, `prepare_inputs_for_generation`); each later
    step's are those advanced by one token as those two would advance them (the new token, the
    positions + 1, the 2-D padding mask one column longer made into the static cache's 4-D mask
    by the function generate calls), and the model's forward (DecodeSteps on CUDA: a graph
    replay) is called with them. Each row's token is the argmax of its last logits in float32
    (generate's), a finished row's is the pad token, and a row finishes at an end-of-sequence
    token: generate's tokens, bit for bit. What it leaves out is generate's per-step Python
    (the kwargs' update and preparation, its logits processors and stopping criteria, called
    even where there are none to apply) and its read of the device every step (whether all rows
    have finished), which kept the host from queuing the next step: that flag is read
    STEPS_AHEAD steps late, and the steps decoded past the last row's end are dropped.

    Anything else the call asks for (see `refusal`) is decoded by generate's own loop."""

    def __init__(self, steps_ahead: int = STEPS_AHEAD):
        import torch

        self.steps_ahead = steps_ahead
        self.calls = 0  # generate calls (a caption, or a batch's) this loop decoded
        self.decode_steps = 0  # the model calls after the prefills, those dropped included
        self.fallbacks: list[str] = []  # why generate decoded a call instead
        self._events: list[Any] = []
        self._torch = torch

    # -- when it applies -------------------------------------------------------------------

    @staticmethod
    def model_refusal(model: Any) -> str | None:
        """Why this loop cannot decode for `model` at all, or None."""
        from transformers import GenerationMixin

        if model.config.is_encoder_decoder:
            return "an encoder-decoder"
        if model.is_remote_code():
            return "a model of remote code"
        cls = type(model)
        for method in ("prepare_inputs_for_generation", "_update_model_kwargs_for_generation",
                       "_prefill"):
            if getattr(cls, method) is not getattr(GenerationMixin, method):
                # The later steps' inputs are advanced as GenerationMixin's own advance them.
                return f"the model's own {method}"
        return None

    @staticmethod
    def config_refusal(generation: Any) -> str | None:
        """Why this loop cannot decode with the generation config `generation`, or None."""
        from transformers.generation.configuration_utils import GenerationMode

        mode = generation.get_generation_mode()
        if mode == GenerationMode.BEAM_SEARCH:
            return f"{mode.value}: num_beams {generation.num_beams}"
        if mode != GenerationMode.GREEDY_SEARCH:
            return f"{mode.value}: num_beams {generation.num_beams}, do_sample " \
                   f"{generation.do_sample}"
        for name, plain in _PLAIN_GREEDY.items():
            value = getattr(generation, name, None)
            if not any(value is choice or (choice is not None and value == choice)
                       for choice in plain):
                return f"{name} {value!r}"
        if generation.cache_implementation != "static":
            return "no static cache"
        return None

    def refusal(self, model: Any, input_ids: Any, logits_processor: Any, stopping_criteria: Any,
                generation_config: Any, model_kwargs: dict) -> str | None:
        """Why this call is generate's to decode, or None: the model and the config as above,
        and what generate made of them for this call."""
        from transformers.cache_utils import Cache
        from transformers.generation.stopping_criteria import (EosTokenCriteria,
                                                               MaxLengthCriteria)

        reason = self.config_refusal(generation_config) or self.model_refusal(model)
        if reason:
            return reason
        if len(logits_processor):
            return "logits processors " + ", ".join(type(p).__name__ for p in logits_processor)
        kinds = [type(criterion) for criterion in stopping_criteria]
        if set(kinds) - {MaxLengthCriteria, EosTokenCriteria} or MaxLengthCriteria not in kinds:
            return "stopping criteria " + ", ".join(kind.__name__ for kind in kinds)
        if generation_config.is_assistant:
            return "an assistant's decoding"
        if model._valid_auto_compile_criteria(model_kwargs, generation_config):
            return "generate would compile the step"
        cache = model_kwargs.get("cache")
        if not (isinstance(cache, Cache) and cache.is_compileable and not any(cache.is_linear)):
            return "no static cache"
        if model_kwargs.get("inputs_embeds") is not None:
            return "inputs_embeds"
        if not model_kwargs.get("use_cache", True):
            return "use_cache off"
        if stopping_criteria.max_length <= input_ids.shape[-1]:
            return "no token to decode"
        return None

    # -- generate's custom_generate ----------------------------------------------------------

    def __call__(self, model: Any, input_ids: Any, logits_processor: Any,
                 stopping_criteria: Any, generation_config: Any, **model_kwargs: Any) -> Any:
        reason = self.refusal(model, input_ids, logits_processor, stopping_criteria,
                              generation_config, model_kwargs)
        if reason is not None:
            # Decoded by the loop generate would have run itself, with what it prepared.
            from transformers.generation.utils import GENERATION_MODES_MAPPING

            self.fallbacks.append(reason)
            method = GENERATION_MODES_MAPPING[generation_config.get_generation_mode()]
            if "/" in method:  # a decoding transformers keeps on the Hub, not in the library
                raise ValueError(f"truthloop cannot decode {method} ({reason})")
            return getattr(type(model), method)(
                model, input_ids, logits_processor=logits_processor,
                stopping_criteria=stopping_criteria, generation_config=generation_config,
                **model_kwargs)
        return self._decode(model, input_ids, stopping_criteria, generation_config, model_kwargs)

    def _decode(self, model: Any, input_ids: Any, stopping_criteria: Any,
                generation_config: Any, model_kwargs: dict) -> Any:
        from transformers.generation.stopping_criteria import EosTokenCriteria

        torch = self._torch
        device = input_ids.device
        batch, prompt = input_ids.shape
        new_tokens = stopping_criteria.max_length - prompt
        eos = [criterion.eos_token_id for criterion in stopping_criteria
               if isinstance(criterion, EosTokenCriteria)]
        eos = torch.cat([ids.to(device).reshape(-1) for ids in eos]) if eos else None
        pad = generation_config._pad_token_tensor
        pad = pad.to(device) if pad is not None else None
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        flags = _AllFinished(device, self.steps_ahead, self._events, new_tokens)
        self.calls += 1

        outputs = model._prefill(input_ids, generation_config, model_kwargs,
                                 is_first_iteration=not generation_config.is_assistant)
        model_kwargs = model._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=False)
        logits = _last_logits(outputs)
        del outputs
        steps = _StepInputs(model, input_ids, model_kwargs, new_tokens)
        with model._optimize_model_for_decode():  # as generate's loop, after the prefill
            tokens, stop = self._steps(model, logits, steps, new_tokens, eos, pad, unfinished,
                                       flags)
        kept = len(tokens) if stop is None else stop + 1
        return torch.cat([input_ids, torch.stack(tokens[:kept], dim=1)], dim=-1)

    def _steps(self, model: Any, logits: Any, steps: "_StepInputs", new_tokens: int, eos: Any,
               pad: Any, unfinished: Any, flags: "_AllFinished") -> tuple[list[Any], int | None]:
        """The tokens of every step decoded from the prefill's last `logits` on, and the first
        step after which every row had finished (None: none before the last)."""
        torch = self._torch
        tokens: list[Any] = []
        stop = None
        for step in range(new_tokens):
            if step:
                logits = _last_logits(model(**steps.inputs, return_dict=True))
                self.decode_steps += 1
            token = torch.argmax(logits, dim=-1)
            if eos is not None:
                # A finished row says the pad token; a row finishes at an end-of-sequence token
                # (generate's torch.isin, as a comparison: isin may sort, and read the device, for
                # many ids).
                token = torch.where(unfinished, token, pad)
                unfinished = unfinished & ~(token[:, None] == eos).any(dim=-1)
            tokens.append(token)
            if step == new_tokens - 1:
                break
            if eos is not None:
                flags.record(step, unfinished)
                stop = flags.first_finished(step)
                if stop is not None:
                    break
            steps.advance(token, step + 1)
        if stop is None and eos is not None:
            stop = flags.first_finished(None)
        return tokens, stop


def _last_logits(outputs: Any) -> Any:
    """generate's scores for the next token: the last position's logits, copied as float32 (the
    copy keeps none of the model's outputs alive)."""
    import torch

    return outputs.logits[:, -1].to(copy=True, dtype=torch.float32)


class _StepInputs:
    """A decode step's model inputs: generate's own for the first step after the prefill, then
    each advanced by one token as generate would advance them (its kwargs' update then its
    preparation of them, which for a static cache changes nothing else)."""

    def __init__(self, model: Any, input_ids: Any, model_kwargs: dict, new_tokens: int):
        import torch

        from transformers.masking_utils import create_masks_for_generate

        self.model = model
        self.prompt = input_ids
        self.kwargs = model_kwargs  # as generate's update left them after the prefill
        self.inputs: dict[str, Any] = {}
        # generate's 2-D mask grows by a column of ones a step (None: no padding anywhere)
        mask = model_kwargs.get("attention_mask")
        self.mask = None if mask is None else torch.cat(
            [mask, mask.new_ones((mask.shape[0], new_tokens))], dim=-1)
        self.width = None if mask is None else mask.shape[1]  # the first decode step's
        self.make_mask = getattr(model, "create_masks_for_generate", create_masks_for_generate)
        self.embeds = torch.empty((input_ids.shape[0], 1, 0), dtype=model.dtype,
                                  device=input_ids.device)

    def advance(self, token: Any, step: int) -> None:
        """The inputs of decode step `step` (1: the first after the prefill), `token` its
        input (the tokens of the step before)."""
        import torch

        if step == 1:
            ids = torch.cat([self.prompt, token[:, None]], dim=-1)
            self.inputs = self.model.prepare_inputs_for_generation(
                ids, next_sequence_length=1, **self.kwargs)
            self.kwargs = {}
            return
        inputs = self.inputs
        inputs["input_ids"] = token[:, None]
        if inputs.get("position_ids") is not None:
            # generate appends the last position + 1 and hands the step the last one
            inputs["position_ids"] = inputs["position_ids"] + 1
        # token_type_ids (the last one repeated), mm_token_type_ids (zeros appended), the cache
        # (one object) and the rest (passed on unchanged) are the first step's.
        mask = self.make_mask(
            config=self.model.config, inputs_embeds=self.embeds,
            attention_mask=None if self.mask is None else self.mask[:, :self.width + step - 1],
            cache=inputs.get("cache"), position_ids=inputs.get("position_ids"),
            block_sequence_ids=None, token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"), is_first_iteration=False)
        if isinstance(mask, dict):
            mask = {key: value.contiguous() if isinstance(value, torch.Tensor) else value
                    for key, value in mask.items()}
        elif isinstance(mask, torch.Tensor):
            mask = mask.contiguous()
        if mask is None:
            inputs.pop("attention_mask", None)
        else:
            inputs["attention_mask"] = mask


class _AllFinished:
    """Whether every row had finished after each step, as the host learns it: on CUDA each
    step's flag is copied to pinned memory behind the step and read once the copy is done, the
    host waiting only for a flag `ahead` steps old; elsewhere (no queue to keep full) a flag
    is read `ahead` steps late all the same, so that the CPU runs what the GPU runs."""

    def __init__(self, device: Any, ahead: int, events: list, steps: int):
        import collections

        import torch

        self.ahead = ahead
        self.pending: collections.deque = collections.deque()
        self.cuda = device.type == "cuda"
        self.events = events
        if self.cuda:
            self.host = torch.empty(max(steps, 1), dtype=torch.bool, pin_memory=True)
            while len(events) < ahead + 2:  # an event is recorded again once its flag is read
                events.append(torch.cuda.Event())

    def record(self, step: int, unfinished: Any) -> None:
        finished = ~unfinished.any()
        if not self.cuda:
            self.pending.append((step, finished, None))
            return
        flag = self.host[step]
        flag.copy_(finished, non_blocking=True)
        event = self.events[step % len(self.events)]
        event.record()
        self.pending.append((step, flag, event))

    def first_finished(self, step: int | None) -> int | None:
        """The first step after which every row had finished, among the flags read now (those
        of step - ahead and before, waited for, and any later one already on the host; every
        flag with `step` None), or None."""
        while self.pending:
            recorded, flag, event = self.pending[0]
            if step is not None and recorded > step - self.ahead \
                    and (event is None or not event.query()):
                break
            if event is not None:
                event.synchronize()
            self.pending.popleft()
            if bool(flag):
                return recorded
        return None


class FastDecoding:
    """How a family captioner decodes: `describe()` is what run.json records; `before_generate`
    runs before each generate call; `generate(model)` is the generate the family's call makes
    its tokens with."""

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def before_generate(self) -> None:
        pass

    def generate(self, model: Any) -> Callable[..., Any]:
        """What the family's call runs in place of `model.generate`: the model's own here."""
        return model.generate

    def caption(self, image: Any, instruction: str, max_new_tokens: int) -> str | None:
        """A caption by a path of its own (BLIP's), or None: the family's call makes it."""
        return None


class PlainDecoding(FastDecoding):
    """The family's plain call: transformers' default dynamic cache, eager steps, generate's
    own loop (a model a StaticDecoding had set up is put back as it was)."""

    def __init__(self, decoder: Any):
        _undo_static(decoder)

    def describe(self) -> dict[str, Any]:
        return {"cache": "dynamic", "steps": "eager", "loop": "transformers' generate"}


def _undo_static(module: Any) -> None:
    """Undo StaticDecoding on `module`: its forward and generation config as they were."""
    before = module.__dict__.pop("_truthloop_static", None)
    if before is None:
        return
    module.__dict__.pop("forward", None)
    generation = module.generation_config
    generation.cache_implementation, generation.disable_compile = before


def compiled_step(decoder: Any) -> Callable[..., Any]:
    """`--compile`'s decode step: the decoder's own forward through torch.compile, static shapes
    (every decode step of a static cache has the same ones; a new batch size compiles again)."""
    import torch

    return torch.compile(type(decoder).forward.__get__(decoder), dynamic=False)


class StaticDecoding(FastDecoding):
    """A static KV cache for `decoder` (the model whose `generate` decodes: captioning.decoder),
    and on CUDA the decode steps graphed (`graphs`), compiled first (`compiled`), or eager
    (neither); `loop`: truthloop's greedy loop in place of generate's where the decoding is
    plain greedy (GreedyLoop), `call_settings` being what the family's call sets over the
    generation config. `capture` (tests): install DecodeSteps whatever the device, capturing
    graphs or not."""

    def __init__(self, decoder: Any, graphs: bool, compiled: bool, capture: bool | None = None,
                 loop: bool = True, call_settings: dict[str, Any] | None = None):
        self.decoder = decoder
        _undo_static(self.decoder)
        generation = self.decoder.generation_config
        self.decoder.__dict__["_truthloop_static"] = (generation.cache_implementation,
                                                      generation.disable_compile)
        generation.cache_implementation = "static"
        # transformers compiles the decode step by itself when the cache is static on a GPU
        # (inductor's kernels: other bits); truthloop decides that (see the module's doc).
        generation.disable_compile = True
        on_cuda = self.decoder.device.type == "cuda"
        self.compiled = compiled and on_cuda
        self.graphs = (graphs or self.compiled) and on_cuda
        self.steps = None
        if self.graphs or capture is not None:
            forward = compiled_step(self.decoder) if self.compiled else None
            self.steps = DecodeSteps(self.decoder, forward,
                                     capture=self.graphs if capture is None else capture)
            self.steps.install()
        self.loop: GreedyLoop | None = None
        self.loop_refusal: str | None = None
        if loop:
            import copy

            called = copy.deepcopy(generation)
            for name, value in (call_settings or {}).items():
                setattr(called, name, value)
            self.loop_refusal = GreedyLoop.config_refusal(called) \
                or GreedyLoop.model_refusal(decoder)
            if self.loop_refusal is None:
                self.loop = GreedyLoop()

    def describe(self) -> dict[str, Any]:
        steps = "eager"
        if self.steps is not None and self.graphs:
            steps = "compiled, CUDA graphs" if self.compiled else "CUDA graphs"
        loop = "transformers' generate"
        if self.loop is not None:
            loop = "truthloop's greedy loop"
        elif self.loop_refusal is not None:
            loop += f" ({self.loop_refusal})"
        return {"cache": "static", "steps": steps, "loop": loop}

    def before_generate(self) -> None:
        # generate sizes a static cache to the longest it has made on this model
        # (_previous_max_cache_length, kept to spare torch.compile a recompile); forgotten here,
        # so that a caption's cache, and so its arithmetic, depends on its own prompt alone.
        self.decoder.__dict__.pop("_previous_max_cache_length", None)

    def generate(self, model: Any) -> Callable[..., Any]:
        """`model.generate` with truthloop's greedy loop as its decoding loop (generate prepares
        the inputs, the cache and the stopping criteria as always, then hands them to it)."""
        if self.loop is None or model is not self.decoder:
            return model.generate
        loop = self.loop

        def generate(*args: Any, **kwargs: Any) -> Any:
            passed = [name for name in _FOR_GENERATES_LOOP if kwargs.get(name) is not None]
            if passed:
                loop.fallbacks.append(", ".join(passed))
                return model.generate(*args, **kwargs)
            return model.generate(*args, custom_generate=loop, **kwargs)

        return generate


class BlipDecoding(FastDecoding):
    """BLIP through ml/fastcaption.py's FastCaptioner (its own static-shaped decode, graphed on
    CUDA) where it reproduces generate exactly; generate otherwise."""

    def __init__(self, model: Any, processor: Any, graphs: bool):
        from truthloop.ml.fastcaption import FastCaptioner

        self.fast = FastCaptioner(model, processor, model.device, model.dtype,
                                  cuda_graphs=graphs)
        self.last_reason: str | None = None

    def describe(self) -> dict[str, Any]:
        steps = "truthloop's BLIP decode"
        if self.fast.cuda_graphs and self.fast.model.device.type == "cuda":
            steps += ", CUDA graphs"
        return {"cache": "truthloop's", "steps": steps, "loop": "truthloop's BLIP decode"}

    def caption(self, image: Any, instruction: str, max_new_tokens: int) -> str | None:
        inputs = self.fast._inputs(image)
        self.last_reason = self.fast.unsupported(inputs, max_new_tokens)
        if self.last_reason is not None:
            return None
        tokens = self.fast.generate_ids(inputs["pixel_values"], max_new_tokens)
        return self.fast.processor.decode(tokens[0], skip_special_tokens=True)


def fast_decoding(family: str, model: Any, processor: Any, decoder: Any, *, fast: bool = True,
                  graphs: bool = True, compiled: bool = False,
                  loop: bool = True) -> FastDecoding:
    """The decoding a family captioner uses (`decoder`: the part of `model` whose `generate`
    decodes): `fast` off is the plain call; BLIP's own fast path; the others' static cache,
    graphed on CUDA (`graphs`), compiled first (`compiled`), decoded by truthloop's greedy loop
    where it applies (`loop`)."""
    if not fast:
        return PlainDecoding(decoder)
    if family == "blip":
        return BlipDecoding(model, processor, graphs)
    from truthloop.ml.families import captioner_module

    settings = getattr(captioner_module(family), "CAPTION_CALL_SETTINGS", None)
    return StaticDecoding(decoder, graphs, compiled, loop=loop, call_settings=settings)
