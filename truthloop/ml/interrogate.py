"""Image -> caption through clip-interrogator 0.6.0, with our models injected through its Config.

Label embeddings (~112k phrases) are cached in the user cache dir, never in ./cache, and never
downloaded: clip-interrogator computes them once with the loaded CLIP and stores them there.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Callable

from truthloop.config import CaptionConfig
from truthloop.paths import cache_dir

Report = Callable[[str, int | None, int | None], None]


def label_cache_dir() -> str:
    return str(cache_dir() / "labels")


def build_interrogator(models: Any, config: CaptionConfig, report: Report | None = None) -> Any:
    """A clip_interrogator.Interrogator over already-loaded models (see models.load_models)."""
    import clip_interrogator.clip_interrogator as ci_module
    from clip_interrogator import Config, Interrogator

    ci_config = Config(
        # Only read by clip-interrogator to tell BLIP from GIT models.
        caption_model_name="blip-large",
        caption_max_length=config.caption_max_length,
        clip_model_name=models.clip_name,
        cache_path=label_cache_dir(),
        download_cache=False,
        chunk_size=config.chunk_size,
        flavor_intermediate_count=config.flavor_intermediate_count,
        device=models.device,
        quiet=report is None,
    )
    # Not dataclass fields in 0.6.0 (no annotations), so they cannot go through Config(...).
    ci_config.caption_model = models.caption_model
    ci_config.caption_processor = models.caption_processor
    ci_config.clip_model = models.clip_model
    ci_config.clip_preprocess = models.clip_preprocess
    if report is None:
        return Interrogator(ci_config)
    # clip-interrogator reports its label precompute through tqdm; route that to our progress.
    # Its print()s ("Loaded CLIP model...") would land in the middle of our own output.
    original = ci_module.tqdm
    ci_module.tqdm = _progress_tqdm(report)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            interrogator = Interrogator(ci_config)
    finally:
        ci_module.tqdm = original
    interrogator.config.quiet = True  # its per-call ranking bars would tear through our output
    return interrogator


def _progress_tqdm(report: Report) -> Callable[..., Any]:
    def tqdm(iterable: Any, desc: str | None = None, disable: bool = False, **_: Any) -> Any:
        items = list(iterable)
        label = desc or "ranking"
        for done, item in enumerate(items):
            if desc:
                report(label, done, len(items))
            yield item
        if desc:
            report(label, len(items), len(items))

    return tqdm


class Captioner:
    """The loop's caption step, in the run's mode, through the reference or the fast ranker."""

    def __init__(self, interrogator: Any, config: CaptionConfig, cuda_graphs: bool = True):
        self.ci = interrogator
        self.config = config
        self.cuda_graphs = cuda_graphs
        self.fast = None
        if config.interrogator == "fast":
            from truthloop.ml.fastci import FastInterrogator

            self.fast = FastInterrogator(interrogator, cuda_graphs=cuda_graphs)

    def caption(self, image: Any) -> str:
        mode = self.config.mode
        if self.fast is None:  # the reference: clip-interrogator's own calls, nothing of ours
            if mode == "caption":
                return self.ci.generate_caption(image)
            return {"best": self.ci.interrogate, "fast": self.ci.interrogate_fast,
                    "classic": self.ci.interrogate_classic,
                    "negative": self.ci.interrogate_negative}[mode](image)
        from truthloop.ml.fastcaption import fast_generate_caption

        if mode == "negative":
            return self.fast.interrogate_negative(image)
        # One BLIP caption (same tokens as HF generate, less overhead) serves every mode; passed
        # by name because clip-interrogator's methods take their arguments in different orders.
        text = fast_generate_caption(self.ci, image, cuda_graphs=self.cuda_graphs)
        if mode == "caption":
            return text
        return {"best": self.fast.interrogate, "fast": self.fast.interrogate_fast,
                "classic": self.fast.interrogate_classic}[mode](image, caption=text)


class ClipEmbedder:
    """CLIP image and text features for the drift measures, from the CLIP the interrogator
    already holds.

    With the fast interrogator, its image_features (the same computation as
    clip-interrogator's image_to_features, replayed from a CUDA graph on the GPU)."""

    def __init__(self, interrogator: Any, fast: Any = None):
        self.ci = interrogator
        self.fast = fast

    def features(self, image: Any) -> list[float]:
        if self.fast is not None:
            return self.fast.image_features(image)[0].float().cpu().tolist()
        return self.ci.image_to_features(image)[0].float().cpu().tolist()

    def text_features(self, prompts: list[str]) -> list[list[float]]:
        """Unit-length CLIP text features of the prompts, in the images' space: clip-interrogator's
        tokenizer and CLIP text tower, as it encodes its label candidates (the drift measures of
        text and caption-image, and --converge text)."""
        from truthloop.ml.embedding import unit_text_features

        return unit_text_features(self.ci.clip_model, self.ci.tokenize, self.ci.device, prompts)
