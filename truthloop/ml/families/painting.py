"""Prompt -> image for the generator families beyond sd, through diffusers' own pipeline.

Each family's pipeline is called plainly, its denoiser's steps replayed from CUDA graphs on a GPU
(ml.cudagraph.GraphedForward: the same kernels, so the same pixels; with --compile, inductor's
kernels, replayed: `speed_up`) and SDXL's text encodings too (ml.generate.graph_text_encoders),
with the run's seed behaviour (ml.generate.RandomStream), a stop/pause check after every
denoising step (diffusers' callback_on_step_end) and the family's cheap latent preview where it
has one.

A family that draws token by token with a transformers model (families.GeneratorFamily.
autoregressive: janus-pro) is loaded as the captioner families are (`load_token_generator`) and
drawn by `TokenPainter`: the family's own call, a stop/pause check after every image token.
"""

from __future__ import annotations

from typing import Any, Callable

from truthloop.config import GenerateConfig
from truthloop.families import GENERATORS
from truthloop.ml.families import generator_module
from truthloop.ml.generate import (SeededPainter, _has_offload_hooks, graph_text_encoders,
                                   step_callback)

Progress = Callable[[str], None]


def load_generator(family: str, spec: str, device: str, low_vram: bool = False,
                   notice: Progress = lambda message: None, scheduler: str = "default",
                   ) -> tuple[Any, dict[str, str | None]]:
    """The family's pipeline from a hub id or a local directory, in the family's dtype, through
    models.py's one loading path (the hub cache, withdrawn ids' mirrors, one-line errors)."""
    from truthloop.ml.models import load_pipeline

    return load_pipeline(spec, device, generator_module(family).dtype(device), scheduler,
                         low_vram, notice, pipeline=GENERATORS[family].pipeline)


def denoiser(pipe: Any) -> Any:
    """The model a pipeline calls at every step: SDXL's UNet, or FLUX.2's / Z-Image's
    transformer."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def speed_up(pipe: Any, cuda_graphs: bool, compile: bool) -> Any:
    """The denoiser's graph wrapper (ml.cudagraph.GraphedForward), installed on it: its steps
    replayed from CUDA graphs (`cuda_graphs`: the same kernels as eager, so the same pixels as
    the plain pipeline call, without a launch per kernel per step); with `compile` (--compile),
    the denoiser's forward and the VAE decoder torch.compile'd first as sd's are
    (ml.generate.compile_pipeline: inductor's default mode, graph breaks allowed; no
    channels-last or fused QKV), so the graphs replay inductor's kernels: other pixels, so
    opt-in and recorded. FamilyPainter calls this on CUDA only (off it, --compile draws
    eagerly, as sd's does); a graph on the CPU is just the call."""
    from truthloop.ml.cudagraph import GraphedForward
    from truthloop.ml.generate import compile_pipeline

    graphed = GraphedForward.on(denoiser(pipe))
    if compile:
        compile_pipeline(pipe, graphed)
    graphed.enabled = cuda_graphs
    return graphed


def undo_speed_up(pipe: Any) -> None:
    """`speed_up` undone (benches and tests put a pipeline back so): the denoiser's own forward,
    uncompiled, under no graph wrapper (the wrapper, kept on the module for a later `on`, holds
    the own forward again), the VAE decoder uncompiled."""
    from truthloop.ml.cudagraph import GraphedForward

    model = denoiser(pipe)
    graphed = GraphedForward.on(model)
    graphed.use_forward(type(model).forward.__get__(model), compiled=False)
    graphed.uninstall()
    pipe.vae.decoder._compiled_call_impl = None


def fuse_layout(pipe: Any, on: bool = True) -> list[str]:
    """diffusers' fast-diffusion recipe beyond the compile, on the denoiser: its attention's
    QKV projections fused into one (`fuse_qkv_projections`, where the family's model has it:
    SDXL's UNet, FLUX.2's transformer) and, for a convolutional UNet, channels-last memory
    (cuDNN takes NHWC without the layout copies that were 0.15 s of an SDXL image on the H200).
    Other arithmetic, so other pixels; bench/bench_generators.py's `--fused` row measures whether
    it pays before any run takes it. `on=False` puts the model back. What was done, in words."""
    import torch

    model = denoiser(pipe)
    done = []
    if hasattr(model, "fuse_qkv_projections"):
        if on:
            model.fuse_qkv_projections()
        else:
            model.unfuse_qkv_projections()
        done.append(f"fused QKV ({type(model).__name__})")
    if getattr(pipe, "unet", None) is model:
        model.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        done.append("channels-last")
    return done


class FamilyPainter(SeededPainter):
    """The loop's Painter for a generator family (same interface as ml.generate.Painter)."""

    def __init__(self, pipe: Any, family: str, config: GenerateConfig, device: str,
                 cuda_graphs: bool = False):
        super().__init__(config, device)
        self.pipe = pipe
        self.family = GENERATORS[family]
        self.module = generator_module(family)
        self.graphed = None
        self.graphed_encoders: list[Any] = []
        if device == "cuda" and (cuda_graphs or config.compile) \
                and not _has_offload_hooks(denoiser(pipe)):
            self.graphed = speed_up(pipe, cuda_graphs, config.compile)
            if cuda_graphs:
                self.graphed_encoders = graph_text_encoders(pipe)

    def call_arguments(self, prompt: str, generator: Any) -> dict[str, Any]:
        """What the pipeline is called with: the same arguments a plain call would pass."""
        config = self.config
        arguments: dict[str, Any] = dict(
            prompt=prompt, num_inference_steps=config.steps, guidance_scale=config.guidance,
            width=config.width, height=config.height, generator=generator,
        )
        if self.family.takes_negative_prompt and config.negative_prompt:
            arguments["negative_prompt"] = config.negative_prompt
        arguments.update(self.module.pipeline_kwargs(config))
        return arguments

    def paint(self, prompt: str, on_step: Callable[[int, int], None],
              generator: Any = None) -> Any:
        import torch

        step_end = step_callback(self, self.config.steps, on_step, self.module.latent_rgb)
        arguments = self.call_arguments(
            prompt, self._stream.generator() if generator is None else generator)
        with torch.inference_mode():
            result = self.pipe(**arguments, callback_on_step_end=step_end)
        return result.images[0]


def load_token_generator(family: str, spec: str, device: str,
                         ) -> tuple[Any, Any, dict[str, str | None]]:
    """An autoregressive generator family's model and processor, through the captioner
    families' one loading path (captioning.load_family_model), and where they came from."""
    from truthloop.ml.families.captioning import load_family_model

    return load_family_model(generator_module(family), spec, device, "image model")


class TokenPainter(SeededPainter):
    """The loop's Painter for an autoregressive generator family (janus-pro): the family's
    `draw` (its library's plain call), sampling from the run's random stream (the family's
    `drawing_from`), `on_step` after every image token. No live preview: nothing is drawn
    before the last token."""

    def __init__(self, model: Any, processor: Any, family: str, config: GenerateConfig,
                 device: str):
        import copy

        super().__init__(config, device)
        self.model = model
        self.processor = processor
        self.family = GENERATORS[family]
        self.module = generator_module(family)
        # The checkpoint's generation settings as loaded: a captioner sharing the model turns
        # its sampling off in place (captioning.decode_greedily), and the image is sampled.
        self.generation_config = copy.deepcopy(model.generation_config)

    def paint(self, prompt: str, on_step: Callable[[int, int], None],
              generator: Any = None) -> Any:
        import torch

        generator = self._stream.generator() if generator is None else generator
        with torch.inference_mode(), self.module.drawing_from(generator, self.model.device):
            return self.module.draw(self.model, self.processor, prompt, self.config.guidance,
                                    on_step, self.generation_config)
