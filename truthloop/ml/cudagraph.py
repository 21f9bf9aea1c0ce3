"""Replay a fixed-shape GPU computation from a CUDA graph: the same kernels, without the launches.

A UNet step, a whole BLIP caption and CLIP's one-prompt text encoding are each a fixed sequence of
kernels on tensors of fixed shapes. Eagerly, the host spends longer issuing those kernels
(Python, module hooks, one launch each) than the GPU spends running them. A CUDA graph records
the launches once and replays them with one call. The graph holds the *same* kernels eager chose
for those shapes, so what it computes is bitwise what eager computes (bench/ checks this on the
GPU for all three); nothing is recompiled or re-tuned, unlike torch.compile.

``CudaGraphed(fn)`` wraps a function of tensors. For each input signature (shapes, dtypes,
strides) the first call runs ``fn`` eagerly, the second warms up once on the capture stream, then
captures and replays, later calls copy their inputs into the captured buffers and replay. If
capture fails, that signature stays eager. Off CUDA, or with autograd on, it is just ``fn``.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any, Callable

import torch


def _signature(tensors: tuple[torch.Tensor, ...]) -> tuple | None:
    key = []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
            return None
        key.append((tuple(t.shape), t.stride(), t.dtype, t.device.index))
    return tuple(key)


def _outputs(result: Any) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, tuple) else (result,)


_CAPTURE_STREAMS: dict[int, Any] = {}
# One capture at a time in the process: captures share the capture stream, and the ranking
# threads of a batch (truthloop.ml.batched) may each meet a new shape at once.
_CAPTURE_LOCK = threading.Lock()


def _capture_stream() -> Any:
    """One side stream per device for every capture. cuBLAS keeps a workspace per stream it
    has run on (32 MiB with CUBLAS_WORKSPACE_CONFIG=:4096:8) for the life of the process, and
    a graph's GEMMs keep using their capture stream's: a new stream per captured shape held
    about 0.3 GiB more after a dozen captures. Captures and replays never overlap, so they can
    share one."""
    device = torch.cuda.current_device()
    stream = _CAPTURE_STREAMS.get(device)
    if stream is None:
        stream = _CAPTURE_STREAMS[device] = torch.cuda.Stream()
    return stream


class _Captured:
    def __init__(self, graph: Any, inputs: tuple, outputs: tuple, single: bool):
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs
        self.single = single


class CudaGraphed:
    """``CudaGraphed(fn)(*tensors)`` == ``fn(*tensors)``, replayed from a CUDA graph per shape."""

    def __init__(self, fn: Callable[..., Any], name: str = "graph", eager_first: bool = True,
                 shared_pool: bool = False):
        """eager_first=False: capture at the first call (the caller ran its own eager version).
        shared_pool: all shapes' graphs share one memory pool. Safe here because replays never
        overlap and each replay's outputs are copied out before anything else runs."""
        self.fn = fn
        self.name = name
        self.eager_first = eager_first
        self.shared_pool = shared_pool
        self._pool = None
        self.enabled = True
        self._seen: set = set()
        self._graphs: dict[tuple, _Captured] = {}
        self._failed: dict[tuple, str] = {}  # signature -> why capture failed
        self.replays = 0

    @property
    def failures(self) -> dict[tuple, str]:
        return dict(self._failed)

    def __call__(self, *tensors: torch.Tensor) -> Any:
        key = _signature(tensors) if self.enabled and not torch.is_grad_enabled() else None
        if key is None or key in self._failed:
            return self.fn(*tensors)
        captured = self._graphs.get(key)
        if captured is None:
            # First sight: plain eager, so a one-off shape costs nothing extra.
            if self.eager_first and key not in self._seen:
                self._seen.add(key)
                return self.fn(*tensors)
            try:
                with _CAPTURE_LOCK:
                    captured = self._capture(tensors)
            except Exception as error:  # noqa: BLE001 - any capture failure: stay eager
                self._failed[key] = f"{type(error).__name__}: {error}"
                torch.cuda.synchronize()
                return self.fn(*tensors)
            self._graphs[key] = captured
        for buffer, value in zip(captured.inputs, tensors):
            buffer.copy_(value)
        captured.graph.replay()
        self.replays += 1
        # Clones: the next replay overwrites the graph's output buffers.
        outputs = tuple(out.clone() for out in captured.outputs)
        return outputs[0] if captured.single else outputs

    def _capture(self, tensors: tuple[torch.Tensor, ...]) -> _Captured:
        # Normal tensors even when captured under inference_mode (a diffusers pipeline called by
        # our Painter): they can be refilled in and out of it alike.
        with torch.inference_mode(False):
            inputs = tuple(t.clone() for t in tensors)
        stream = _capture_stream()
        stream.wait_stream(torch.cuda.current_stream())
        # Warm up on the capture stream first (lazy per-stream state such as cuBLAS workspaces
        # must not be created during capture), as torch.cuda.make_graphed_callables does.
        with torch.cuda.stream(stream), self._no_autocast_cache():
            self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self.shared_pool and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # thread_local: another thread's work on its own stream (another ranking thread of a
        # batch) does not break this capture; this thread's unsafe calls still do.
        with torch.cuda.graph(graph, pool=self._pool, stream=stream,
                              capture_error_mode="thread_local"), self._no_autocast_cache():
            result = self.fn(*inputs)
        single = not isinstance(result, tuple)
        return _Captured(graph, inputs, _outputs(result), single)

    @staticmethod
    def _no_autocast_cache():
        # Autocast's cast cache must be off while capturing (torch docs); the casts themselves,
        # and so the values, are the same with it on or off.
        if torch.is_autocast_enabled("cuda"):
            return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  cache_enabled=False)
        return nullcontext()


class _InstalledForward:
    """A wrapper installed as a module's `forward`, one per module: graphs are per module, and a
    second wrapper around the first would try to capture a replay. `on(module)` installs it (or
    finds the one installed), `uninstall()` puts the module's own forward back."""

    _KEY = "_truthloop_installed_forward"
    module: Any

    @classmethod
    def on(cls, module: Any):
        existing = module.__dict__.get(cls._KEY)
        if existing is None:
            existing = cls(module)
            module.__dict__[cls._KEY] = existing
        module.forward = existing.forward
        return existing

    def uninstall(self) -> None:
        if self.module.__dict__.get("forward") == self.forward:
            del self.module.forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class GraphedUNet(_InstalledForward):
    """Installs a CUDA-graphed ``forward`` on a diffusers UNet for the pipeline's own calls.

    Only calls shaped like a text-to-image pipeline's (sample, timestep, encoder_hidden_states on
    the GPU, every other argument None/False) are graphed; anything else runs the original forward.
    """

    _PASSTHROUGH_NONE = ("timestep_cond", "attention_mask", "cross_attention_kwargs",
                         "added_cond_kwargs", "down_block_additional_residuals",
                         "mid_block_additional_residual", "down_intrablock_additional_residuals",
                         "encoder_attention_mask")

    _KEY = "_truthloop_graphed"

    def __init__(self, unet: Any):
        self.unet = self.module = unet
        self.original = unet.forward
        self.compiled = False
        self.graphed = CudaGraphed(self._plain, name="unet")

    def use_forward(self, forward: Callable[..., Any], compiled: bool) -> None:
        """Call (and capture) this forward from now on, e.g. a torch.compile'd one."""
        if self.compiled and compiled:
            return
        self.original = forward
        self.compiled = compiled
        enabled = self.graphed.enabled
        self.graphed = CudaGraphed(self._plain, name="unet")  # graphs of the old kernels: gone
        self.graphed.enabled = enabled

    def _plain(self, sample, timestep, encoder_hidden_states):
        return self.original(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                             return_dict=False)[0]

    def forward(self, sample, timestep, encoder_hidden_states=None, *args, return_dict=True,
                **kwargs):
        plain = (not args and encoder_hidden_states is not None
                 and all(kwargs.get(name) is None for name in self._PASSTHROUGH_NONE)
                 and set(kwargs) <= set(self._PASSTHROUGH_NONE)
                 and isinstance(timestep, torch.Tensor))
        if not plain:
            return self.original(sample, timestep, encoder_hidden_states, *args,
                                 return_dict=return_dict, **kwargs)
        out = self.graphed(sample, timestep, encoder_hidden_states)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)


class GraphedForward(_InstalledForward):
    """A CUDA-graphed ``forward`` for any denoiser a diffusers pipeline calls once per step (the
    SDXL UNet, the FLUX.2 and Z-Image transformers): the same kernels as eager, replayed.

    Each call's arguments are split into their CUDA tensors (lists and dicts of them included,
    e.g. SDXL's `added_cond_kwargs`, Z-Image's per-image latent lists) and the rest (None, flags,
    numbers, strings), which must be hashable: one `CudaGraphed` per such structure, so a flag
    that changes gets its own graph and a Python number that changes every step (a timestep
    passed as a float) never replays a stale one (a new structure each time: eager). Only calls
    with `return_dict=False` (the pipelines' own denoiser calls; GraphedTextEncoder takes
    ModelOutput calls too) are graphed; anything else, or anything unhashable, runs the
    original forward. A forward that syncs with the host mid-way (a
    data-dependent shape) cannot be captured and stays eager (CudaGraphed keeps why).
    """

    _KEY = "_truthloop_graphed_forward"
    # Whether calls that ask for a ModelOutput (return_dict left at True) are graphed too.
    GRAPHS_MODEL_OUTPUTS = False

    def __init__(self, module: Any):
        self.module = module
        self.original = module.forward
        self.compiled = False
        self._graphs: dict[Any, CudaGraphed] = {}
        self.enabled = True

    def use_forward(self, forward: Callable[..., Any], compiled: bool) -> None:
        """Call (and capture) this forward from now on, e.g. a torch.compile'd one (--compile);
        the graphs of the old one are dropped."""
        if self.compiled and compiled:
            return
        self.original = forward
        self.compiled = compiled
        self._graphs = {}

    @property
    def replays(self) -> int:
        return sum(graph.replays for graph in self._graphs.values())

    @property
    def failures(self) -> dict:
        return {key: why for graph in self._graphs.values() for key, why in graph.failures.items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled or torch.is_grad_enabled() \
                or (kwargs.get("return_dict", True) and not self.GRAPHS_MODEL_OUTPUTS):
            return self.original(*args, **kwargs)
        tensors: list[torch.Tensor] = []
        try:
            structure = _split((args, tuple(sorted(kwargs.items()))), tensors)
            hash(structure)
        except TypeError:  # an argument that is neither a tensor nor hashable
            return self.original(*args, **kwargs)
        graphed = self._graphs.get(structure)
        if graphed is None:
            shapes: dict[str, Any] = {}

            def call(*flat: torch.Tensor, _structure=structure, _out=shapes) -> tuple:
                call_args, items = _join(_structure, iter(flat))
                outputs: list[torch.Tensor] = []
                # The output's own structure (a tuple holding a list of tensors, for Z-Image),
                # the same at every call of this input structure.
                _out["structure"] = _split(self.original(*call_args, **dict(items)), outputs)
                return tuple(outputs)

            graphed = self._graphs[structure] = CudaGraphed(call, name="denoiser")
            graphed.output = shapes
        out = graphed(*tensors)
        return _join(graphed.output["structure"], iter(out if isinstance(out, tuple) else (out,)))


class GraphedTextEncoder(GraphedForward):
    """A CUDA-graphed ``forward`` for a pipeline's CLIP text encoder (sd's, SDXL's two): the
    pipeline encodes each prompt, and a negative one where there is one, at one fixed shape
    (77 tokens), so every encoding after the first replays one graph, the same kernels as eager,
    instead of each layer's launches and transformers' output hooks from Python (eagerly,
    SDXL's two encoders took 0.098 s of an image on an H200: bench_generators' stages). The
    pipeline's calls ask for a ModelOutput (hidden states included): it is rebuilt, of its own
    class, around the replay's tensors. A call with an attention mask runs eagerly:
    transformers builds a padded prompt's mask one way while a stream captures and may skip it
    after a host read eagerly, so a graph could take another attention kernel than eager."""

    _KEY = "_truthloop_graphed_text_encoder"
    GRAPHS_MODEL_OUTPUTS = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("attention_mask") is not None:
            return self.original(*args, **kwargs)
        return super().forward(*args, **kwargs)


class _Slot:
    """Where a tensor sat in a call's arguments (its place in the flat tensor list)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<tensor>"


_SLOT = _Slot()


def _split(value: Any, tensors: list) -> Any:
    """`value` with every tensor replaced by a slot (appended to `tensors`); containers become
    tuples tagged with their kind, so the result is hashable when everything else is."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _SLOT
    if isinstance(value, dict) and hasattr(value, "to_tuple"):  # a transformers ModelOutput
        return ("model output", (type(value),
                                 tuple((k, _split(v, tensors)) for k, v in value.items())))
    if isinstance(value, dict):
        return ("dict", tuple((k, _split(v, tensors)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_split(v, tensors) for v in value))
    if isinstance(value, tuple):
        return ("tuple", tuple(_split(v, tensors) for v in value))
    return ("value", value)


def _join(structure: Any, tensors: Any) -> Any:
    """The inverse of `_split`: the arguments again, with these tensors in the slots."""
    if structure is _SLOT:
        return next(tensors)
    kind, inner = structure
    if kind == "value":
        return inner
    if kind == "dict":
        return {k: _join(v, tensors) for k, v in inner}
    if kind == "model output":
        output_type, fields = inner
        return output_type(**{k: _join(v, tensors) for k, v in fields})
    parts = [_join(v, tensors) for v in inner]
    return parts if kind == "list" else tuple(parts)
