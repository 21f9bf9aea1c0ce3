"""Image -> caption for the captioner families beyond clip-interrogator: the model's processor
(its chat template, for the vision-language ones) and `generate` with the checkpoint's own
generation config (generation_config.json: Florence-2's beam search, for one) with sampling
turned off, so a caption is a function of the image and the instruction (the loop's fixed points
need that). What the decoding came to is `FamilyCaptioner.decoding`, recorded in run.json."""

from __future__ import annotations

from typing import Any, Callable

from truthloop.config import DECODING_SETTINGS, CaptionConfig
from truthloop.ml.families import captioner_module

Progress = Callable[[str], None]


def load_captioner(family: str, spec: str, device: str, config: CaptionConfig,
                   notice: Progress = lambda message: None, *, cuda_graphs: bool = True,
                   compile: bool = False, shared: tuple[Any, Any, dict] | None = None,
                   greedy_loop: bool = True) -> tuple["FamilyCaptioner", dict[str, str | None]]:
    """The family's model and processor from `spec` on `device`, as a FamilyCaptioner; on CUDA
    its decode steps replay from CUDA graphs (`cuda_graphs`), compiled first with `compile`
    (fastdecode.py), and plain greedy decoding goes through truthloop's loop (`greedy_loop`).
    `shared`: (model, processor, record) the run's generator loaded from the same checkpoint (a
    unified family, janus-pro): used as it is, nothing loaded again."""
    from truthloop.model_ids import CAPTION_MODEL_IDS

    if shared is None:
        source = CAPTION_MODEL_IDS.get(spec, spec) if family == "blip" else spec
        model, processor, record = load_family_model(captioner_module(family), source, device,
                                                     "caption model")
        record = record | {"requested": spec}
    else:
        model, processor, record = shared
    origin = generation_origin(model, record.get("path"))
    return FamilyCaptioner(family, model, processor, config, origin, cuda_graphs=cuda_graphs,
                           compile=compile, greedy_loop=greedy_loop), record


def load_family_model(module: Any, source: str, device: str,
                      kind: str) -> tuple[Any, Any, dict[str, str | None]]:
    """A transformers family's model and processor (its module's `load`, in its dtype) from a
    hub id or a local directory, in eval mode on `device`, and where it came from; `kind` names
    it in the one-line errors ("caption model", "image model")."""
    from truthloop.ml.models import _from_pretrained, _is_local, _source

    dtype = module.dtype(device)
    model, processor = _from_pretrained(kind, source, lambda path: module.load(path, dtype))
    model.eval()
    model = model.to(device)
    repo = None if _is_local(source) else source
    return model, processor, _source(source, repo, "config.json")


def pretrained(model_class: str, processor_class: str) -> Callable[[str, Any], tuple[Any, Any]]:
    """A captioner family's `load(path, dtype)`: transformers' `model_class` and
    `processor_class` (names) from_pretrained, nothing else."""

    def load(path: str, dtype: Any) -> tuple[Any, Any]:
        import transformers

        model = getattr(transformers, model_class).from_pretrained(path, dtype=dtype)
        return model, getattr(transformers, processor_class).from_pretrained(path)

    return load


# The generation settings that draw tokens at random (generate reads them only when do_sample
# is on): dropped, so that the same image and instruction always give the same caption.
SAMPLING_SETTINGS = ("temperature", "top_k", "top_p", "min_p", "top_h", "typical_p",
                     "epsilon_cutoff", "eta_cutoff")
# The settings that choose a greedy or beam-search caption's tokens, as run.json records them,
# with what generate uses where the checkpoint leaves one unset (transformers' defaults,
# GenerationConfig._get_default_generation_params).


def decoder(model: Any) -> Any:
    """The model whose `generate` makes the caption's tokens, reading its own generation config:
    BLIP hands the decode to its text decoder (whose config comes from config.json's
    text_config), every other family decodes in the model itself."""
    return getattr(model, "text_decoder", None) or model


def generation_origin(model: Any, checkpoint_dir: str | None) -> str:
    """Where `model`'s decoding settings were read: the checkpoint's generation_config.json, or,
    where it ships none (or, as BLIP, decodes elsewhere), transformers' reading of config.json."""
    from pathlib import Path

    if decoder(model) is model and checkpoint_dir \
            and (Path(checkpoint_dir) / "generation_config.json").is_file():
        return "generation_config.json"
    return "config.json"


def decode_greedily(model: Any, max_new_tokens: int, origin: str,
                    kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """Turn sampling off in the generation config `generate` reads (the checkpoint's own, kept
    otherwise: beams, n-gram blocking, penalties; `kept`, a resumed run's own decoding, over it)
    and return the decoding as run.json records it: those settings, max_new_tokens, do_sample
    false, where they came from, and the sampling the checkpoint asked for that was dropped
    (none where it did not sample: its temperature and the like were never read)."""
    generation = decoder(model).generation_config
    for name, value in (kept or {}).items():
        setattr(generation, name, value)
    if kept:
        origin = f"the resumed run's own over {origin}"
    dropped = {name: getattr(generation, name) for name in ("do_sample", *SAMPLING_SETTINGS)
               if getattr(generation, name, None) is not None} if generation.do_sample else {}
    generation.do_sample = False
    for name in SAMPLING_SETTINGS:
        if hasattr(generation, name):
            setattr(generation, name, None)
    settings = {name: default if getattr(generation, name, None) is None
                else getattr(generation, name) for name, default in DECODING_SETTINGS.items()}
    return {**settings, "max_new_tokens": max_new_tokens, "do_sample": False, "from": origin,
            "sampling_dropped": dropped}


class FamilyCaptioner:
    """The loop's Captioner for a captioner family: the checkpoint's own decoding, greedy in
    place of sampling (`decoding` says what it came to), through a static KV cache with its
    decode steps graphed on CUDA and, where the decoding is plain greedy, truthloop's greedy
    loop in place of generate's (fastdecode.py; `greedy_loop=False`: generate's loop;
    `fast=False`: the plain call)."""

    def __init__(self, family: str, model: Any, processor: Any, config: CaptionConfig,
                 origin: str = "the model's generation_config", *, fast: bool = True,
                 cuda_graphs: bool = True, compile: bool = False, greedy_loop: bool = True):
        from truthloop.ml.families.fastdecode import fast_decoding

        self.family = family
        self.module = captioner_module(family)
        self.model = model
        self.processor = processor
        self.config = config
        self.decoding = decode_greedily(model, config.caption_max_length, origin,
                                        config.decoding)
        self.fast = fast_decoding(family, model, processor, decoder(model), fast=fast,
                                  graphs=cuda_graphs, compiled=compile, loop=greedy_loop)
        self.decoding.update(self.fast.describe())

    def caption(self, image: Any) -> str:
        import torch

        image = image.convert("RGB")
        with torch.inference_mode():
            self.fast.before_generate()
            text = self.fast.caption(image, self.config.instruction,
                                     self.config.caption_max_length)
            if text is None:
                text = self.module.caption(self.model, self.processor, image,
                                           self.config.instruction,
                                           self.config.caption_max_length,
                                           generate=self.fast.generate(self.model))
        return _one_line(text)

    def caption_batch(self, images: list[Any]) -> list[str]:
        """The captions of `images` from one batched `generate` (prompts padded on the left),
        each its single caption except where the batch's arithmetic picks another token."""
        import torch

        with torch.inference_mode():
            self.fast.before_generate()
            texts = self.module.caption_batch(self.model, self.processor,
                                              [image.convert("RGB") for image in images],
                                              self.config.instruction,
                                              self.config.caption_max_length,
                                              generate=self.fast.generate(self.model))
        return [_one_line(text) for text in texts]


def _one_line(text: str) -> str:
    # The caption becomes the next prompt: one line, no surrounding space.
    return " ".join(text.split())
