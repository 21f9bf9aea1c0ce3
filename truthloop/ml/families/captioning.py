"""Image -> caption for the captioner families beyond clip-interrogator: the model's processor
(its chat template, for the vision-language ones) and `generate` with greedy decoding, so a
caption is a function of the image and the instruction (the loop's fixed points need that)."""

from __future__ import annotations

from typing import Any, Callable

from truthloop.config import CaptionConfig
from truthloop.ml.families import captioner_module

Progress = Callable[[str], None]


def load_captioner(family: str, spec: str, device: str, config: CaptionConfig,
                   notice: Progress = lambda message: None,
                   ) -> tuple["FamilyCaptioner", dict[str, str | None]]:
    from truthloop.ml.models import _from_pretrained, _is_local, _source
    from truthloop.model_ids import CAPTION_MODEL_IDS

    module = captioner_module(family)
    source = CAPTION_MODEL_IDS.get(spec, spec) if family == "blip" else spec
    dtype = module.dtype(device)
    model, processor = _from_pretrained("caption model", source,
                                        lambda path: module.load(path, dtype))
    model.eval()
    model = model.to(device)
    repo = None if _is_local(source) else source
    record = _source(source, repo, "config.json") | {"requested": spec}
    return FamilyCaptioner(family, model, processor, config), record


def pretrained(model_class: str, processor_class: str) -> Callable[[str, Any], tuple[Any, Any]]:
    """A captioner family's `load(path, dtype)`: transformers' `model_class` and
    `processor_class` (names) from_pretrained, nothing else."""

    def load(path: str, dtype: Any) -> tuple[Any, Any]:
        import transformers

        model = getattr(transformers, model_class).from_pretrained(path, dtype=dtype)
        return model, getattr(transformers, processor_class).from_pretrained(path)

    return load


class FamilyCaptioner:
    """The loop's Captioner for a captioner family."""

    def __init__(self, family: str, model: Any, processor: Any, config: CaptionConfig):
        self.family = family
        self.module = captioner_module(family)
        self.model = model
        self.processor = processor
        self.config = config

    def caption(self, image: Any) -> str:
        import torch

        with torch.inference_mode():
            text = self.module.caption(self.model, self.processor, image.convert("RGB"),
                                       self.config.instruction, self.config.caption_max_length)
        # The caption becomes the next prompt: one line, no surrounding space.
        return " ".join(text.split())
