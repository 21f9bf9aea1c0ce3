"""Wires the real models into the loop's Backends (the only engine module that pulls in torch)."""

from __future__ import annotations

import warnings

from truthloop import events as ev
from truthloop.config import RunConfig
from truthloop.loop import Backends, EventSink


def quiet_libraries() -> None:
    """The libraries' own progress bars and notices would tear through the TUI and the log lines."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def load_backends(config: RunConfig, emit: EventSink) -> Backends:
    quiet_libraries()
    from truthloop.ml.generate import Painter
    from truthloop.ml.interrogate import Captioner, ClipEmbedder, build_interrogator
    from truthloop.ml.models import load_models

    models = load_models(config.models, config.generate.scheduler,
                         progress=lambda message: emit(ev.Loading(message)),
                         notice=lambda message: emit(ev.Notice(message)))

    def report(label: str, done: int | None, total: int | None) -> None:
        emit(ev.Loading(f"label embeddings: {label}", done, total))

    emit(ev.Loading("preparing label embeddings"))
    interrogator = build_interrogator(models, config.caption, report)
    # --low-vram asks for memory over speed: a CUDA graph keeps its buffers for the whole run
    # (BLIP's decode and best's chain passes hold GBs at full size), and offloading moves the
    # UNet's weights around each call, so no graphs there (the same numbers either way).
    cuda_graphs = config.models.cuda_graphs and not config.models.low_vram
    captioner = Captioner(interrogator, config.caption, cuda_graphs=cuda_graphs)
    return Backends(
        captioner=captioner,
        painter=Painter(models.pipe, config.generate, models.device, cuda_graphs=cuda_graphs),
        embedder=ClipEmbedder(interrogator, captioner.fast),
        device=models.device,
        details={"clip_name": models.clip_name, "dtype": str(models.dtype)},
        loaded=models.loaded,
    )
