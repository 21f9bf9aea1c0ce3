"""Prompt -> image for the generator families beyond sd, through diffusers' own pipeline.

Each family's pipeline is called plainly, its denoiser's steps replayed from CUDA graphs on a GPU
(ml.cudagraph.GraphedForward: the same kernels, so the same pixels), with the run's seed behaviour (ml.generate.RandomStream), a stop/pause check after every denoising
step (diffusers' callback_on_step_end) and the family's cheap latent preview where it has one.
"""

from __future__ import annotations

from typing import Any, Callable

from truthloop.config import GenerateConfig
from truthloop.families import GENERATORS
from truthloop.ml.families import generator_module
from truthloop.ml.generate import SeededPainter, _has_offload_hooks, step_callback

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


class FamilyPainter(SeededPainter):
    """The loop's Painter for a generator family (same interface as ml.generate.Painter)."""

    def __init__(self, pipe: Any, family: str, config: GenerateConfig, device: str,
                 cuda_graphs: bool = False):
        super().__init__(config, device)
        self.pipe = pipe
        self.family = GENERATORS[family]
        self.module = generator_module(family)
        self.graphed = None
        if device == "cuda" and cuda_graphs and not _has_offload_hooks(denoiser(pipe)):
            from truthloop.ml.cudagraph import GraphedForward

            # The denoiser's steps replayed from CUDA graphs: the same kernels as eager, so the
            # same pixels as the plain pipeline call, without a launch per kernel per step.
            self.graphed = GraphedForward.on(denoiser(pipe))

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
