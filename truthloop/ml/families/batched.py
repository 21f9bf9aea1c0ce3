"""The models of a lockstep batch (`truthloop.lockstep`) for every pair beyond the seed pair:
`FamilyBatchModels`, the `BatchModels` of a run's loaded backends (`load_backends`) whose
generator or captioner is a family of ml/families/.

- drawing (a generator family): one call of the family's diffusers pipeline for the batch, with
  a list of generators, one per trajectory (each its own RandomStream: the starting noise of
  every row is what its single run draws, and a shared stream moves on exactly as the single
  run's does). Each prompt is encoded alone through the pipeline's own `encode_prompt` (the
  text encoder at batch 1, as the single run's call encodes it) and the embeddings are handed
  to the pipeline, so prompt embeddings and noise are bit-equal to the single run's; the
  negative prompt is encoded once for the batch. The denoiser then runs at batch B (2B with
  classifier-free guidance) and the VAE decodes image by image (`use_slicing`: its batch-1
  kernels, and a lower peak). A batch is padded to a fixed size with throw-away rows.
- captions (a captioner family): `FamilyCaptioner.caption_batch` (one greedy decode for the
  batch) where the captioner has it, else image by image.
- features for the drift columns: the images preprocessed side by side on the CPU, then each
  through CLIP alone, as a single run (the seed pair does the same).
- the sd generator or the clip-interrogator captioner in a mixed pair: ml.batched's own paths.

Batched arithmetic is not batch-1 arithmetic (a small matrix product, such as a timestep
embedding's, rounds differently at 2B rows than at 2), so an image can move by a level in a few
pixels; docs/model-families.md ("Batched sweeps") says how often, as measured.
"""

from __future__ import annotations

from typing import Any, Callable

from truthloop.config import GenerateConfig, RunConfig
from truthloop.ml.batched import BatchedBackends, draw_batch
from truthloop.ml.generate import RandomStream

Embeds = dict[str, Any]


# -- each family's prompt encoding, through its pipeline's own encode_prompt --------------------
# prompt(pipe, prompt) -> the pipeline's arguments for that prompt alone (batch 1);
# negative(pipe, config) -> the arguments of the negative side ({} without guidance).
def _sdxl_prompt(pipe: Any, prompt: str) -> Embeds:
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, device=pipe._execution_device,
                                              num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _sdxl_negative(pipe: Any, config: GenerateConfig) -> Embeds:
    if not (config.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None):
        return {}
    # No negative prompt: the pipeline's zeros (force_zeros_for_empty_prompt), as a plain call.
    _, negative, _, pooled = pipe.encode_prompt(
        "", device=pipe._execution_device, num_images_per_prompt=1,
        do_classifier_free_guidance=True, negative_prompt=config.negative_prompt or None)
    return {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": pooled}


def _z_image_prompt(pipe: Any, prompt: str) -> Embeds:
    # A list of one tensor: Z-Image keeps each prompt's own length (no padding).
    embeds, _ = pipe.encode_prompt(prompt, device=pipe._execution_device,
                                   do_classifier_free_guidance=False)
    return {"prompt_embeds": embeds}


def _z_image_negative(pipe: Any, config: GenerateConfig) -> Embeds:
    if not config.guidance > 0:
        return {}
    _, negative = pipe.encode_prompt("", device=pipe._execution_device,
                                     do_classifier_free_guidance=True,
                                     negative_prompt=config.negative_prompt or None)
    return {"negative_prompt_embeds": negative}


def _flux2_klein_prompt(pipe: Any, prompt: str) -> Embeds:
    embeds, _ = pipe.encode_prompt(prompt, device=pipe._execution_device)
    return {"prompt_embeds": embeds}


def _flux2_klein_negative(pipe: Any, config: GenerateConfig) -> Embeds:
    if not (config.guidance > 1 and not pipe.config.is_distilled):
        return {}
    negative, _ = pipe.encode_prompt("", device=pipe._execution_device)  # the pipeline's own ""
    return {"negative_prompt_embeds": negative}


ENCODERS: dict[str, tuple[Callable[[Any, str], Embeds],
                          Callable[[Any, GenerateConfig], Embeds]]] = {
    "sdxl": (_sdxl_prompt, _sdxl_negative),
    "z-image": (_z_image_prompt, _z_image_negative),
    "flux2-klein": (_flux2_klein_prompt, _flux2_klein_negative),
}


def _stack(rows: list[Embeds]) -> Embeds:
    """One argument per name for the batch: tensors concatenated along the batch, lists (Z-Image's
    per-prompt embeddings) joined."""
    import torch

    out: Embeds = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        out[name] = [item for value in values for item in value] \
            if isinstance(values[0], list) else torch.cat(values)
    return out


class BatchedFamilyPainter:
    """A generator family's drawing for many trajectories in one pipeline call."""

    def __init__(self, painter: Any, decode_batched: bool = False):
        self.painter = painter
        self.family = painter.family.name
        self.encode_prompt, self.encode_negative = ENCODERS[self.family]
        # False: the VAE decodes one image at a time (batch-1 kernels; peak memory of one).
        self.decode_batched = decode_batched
        self._negative: tuple[Any, Embeds] | None = None  # (its settings, its embeddings)

    def negative(self, config: GenerateConfig) -> Embeds:
        """The negative side's embeddings under `config`, encoded once and kept (every
        trajectory of a batch has its settings)."""
        key = (config.negative_prompt, config.guidance)
        if self._negative is None or self._negative[0] != key:
            self._negative = (key, self.encode_negative(self.painter.pipe, config))
        return self._negative[1]

    def paint(self, prompts: list[str], generators: list[Any],
              on_step: Callable[[int, int], None], pad_to: int | None = None) -> list[Any]:
        import torch

        painter = self.painter
        pipe = painter.pipe
        config = painter.config
        count = len(prompts)
        rows = max(count, pad_to or 0)
        with torch.inference_mode():
            encoded = [self.encode_prompt(pipe, prompt) for prompt in prompts]
            if rows > count:  # throw-away rows: the last prompt again, noise from seed 0
                encoded += [encoded[-1]] * (rows - count)
                device = generators[0].device
                generators = generators + [torch.Generator(device).manual_seed(0)
                                           for _ in range(rows - count)]
            arguments = painter.call_arguments(prompts[0], generators)
            del arguments["prompt"]
            arguments.pop("negative_prompt", None)
            arguments.update(_stack(encoded))
            negative = self.negative(config)
            if negative:
                arguments.update(_stack([negative] * rows))
            images = draw_batch(pipe, arguments, on_step, config.steps, self.decode_batched)
        return images[:count]


class FamilyBatchModels(BatchedBackends):
    """`truthloop.lockstep.BatchModels` over one run's loaded backends for a pair with a model
    family on either side; an sd or clip-interrogator side is batched as ml.batched batches it.
    `exact` (batch 1): a single run's painter and captioner, called image by image."""

    def __init__(self, backends: Any, config: RunConfig, exact: bool = False,
                 decode_batched: bool = False):
        from truthloop.ml.families.captioning import FamilyCaptioner
        from truthloop.ml.families.painting import FamilyPainter

        super().__init__(backends, config, exact=exact, decode_batched=decode_batched)
        self.family_painter = BatchedFamilyPainter(self.painter, decode_batched) \
            if isinstance(self.painter, FamilyPainter) else None
        self.family_captioner = isinstance(self.captioner, FamilyCaptioner)
        # The seed pair's embedder has a fast path of its own (features kept for the caption).
        self.family_embedder = getattr(backends.embedder, "fast", None) is None

    def stream(self, config: RunConfig) -> RandomStream:
        return RandomStream(config.generate, self.device)

    def _paint_batch(self, prompts: list[str], generators: list[Any],
                     on_step: Callable[[int, int], None], pad_to: int | None) -> list[Any]:
        # BatchedBackends.paint's exact path (one image at a time through the single run's
        # painter) serves every family; only the batched call is the family's own.
        if self.family_painter is None:
            return super()._paint_batch(prompts, generators, on_step, pad_to)
        self.batch_sizes.append(("paint", max(len(prompts), pad_to or 0)))
        return self.family_painter.paint(prompts, generators, on_step, pad_to)

    def caption(self, images: list[Any]) -> list[str]:
        if not self.family_captioner:
            return super().caption(images)
        captioner = self.captioner
        batched = getattr(captioner, "caption_batch", None)
        if self.exact or len(images) == 1 or batched is None:
            self.batch_sizes += [("caption", 1)] * len(images)
            return [captioner.caption(image) for image in images]
        self.batch_sizes.append(("caption", len(images)))
        return list(batched(images))

    def features(self, images: list[Any]) -> list[Any]:
        if not self.family_embedder:
            return super().features(images)
        embedder = self.backends.embedder
        if self.exact:
            return [embedder.features(image) for image in images]
        # The images preprocessed side by side on the CPU, then each through CLIP alone (batch
        # 1, as a single run: the same features).
        return [embedder.pixel_features(pixels)
                for pixels in self.map(embedder.preprocess_image, images)]
