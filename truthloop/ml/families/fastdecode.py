"""The captioner families' captions at their hardware's speed: the library's own `generate`, with a
static KV cache and its decode steps replayed from CUDA graphs (issue 29).

Eager `generate` on a GPU spends most of a token in the host: LLaVA-1.5-7B and Qwen3-VL-2B took
the same ~37 ms a token on an H100 although one is 3.5x larger. Three things change, and nothing
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
from typing import Any

# The static cache's self-attention layers must be plain StaticLayers: a sliding-window layer
# keeps a Python int of its length, which a replayed graph would not advance.
_GRAPHABLE_LAYER = "StaticLayer"
# Graphs kept per model, the least recently replayed dropped first: each holds a static cache
# of its own (a run's images share one size, so one graph, or one per batch size, serves it;
# Qwen3-VL's prompt length follows the image size).
MAX_GRAPHS = 8


# The captioners' graphed decode steps are built and tested on the CPU (where nothing is
# captured), but their GPU tests (tests/test_fast_decode.py, `bash bench/run_on_gpu.sh tests`)
# have not run yet: no GPU was to be had when they were written (2026-12-07). A run's captioner
# takes the static cache alone (the plain call's tokens, tested) until those tests pass on a GPU;
# then set this True. The bench (bench/bench_captioners.py) measures the graphed path either way.
GRAPHED_DECODE_BY_DEFAULT = False


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
        """Point every layer at the graph's tensors, copying its own values in first."""
        for layer, (keys, values, length) in zip(layers, buffers):
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


class FastDecoding:
    """How a family captioner decodes: `describe()` is what run.json records; `before_generate`
    runs before each generate call."""

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def before_generate(self) -> None:
        pass

    def caption(self, image: Any, instruction: str, max_new_tokens: int) -> str | None:
        """A caption by a path of its own (BLIP's), or None: the family's call makes it."""
        return None


class PlainDecoding(FastDecoding):
    """The family's plain call: transformers' default dynamic cache, eager steps (a model a
    StaticDecoding had set up is put back as it was)."""

    def __init__(self, decoder: Any):
        _undo_static(decoder)

    def describe(self) -> dict[str, Any]:
        return {"cache": "dynamic", "steps": "eager"}


def _undo_static(module: Any) -> None:
    """Undo StaticDecoding on `module`: its forward and generation config as they were."""
    before = module.__dict__.pop("_truthloop_static", None)
    if before is None:
        return
    module.__dict__.pop("forward", None)
    generation = module.generation_config
    generation.cache_implementation, generation.disable_compile = before


class StaticDecoding(FastDecoding):
    """A static KV cache for `decoder` (the model whose `generate` decodes: captioning.decoder),
    and on CUDA the decode steps graphed (`graphs`), compiled first (`compiled`), or eager
    (neither). `capture` (tests): install DecodeSteps whatever the device, capturing graphs or
    not."""

    def __init__(self, decoder: Any, graphs: bool, compiled: bool, capture: bool | None = None):
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
            forward = None
            if self.compiled:
                import torch

                forward = torch.compile(type(self.decoder).forward.__get__(self.decoder),
                                        dynamic=False)
            self.steps = DecodeSteps(self.decoder, forward,
                                     capture=self.graphs if capture is None else capture)
            self.steps.install()

    def describe(self) -> dict[str, Any]:
        steps = "eager"
        if self.steps is not None and self.graphs:
            steps = "compiled, CUDA graphs" if self.compiled else "CUDA graphs"
        return {"cache": "static", "steps": steps}

    def before_generate(self) -> None:
        # generate sizes a static cache to the longest it has made on this model
        # (_previous_max_cache_length, kept to spare torch.compile a recompile); forgotten here,
        # so that a caption's cache, and so its arithmetic, depends on its own prompt alone.
        self.decoder.__dict__.pop("_previous_max_cache_length", None)


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
        return {"cache": "truthloop's", "steps": steps}

    def caption(self, image: Any, instruction: str, max_new_tokens: int) -> str | None:
        inputs = self.fast._inputs(image)
        self.last_reason = self.fast.unsupported(inputs, max_new_tokens)
        if self.last_reason is not None:
            return None
        tokens = self.fast.generate_ids(inputs["pixel_values"], max_new_tokens)
        return self.fast.processor.decode(tokens[0], skip_special_tokens=True)


def fast_decoding(family: str, model: Any, processor: Any, decoder: Any, *, fast: bool = True,
                  graphs: bool = True, compiled: bool = False) -> FastDecoding:
    """The decoding a family captioner uses (`decoder`: the part of `model` whose `generate`
    decodes): `fast` off is the plain call; BLIP's own fast path; the others' static cache,
    graphed on CUDA (`graphs`), compiled first (`compiled`)."""
    if not fast:
        return PlainDecoding(decoder)
    if family == "blip":
        return BlipDecoding(model, processor, graphs)
    return StaticDecoding(decoder, graphs, compiled)
