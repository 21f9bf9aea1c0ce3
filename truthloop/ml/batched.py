"""The models of a lockstep batch (`truthloop.lockstep`): many trajectories' images drawn in one
pipeline call, their BLIP captions decoded in one batch, each with its own random stream.

Built on the backends a single run loads (`load_backends`: the same models, CUDA graphs,
`--compile`), so `exact` (batch 1) calls exactly a single run's code: the same images and prompts
as `truthloop run`. Batched, the arithmetic is another kernel's:

- drawing: one `StableDiffusionPipeline` call for the batch. Each prompt is encoded alone (CLIP's
  text encoder at batch 1, as a single run encodes it) and each trajectory's starting noise comes
  from its own generator (diffusers draws it per generator), so prompt embeddings and noise are
  bit-equal to a single run's; the UNet then runs at batch 2B (classifier-free guidance) with its
  own graph per batch size, and the VAE decodes image by image (its batch-1 kernels, and a lower
  peak). A batch may be padded to a fixed size with throw-away rows (no new graph or compile).
- captions: BLIP's greedy decode at batch B (the fast caption's own ops, graphed per batch size);
  then clip-interrogator's ranking (`best`'s chain and the others) per image, on the CLIP features
  a single run computes, so a trajectory's prompt differs from its single run only where BLIP's
  batched logits pick another token.
- features for the drift columns: per image, as a single run.
"""

from __future__ import annotations

from typing import Any, Callable

from truthloop.config import RunConfig
from truthloop.loop import EventSink
from truthloop.ml.generate import RandomStream


class BatchedBackends:
    """`truthloop.lockstep.BatchModels` over one run's loaded backends."""

    def __init__(self, backends: Any, config: RunConfig, exact: bool = False,
                 decode_batched: bool = False):
        self.backends = backends
        self.config = config
        self.exact = exact
        # False: the VAE decodes one image at a time (batch-1 kernels; peak memory of one).
        self.decode_batched = decode_batched
        self.device = backends.device
        self.details = backends.details
        self.loaded = backends.loaded
        self.has_embedder = backends.embedder is not None
        self.painter = backends.painter
        self.captioner = backends.captioner
        self._negative: dict[tuple, Any] = {}
        self._blip = None
        if config.generate.compile and not exact:
            # A batch of another size would otherwise recompile the UNet into one dynamic-shape
            # kernel for all sizes (slower); a sweep pads to one size, the bench measures a few.
            import torch._dynamo

            torch._dynamo.config.automatic_dynamic_shapes = False
        self.batch_sizes: list[tuple[str, int]] = []  # (kind, rows) of each call, for tests/bench

    def stream(self, config: RunConfig) -> RandomStream:
        return RandomStream(config.generate, self.device)

    # -- drawing ---------------------------------------------------------------------------------
    def paint(self, prompts: list[str], streams: list[RandomStream],
              on_step: Callable[[int, int], None], pad_to: int | None = None) -> list[Any]:
        if self.exact:
            images = []
            for prompt, stream in zip(prompts, streams):
                self.batch_sizes.append(("paint", 1))
                images.append(self.painter.paint(prompt, on_step, generator=stream.generator()))
            return images
        return self._paint_batch(prompts, [s.generator() for s in streams], on_step, pad_to)

    def _paint_batch(self, prompts: list[str], generators: list[Any],
                     on_step: Callable[[int, int], None], pad_to: int | None) -> list[Any]:
        import torch

        pipe = self.painter.pipe
        generate = self.config.generate
        count = len(prompts)
        rows = max(count, pad_to or 0)
        self.batch_sizes.append(("paint", rows))
        guidance = generate.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
        device = pipe._execution_device
        with torch.inference_mode():
            positive, negative = [], []
            for prompt in prompts:
                embeds, uncond = pipe.encode_prompt(
                    prompt, device, 1, guidance,
                    negative_prompt=generate.negative_prompt or None)
                positive.append(embeds)
                negative.append(uncond)
            if rows > count:  # throw-away rows: the last prompt again, noise from seed 0
                positive += [positive[-1]] * (rows - count)
                negative += [negative[-1]] * (rows - count)
                generators = generators + [torch.Generator(generators[0].device).manual_seed(0)
                                           for _ in range(rows - count)]
            total = generate.steps

            def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
                on_step(step + 1, total)
                return callback_kwargs

            vae = pipe.vae
            slicing = getattr(vae, "use_slicing", False)
            vae.use_slicing = not self.decode_batched
            try:
                result = pipe(
                    prompt_embeds=torch.cat(positive),
                    negative_prompt_embeds=torch.cat(negative) if guidance else None,
                    num_inference_steps=total,
                    guidance_scale=generate.guidance,
                    width=generate.width,
                    height=generate.height,
                    generator=generators,
                    callback_on_step_end=step_end,
                )
            finally:
                vae.use_slicing = slicing
        return list(result.images[:count])

    # -- captions --------------------------------------------------------------------------------
    def caption(self, images: list[Any]) -> list[str]:
        captioner = self.captioner
        mode = captioner.config.mode
        if self.exact or len(images) == 1 or captioner.fast is None or mode == "negative":
            # The reference interrogator and `negative` (no BLIP caption) stay per image.
            self.batch_sizes += [("caption", 1)] * len(images)
            return [captioner.caption(image) for image in images]
        texts = self.blip().captions(images)
        self.batch_sizes.append(("caption", len(images)))
        if mode == "caption":
            return texts
        fast = captioner.fast
        rank = {"best": fast.interrogate, "fast": fast.interrogate_fast,
                "classic": fast.interrogate_classic}[mode]
        return [rank(image, caption=text) for image, text in zip(images, texts)]

    def blip(self) -> "BatchedBlip":
        if self._blip is None:
            self._blip = BatchedBlip(self.captioner.ci, cuda_graphs=self.captioner.cuda_graphs)
        return self._blip

    def features(self, images: list[Any]) -> list[Any]:
        embedder = self.backends.embedder
        return [embedder.features(image) for image in images]


class BatchedBlip:
    """BLIP-large greedy captions for many images in one decode: `fastcaption`'s ops at batch B
    (each row decodes on its own: no padding, the same start token, so no mask), every step
    decoded to max_new_tokens and each row cut at its first SEP, as HF's batched generate does."""

    def __init__(self, ci: Any, cuda_graphs: bool = True):
        from truthloop.ml.cudagraph import CudaGraphed
        from truthloop.ml.fastcaption import FastCaptioner

        self.ci = ci
        self.fast = FastCaptioner(ci.caption_model, ci.caption_processor, ci.device, ci.dtype,
                                  cuda_graphs=cuda_graphs)
        self.max_new_tokens = ci.config.caption_max_length
        # One graph per batch size (CudaGraphed keys on the input's shape): the first call of a
        # size runs eagerly, the second captures.
        self._decode = CudaGraphed(lambda pixel_values: self.fast._decode_steps(
            pixel_values, self.max_new_tokens, look_for_eos=False), name="blip-batch")
        self._decode.enabled = cuda_graphs
        self.reason: str | None = None

    def captions(self, images: list[Any]) -> list[str]:
        import torch

        ci = self.ci
        ci._prepare_caption()
        inputs = self.fast.processor(images=images, return_tensors="pt").to(self.fast.device)
        inputs = inputs.to(self.fast.dtype)
        pixel_values = inputs["pixel_values"]
        probe = dict(inputs)
        probe["pixel_values"] = pixel_values[:1]
        self.reason = self.fast.unsupported(probe, self.max_new_tokens)
        if self.reason is not None or ci.config.caption_model_name.startswith("git-"):
            return [ci.generate_caption(image) for image in images]
        with torch.no_grad():
            tokens = self._decode(pixel_values).cpu()
        eos = self.fast.model.text_decoder.config.sep_token_id
        texts = []
        for row in tokens:
            if eos is not None:
                hits = (row[1:] == eos).nonzero()
                if hits.numel():
                    row = row[:int(hits[0, 0]) + 2]
            texts.append(self.fast._decode(row[None]))
        return texts


def load_batched(config: RunConfig, emit: EventSink, exact: bool = False) -> BatchedBackends:
    """A lockstep engine's model factory: a single run's backends (`load_backends`), batched."""
    from truthloop.ml.backends import load_backends

    return BatchedBackends(load_backends(config, emit), config, exact=exact)


def exact_factory(config: RunConfig, emit: EventSink) -> BatchedBackends:
    return load_batched(config, emit, exact=True)


def batched_factory(config: RunConfig, emit: EventSink) -> BatchedBackends:
    return load_batched(config, emit, exact=False)
