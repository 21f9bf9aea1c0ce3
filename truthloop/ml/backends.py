"""Wires the real models into the loop's Backends (the only engine module that pulls in torch)."""

from __future__ import annotations

import warnings
from typing import Any

from truthloop import events as ev
from truthloop.config import RunConfig
from truthloop.families import DEFAULT_CAPTIONER, DEFAULT_GENERATOR, GENERATORS, shares_model
from truthloop.loop import Backends, EventSink


# The warnings the libraries are known to repeat at every call, each filtered by its text and
# the module it is attributed to, and nothing else: any other warning (a model loaded in fp32, a
# deprecation that will break us next release) still reaches stderr.
KNOWN_NOISE = (
    # clip-interrogator 0.6.0 wraps every CLIP call in torch.cuda.amp.autocast()...
    (FutureWarning, r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated",
     r"clip_interrogator\."),
    # ...which, on a machine without CUDA, says so once per call.
    (UserWarning, r"CUDA is not available or torch_xla is imported\. Disabling autocast",
     r"torch\.cuda\.amp\.autocast_mode"),
)


def quiet_libraries() -> None:
    """The libraries' own progress bars and notices would tear through the TUI and the log lines.

    Warnings: only KNOWN_NOISE is filtered. The filters are process-wide but match one message
    from one module each; `warnings.catch_warnings` around the calls instead would swap the
    process's filter list from the loop's thread while the TUI's thread runs (it is not
    thread-safe before Python 3.14).
    """
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category, message, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def load_backends(config: RunConfig, emit: EventSink) -> Backends:
    """The run's pair, loaded: the generator family's painter and the captioner family's
    captioner, each side on its own (the seed article's sd and clip-interrogator with their fast
    paths), and the CLIP that makes the drift measures and the atlas for every pair."""
    m, device = _prepare(config, emit)
    loaded: dict[str, dict[str, str | None]] = {}
    details: dict[str, Any] = {"generator": m.generator, "captioner": m.captioner}
    painter = _load_painter(config, m, device, loaded, details, emit)
    shared = None
    if shares_model(m.generator, m.captioner) and m.generator_model == m.caption_model:
        # A unified family (janus-pro) named on both sides with one checkpoint: the
        # captioner is the generator's model, loaded once.
        shared = (painter.model, painter.processor, loaded["generator_model"])
    captioner, embedder = _load_captioner(config, m, device, loaded, details, emit,
                                          shared=shared)
    waiting = compile_notice(config, device)
    if waiting:
        emit(ev.Notice(waiting))
    return Backends(captioner=captioner, painter=painter, embedder=embedder, device=device,
                    details=details, loaded=loaded)


def compile_notice(config: RunConfig, device: str) -> str | None:
    """What a run with --compile on a GPU says before its first image, which waits for
    torch.compile (on another device --compile draws eagerly: nothing to wait for)."""
    if not (config.generate.compile and device == "cuda"):
        return None
    return ("--compile: the first image (and, for a captioner family, the first caption) "
            "waits for torch.compile, minutes the first time on this machine; inductor's "
            "cache serves later runs")


def load_captioner_side(config: RunConfig, emit: EventSink) -> tuple[Any, dict[str, Any]]:
    """The captioner of `load_backends`, alone (`truthloop caption`): the same loading (the tiny
    swap, the device, the family's checkpoint or clip-interrogator with its CLIP and fast
    paths), no generator, and beside a family no CLIP, since nothing is measured. Returns the
    captioner and {"device", "details", "loaded"} as a run records them."""
    m, device = _prepare(config, emit)
    loaded: dict[str, dict[str, str | None]] = {}
    details: dict[str, Any] = {"captioner": m.captioner}
    captioner, _ = _load_captioner(config, m, device, loaded, details, emit, embedder=False)
    return captioner, {"device": device, "details": details, "loaded": loaded}


def _prepare(config: RunConfig, emit: EventSink) -> tuple[Any, str]:
    """The libraries quietened, determinism set, the models' ModelConfig (tiny checkpoints
    swapped in for --models tiny) and the device they go to."""
    quiet_libraries()
    from truthloop.ml.models import pick_device, resolve, set_determinism

    set_determinism()
    m = resolve(config.models)
    return m, pick_device(m.device, lambda message: emit(ev.Notice(message)))


def _load_painter(config: RunConfig, m: Any, device: str, loaded: dict, details: dict,
                  emit: EventSink) -> Any:
    from truthloop.ml.models import load_pipeline

    notice = lambda message: emit(ev.Notice(message))  # noqa: E731
    emit(ev.Loading(f"loading image model {m.generator_model}"))
    if GENERATORS[m.generator].autoregressive:
        from truthloop.ml.families.painting import TokenPainter, load_token_generator

        model, processor, loaded["generator_model"] = load_token_generator(
            m.generator, m.generator_model, device)
        details["dtype"] = str(model.dtype)
        return TokenPainter(model, processor, m.generator, config.generate, device)
    if m.generator != DEFAULT_GENERATOR:
        from truthloop.ml.families.painting import FamilyPainter, load_generator

        pipe, loaded["generator_model"] = load_generator(
            m.generator, m.generator_model, device, m.low_vram, notice, config.generate.scheduler)
        details["dtype"] = str(pipe.dtype)
        return FamilyPainter(pipe, m.generator, config.generate, device,
                             cuda_graphs=m.cuda_graphs and not m.low_vram)
    import torch

    from truthloop.ml.generate import Painter

    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe, loaded["generator_model"] = load_pipeline(
        m.generator_model, device, dtype, config.generate.scheduler, m.low_vram, notice)
    details["dtype"] = str(dtype)
    # --low-vram asks for memory over speed: a CUDA graph keeps its buffers for the whole run
    # (BLIP's decode and best's chain passes hold GBs at full size), and offloading moves the
    # UNet's weights around each call, so no graphs there (the same numbers either way).
    painter = Painter(pipe, config.generate, device,
                      cuda_graphs=m.cuda_graphs and not m.low_vram)
    if painter.fp8 is not None:
        details["fp8"] = painter.fp8.to_dict()  # which layers run in float8, and how scaled
    return painter


def _load_captioner(config: RunConfig, m: Any, device: str, loaded: dict, details: dict,
                    emit: EventSink, embedder: bool = True,
                    shared: tuple[Any, Any, dict] | None = None) -> tuple[Any, Any]:
    """The captioner and the embedder: clip-interrogator's CLIP serves both, and beside any
    other family the same CLIP is loaded for the embedder alone (unless `embedder` is off:
    then the embedder is None). `shared`: the generator's (model, processor, record), which a
    unified family's captioner uses instead of loading its checkpoint again."""
    from truthloop.ml.models import load_clip

    emit(ev.Loading(f"caption model {m.caption_model}: the image model's, loaded once"
                    if shared else f"loading caption model {m.caption_model}"))
    if m.captioner != DEFAULT_CAPTIONER:
        from truthloop.ml.embedding import OpenClipEmbedder
        from truthloop.ml.families.captioning import load_captioner

        # Its decode steps go through a static KV cache; on CUDA they replay from graphs (not
        # with --low-vram: a graph keeps its buffers; fastdecode.GRAPHED_DECODE_BY_DEFAULT,
        # on since their GPU tests passed); --compile compiles them first. truthloop's greedy
        # loop replaces generate's (on CUDA under the same flag: its flags read late from
        # pinned memory were tested with the graphs).
        from truthloop.ml.families.fastdecode import GRAPHED_DECODE_BY_DEFAULT

        captioner, loaded["caption_model"] = load_captioner(
            m.captioner, m.caption_model, device, config.caption,
            lambda message: emit(ev.Notice(message)),
            cuda_graphs=GRAPHED_DECODE_BY_DEFAULT and m.cuda_graphs and not m.low_vram,
            compile=config.generate.compile, shared=shared,
            greedy_loop=GRAPHED_DECODE_BY_DEFAULT or not str(device).startswith("cuda"))
        details["captioner_dtype"] = str(captioner.model.dtype)
        details["decoding"] = captioner.decoding
        if not embedder:
            return captioner, None
        emit(ev.Loading(f"loading CLIP {m.clip_model}"))
        clip_model, preprocess, details["clip_name"], loaded["clip_model"] = load_clip(
            m.clip_model, device)
        return captioner, OpenClipEmbedder(clip_model, preprocess, details["clip_name"], device,
                                           cuda_graphs=m.cuda_graphs and not m.low_vram)
    import torch

    from truthloop.ml.families.captioning import decode_greedily, generation_origin
    from truthloop.ml.interrogate import Captioner, ClipEmbedder, build_interrogator
    from truthloop.ml.models import LoadedModels, load_caption_model

    dtype = torch.float16 if device == "cuda" else torch.float32
    caption_model, caption_processor, loaded["caption_model"] = load_caption_model(
        m.caption_model, device, dtype)
    # clip-interrogator's BLIP decodes as every captioner does: its checkpoint's settings,
    # sampling off (BLIP's ask for none, so this changes no caption).
    details["decoding"] = decode_greedily(
        caption_model, config.caption.caption_max_length,
        generation_origin(caption_model, loaded["caption_model"].get("path")),
        config.caption.decoding)
    emit(ev.Loading(f"loading CLIP {m.clip_model}"))
    clip_model, preprocess, details["clip_name"], loaded["clip_model"] = load_clip(
        m.clip_model, device)
    models = LoadedModels(None, caption_model, caption_processor, clip_model, preprocess,
                          details["clip_name"], device, dtype, loaded)

    def report(label: str, done: int | None, total: int | None) -> None:
        emit(ev.Loading(f"label embeddings: {label}", done, total))

    emit(ev.Loading("preparing label embeddings"))
    interrogator = build_interrogator(models, config.caption, report)
    captioner = Captioner(interrogator, config.caption,
                          cuda_graphs=m.cuda_graphs and not m.low_vram)
    return captioner, ClipEmbedder(interrogator, captioner.fast)
