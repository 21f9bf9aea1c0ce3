"""Prompt -> image through a diffusers Stable Diffusion pipeline, with the run's seed behaviour."""

from __future__ import annotations

import base64
from typing import Any, Callable

from truthloop.config import GenerateConfig


class RandomStream:
    """One trajectory's random stream. reseed: a fresh generator seeded with `seed` for every
    image; shared: one generator for the whole trajectory, its state exposed (as text, kept in
    each record) so a resumed run continues the same stream. A single run's Painter and each
    trajectory of a lockstep batch (ml.batched) draw from one of these."""

    def __init__(self, config: GenerateConfig, device: str):
        import torch

        self.config = config
        # MPS generators are not reproducible across runs; draw noise on the CPU there.
        self.device = "cuda" if device == "cuda" else "cpu"
        self._shared = torch.Generator(self.device).manual_seed(config.seed)

    def generator(self) -> Any:
        import torch

        if self.config.seed_mode == "shared":
            return self._shared
        return torch.Generator(self.device).manual_seed(self.config.seed)

    def rng_state(self) -> str | None:
        if self.config.seed_mode != "shared":
            return None
        return base64.b64encode(self._shared.get_state().numpy().tobytes()).decode()

    def set_rng_state(self, state: str | None) -> None:
        if self.config.seed_mode != "shared" or not state:
            return
        import torch

        raw = bytearray(base64.b64decode(state))
        self._shared.set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())


class SeededPainter:
    """What every painter (this module's and the families') shares: its settings, its random
    stream (RandomStream: the run's seed behaviour, its state kept in each record) and the hook a
    watcher of the denoising sets."""

    def __init__(self, config: GenerateConfig, device: str):
        self.config = config
        self.device = device
        self._stream = RandomStream(config, device)
        # A watcher of the denoising (the TUI's live preview) sets `preview` to a callable
        # (step, width, height, rgb_bytes); it gets the current latent as RGB every
        # `preview_every` steps. None (headless): the latents are never touched.
        self.preview: Callable[[int, int, int, bytes], None] | None = None
        self.preview_every = 5

    def rng_state(self) -> str | None:
        return self._stream.rng_state()

    def set_rng_state(self, state: str | None) -> None:
        self._stream.set_rng_state(state)

    def start_trajectory(self, config: GenerateConfig) -> None:
        """Draw the next trajectory with these settings (a sweep worker keeps the models loaded
        across trajectories of different seeds): a fresh shared generator from its seed."""
        self.config = config
        self._stream = RandomStream(config, self.device)


class Painter(SeededPainter):
    """Draws one image per prompt.

    reseed: a fresh generator seeded with `seed` for every image (the loop is a pure function).
    shared: one generator for the whole run, as the seed script does; its state is exposed so a
            resumed run continues the same random stream.
    """

    def __init__(self, pipe: Any, config: GenerateConfig, device: str, cuda_graphs: bool = False):
        super().__init__(config, device)
        self.pipe = pipe
        self.graphed_unet = None
        self.graphed_encoders: list[Any] = []
        self.fp8 = None  # truthloop.ml.fp8.Fp8Summary once --fp8 has converted the UNet
        self._negative: tuple[str | None, Any] | None = None  # (negative prompt, embeddings)
        if config.fp8:
            from truthloop.ml.fp8 import convert_unet_to_fp8

            # Before the graph wrapper and torch.compile below: they must see the float8
            # weights. Raises Fp8Unavailable (one line) on a CPU, a pre-Ada GPU, without torchao.
            self.fp8 = convert_unet_to_fp8(pipe.unet)
        if device == "cuda" and (cuda_graphs or config.compile) \
                and not _has_offload_hooks(pipe.unet):
            from truthloop.ml.cudagraph import GraphedUNet

            # Without --compile: the same kernels as eager, replayed, so images stay bit-equal
            # to plain diffusers'. With it: the compiled kernels, replayed.
            self.graphed_unet = GraphedUNet.on(pipe.unet)
            if config.compile:
                compile_pipeline(pipe)
            self.graphed_unet.graphed.enabled = cuda_graphs
            if cuda_graphs:
                self.graphed_encoders = graph_text_encoders(pipe)

    def paint(self, prompt: str, on_step: Callable[[int, int], None],
              generator: Any = None) -> Any:
        """`generator`: draw from this one instead of the painter's own (a lockstep batch keeps
        one per trajectory; at batch 1 it calls this very method)."""
        import torch

        total = self.config.steps
        step_end = step_callback(self, total, on_step, _sd_latent_rgb)
        with torch.inference_mode():
            positive = self.pipe.encode_prompt(prompt, self.pipe._execution_device, 1, False)[0]
            result = self.pipe(
                prompt_embeds=positive,
                negative_prompt_embeds=self.negative_embeds(),
                num_inference_steps=total,
                guidance_scale=self.config.guidance,
                width=self.config.width,
                height=self.config.height,
                generator=self._stream.generator() if generator is None else generator,
                callback_on_step_end=step_end,
            )
        return result.images[0]

    def negative_embeds(self, config: GenerateConfig | None = None) -> Any:
        """The negative prompt's text embeddings under `config` (default: the painter's), encoded
        once and kept; None without classifier-free guidance. A lockstep batch uses them too.

        diffusers' encode_prompt encodes the negative prompt in a text-encoder call of its own
        at batch 1, so these are the very tensor it would compute again for every image (images
        stay bit-equal to a plain pipeline call); that call was about half of the 53-68 ms of
        prompt encoding in a 1.06 s compiled iteration on an H100."""
        config = config or self.config
        pipe = self.pipe
        if not (config.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None):
            return None
        text = config.negative_prompt or None
        if self._negative is None or self._negative[0] != text:
            # diffusers' own path (it truncates a long negative prompt without the warning a
            # prompt gets); the empty prompt encoded beside it is dropped.
            self._negative = (text, pipe.encode_prompt("", pipe._execution_device, 1, True,
                                                       negative_prompt=text)[1])
        return self._negative[1]


def step_callback(painter: Any, total: int, on_step: Callable[[int, int], None],
                  latent_rgb: Callable[[Any, Any], tuple[int, int, bytes] | None],
                  ) -> Callable[[Any, int, Any, dict], dict]:
    """diffusers' `callback_on_step_end` for one image of `total` steps: `on_step(step, total)`
    after every step and, while the painter has a `preview`, the latent as RGB every
    `preview_every` steps but the last (`latent_rgb(pipe, latents)`; None: nothing to show).
    Both painters (this module's and the families') draw through it."""

    def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        # Raising here (a stop request) abandons this image; nothing of it was written yet.
        preview = painter.preview
        if preview is not None and (step + 1) % painter.preview_every == 0 \
                and step + 1 < total and "latents" in callback_kwargs:
            shown = latent_rgb(pipe, callback_kwargs["latents"])
            if shown is not None:
                preview(step + 1, *shown)
        on_step(step + 1, total)
        return callback_kwargs

    return step_end


def _sd_latent_rgb(pipe: Any, latents: Any) -> tuple[int, int, bytes]:
    from truthloop.ml.latent_preview import latent_rgb

    return latent_rgb(latents)


def _has_offload_hooks(module: Any) -> bool:
    # accelerate's offloading moves weights in and out around each call; a graph cannot.
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def text_encoders(pipe: Any) -> list[Any]:
    """The pipeline's text encoders (sd's OpenCLIP, SDXL's two CLIPs; FLUX.2's and Z-Image's
    one Qwen3)."""
    return [encoder for name in ("text_encoder", "text_encoder_2")
            if (encoder := getattr(pipe, name, None)) is not None]


def graph_text_encoders(pipe: Any) -> list[Any]:
    """Each text encoder's calls replayed from a CUDA graph (ml.cudagraph.GraphedTextEncoder:
    the same kernels, so the same embeddings), where the pipeline calls it without a mask (sd's
    and SDXL's CLIPs, at 77 tokens: every prompt, 0.098 s of an eager SDXL image on an H200 for
    both of SDXL's; a negative prompt is encoded once and kept); FLUX.2's and Z-Image's padded,
    masked Qwen3 calls run eagerly. Installed on CUDA with the denoiser's graphs."""
    from truthloop.ml.cudagraph import GraphedTextEncoder

    return [GraphedTextEncoder.on(encoder) for encoder in text_encoders(pipe)
            if not _has_offload_hooks(encoder)]


def compile_pipeline(pipe: Any, installed: Any = None) -> None:
    """torch.compile the two heavy parts in place; the first image pays the compile time.

    `installed`: the graph wrapper on the denoiser (default: sd's GraphedUNet on pipe.unet; a
    generator family's painter passes its GraphedForward on the UNet or transformer). Inductor's
    caches go to truthloop's cache dir so the next process starts warm.
    """
    import os

    import torch

    from truthloop.ml.cudagraph import GraphedUNet
    from truthloop.paths import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    installed = installed if installed is not None else GraphedUNet.on(pipe.unet)
    model = installed.module
    # The denoiser's own forward is compiled, under the graph wrapper (which replays the compiled
    # kernels when graphs are on, and calls them when off).
    installed.use_forward(torch.compile(type(model).forward.__get__(model)), compiled=True)
    pipe.vae.decoder.compile()
