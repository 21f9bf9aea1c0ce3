"""The models of a lockstep batch (`truthloop.lockstep`) for the seed pair (sd +
clip-interrogator): many trajectories' images drawn in one pipeline call, their BLIP captions
decoded in one batch, each with its own random stream. Every other pair's batch is
ml/families/batched.py's, built on this one.

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
  batched logits pick another token. On a GPU the images are ranked in two threads.
- features for the drift columns: per image, as a single run.

What a single run does twice or one image at a time on the host, a batch does once or side by side,
with the same numbers: the negative prompt is encoded once (a single run encodes the same text
alone on every image); the images' CPU preprocessing (BLIP's and CLIP's resizing and
normalising, ~20 ms an image) runs in a thread pool (Pillow and numpy let the threads run side
by side); and the CLIP image features the drift columns ask for are kept for the caption of the
same image, which a single run computes again.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from truthloop.config import RunConfig
from truthloop.loop import EventSink
from truthloop.ml.generate import RandomStream


class BatchedBackends:
    """`truthloop.lockstep.BatchModels` over one run's loaded backends."""

    def __init__(self, backends: Any, config: RunConfig, exact: bool = False,
                 decode_batched: bool = False, rank_threads: int | None = None):
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
        self._blip = None
        if config.generate.compile and not exact:
            # A batch of another size would otherwise recompile the UNet into one dynamic-shape
            # kernel for all sizes (slower); a sweep pads to one size, the bench measures a few.
            import torch._dynamo

            torch._dynamo.config.automatic_dynamic_shapes = False
        self.batch_sizes: list[tuple[str, int]] = []  # (kind, rows) of each call, for tests/bench
        # id(image) -> (image, CLIP image features): the features call's, for the caption of the
        # same image (the image is held so its id cannot be reused meanwhile).
        self._features: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._pool = None
        # The ranking (`best`'s chain, ~0.1 s an image, half of it the host's Python between
        # small kernels) of a tick's images in this many threads, each with its own interrogator
        # (`FastInterrogator.sibling`) and CUDA stream: one thread's Python runs while another
        # waits for its kernels. Image i goes to thread i % n, so who ranks what is fixed.
        self.rank_threads = rank_threads or (2 if self.device == "cuda" else 1)
        self._rankers: list[Any] = []
        self._rank_streams: list[Any] = []
        self._rank_pool = None

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
        device = pipe._execution_device
        with torch.inference_mode():
            # Each prompt alone at batch 1, as a single run encodes it. encode_prompt encodes a
            # negative prompt alone too, the same way, so one encoding serves every row.
            positive = [pipe.encode_prompt(prompt, device, 1, False)[0] for prompt in prompts]
            if rows > count:  # throw-away rows: the last prompt again, noise from seed 0
                positive += [positive[-1]] * (rows - count)
                generators = generators + [torch.Generator(generators[0].device).manual_seed(0)
                                           for _ in range(rows - count)]
            # Every trajectory of a batch has this batch's settings, so one negative prompt.
            negative = self.painter.negative_embeds(generate)
            if negative is not None:
                negative = torch.cat([negative] * rows)
            images = draw_batch(pipe, dict(
                prompt_embeds=torch.cat(positive),
                negative_prompt_embeds=negative,
                num_inference_steps=generate.steps,
                guidance_scale=generate.guidance,
                width=generate.width,
                height=generate.height,
                generator=generators,
            ), on_step, generate.steps, self.decode_batched)
        return images[:count]

    # -- captions --------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """fn over items in a thread pool (CPU preprocessing), results in order."""
        if len(items) < 2:
            return [fn(item) for item in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                            thread_name_prefix="truthloop-preprocess")
        return list(self._pool.map(fn, items))

    def _image_features(self, images: list[Any]) -> list[Any]:
        """CLIP image features of each image (the fast interrogator's, at batch 1 as a single
        run), those the features call computed taken from it."""
        fast = self.captioner.fast
        found: dict[int, Any] = {}
        for index, image in enumerate(images):
            held = self._features.get(id(image))
            if held is not None and held[0] is image:
                found[index] = held[1]
        missing = [i for i in range(len(images)) if i not in found]
        pixels = self.map(fast.preprocess, [images[i] for i in missing])
        for index, value in zip(missing, pixels):
            found[index] = fast.pixel_features(value)
            self._features[id(images[index])] = (images[index], found[index])
        while len(self._features) > 64:
            self._features.popitem(last=False)
        return [found[i] for i in range(len(images))]

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
        features = self._image_features(images)
        for image in images:  # captioned: its features are not asked for again
            self._features.pop(id(image), None)
        return self._rank(mode, images, texts, features)

    def _rank(self, mode: str, images: list[Any], texts: list[str],
              features: list[Any]) -> list[str]:
        def rank(ranker: Any, index: int) -> str:
            method = {"best": ranker.interrogate, "fast": ranker.interrogate_fast,
                      "classic": ranker.interrogate_classic}[mode]
            return method(images[index], caption=texts[index], features=features[index])

        count = min(self.rank_threads, len(images))
        if count < 2:
            return [rank(self.captioner.fast, i) for i in range(len(images))]
        self._start_rankers(count)
        out: list[str] = [""] * len(images)
        main_stream = _current_stream(self.device)

        def thread(number: int) -> None:
            ranker, stream = self._rankers[number], self._rank_streams[number]
            with _on_stream(stream, after=main_stream):
                for index in range(number, len(images), count):
                    out[index] = rank(ranker, index)

        for future in [self._rank_pool.submit(thread, n) for n in range(count)]:
            future.result()
        return out

    def _start_rankers(self, count: int) -> None:
        if len(self._rankers) >= count:
            return
        from concurrent.futures import ThreadPoolExecutor

        fast = self.captioner.fast
        while len(self._rankers) < count:
            self._rankers.append(fast if not self._rankers else fast.sibling())
            self._rank_streams.append(_new_stream(self.device))
        if self._rank_pool is not None:
            self._rank_pool.shutdown(wait=False)
        self._rank_pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="truthloop-rank")

    def blip(self) -> "BatchedBlip":
        if self._blip is None:
            self._blip = BatchedBlip(self.captioner.ci, cuda_graphs=self.captioner.cuda_graphs,
                                     map=self.map)
        return self._blip

    def text_features(self, prompts: list[str]) -> list[Any]:
        return self.backends.embedder.text_features(prompts)

    def features(self, images: list[Any]) -> list[Any]:
        embedder = self.backends.embedder
        if self.exact or embedder.fast is None:
            return [embedder.features(image) for image in images]
        # ClipEmbedder.features' numbers, kept for the caption of the same image
        return [f[0].float().cpu().tolist() for f in self._image_features(images)]


class BatchedBlip:
    """BLIP-large greedy captions for many images in one decode: `fastcaption`'s ops at batch B
    (each row decodes on its own: no padding, the same start token, so no mask), every step
    decoded to max_new_tokens and each row cut at its first SEP, as HF's batched generate does."""

    def __init__(self, ci: Any, cuda_graphs: bool = True,
                 map: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None):
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
        self.map = map or (lambda fn, items: [fn(item) for item in items])

    def captions(self, images: list[Any]) -> list[str]:
        import torch

        ci = self.ci
        ci._prepare_caption()
        # The processor handles each image on its own; one image a thread, then stacked.
        processor = self.fast.processor
        pixel_values = torch.cat(self.map(
            lambda image: processor(images=[image], return_tensors="pt")["pixel_values"], images))
        pixel_values = pixel_values.to(self.fast.device).to(self.fast.dtype)
        probe = {"pixel_values": pixel_values[:1]}
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


def _new_stream(device: str) -> Any:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.Stream()


def _current_stream(device: str) -> Any:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.current_stream()


@contextmanager
def _on_stream(stream: Any, after: Any) -> Iterator[None]:
    """Run on `stream` (after the work queued on `after`, whose tensors it reads), and wait for
    it at the end: the caller gets strings, and the interrogator's CUDA graph buffers are free
    for its next call. Off CUDA (no stream): nothing."""
    if stream is None:
        yield
        return
    import torch

    stream.wait_stream(after)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        stream.synchronize()


def draw_batch(pipe: Any, arguments: dict[str, Any], on_step: Callable[[int, int], None],
               total: int, decode_batched: bool) -> list[Any]:
    """One pipeline call for a whole batch (its arguments as the caller built them), the
    denoising steps reported to `on_step`, the VAE decoding image by image unless
    `decode_batched` (batch-1 kernels and the peak memory of one image)."""

    def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        on_step(step + 1, total)
        return callback_kwargs

    vae = pipe.vae
    slicing = getattr(vae, "use_slicing", False)
    vae.use_slicing = not decode_batched
    try:
        return list(pipe(**arguments, callback_on_step_end=step_end).images)
    finally:
        vae.use_slicing = slicing
