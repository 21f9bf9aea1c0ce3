"""CLIP text features for a sweep's atlas: the truth prompts' embeddings, from the CLIP model the
captioner already holds (no second model loaded). The sweep worker calls this; torch stays in ml/.
"""

from __future__ import annotations

from typing import Any


def text_features(embedder: Any, prompts: list[str]) -> list[list[float]] | None:
    """CLIP text features of the prompts, unit length: the embedder's own method when it has one,
    else through the clip-interrogator it wraps (its tokenizer and CLIP model); None when it has
    neither."""
    own = getattr(embedder, "text_features", None)
    if own is not None:
        return own(prompts)
    ci = getattr(embedder, "ci", None)
    if ci is None:
        return None
    import torch

    with torch.inference_mode():
        tokens = ci.tokenize(prompts).to(ci.device)
        features = ci.clip_model.encode_text(tokens).float()
        features = features / features.norm(dim=-1, keepdim=True)
    return features.cpu().tolist()


class OpenClipEmbedder:
    """Unit-length CLIP features of images and prompts, straight from an open_clip model: the
    embedder of every pair whose captioner is not clip-interrogator (one CLIP for all pairs, so
    their attractors land in one space). The same computation as clip-interrogator's
    image_to_features and its text encoding."""

    def __init__(self, model: Any, preprocess: Any, clip_name: str, device: str):
        import open_clip

        self.model = model
        self.preprocess = preprocess
        self.device = device
        self.tokenize = open_clip.get_tokenizer(clip_name.split("/", 1)[0])

    def features(self, image: Any) -> list[float]:
        import torch

        with torch.inference_mode():
            pixels = self.preprocess(image.convert("RGB")).unsqueeze(0).to(self.device)
            pixels = pixels.to(next(self.model.parameters()).dtype)
            found = self.model.encode_image(pixels).float()
            found = found / found.norm(dim=-1, keepdim=True)
        return found[0].cpu().tolist()

    def text_features(self, prompts: list[str]) -> list[list[float]]:
        import torch

        with torch.inference_mode():
            tokens = self.tokenize(prompts).to(self.device)
            found = self.model.encode_text(tokens).float()
            found = found / found.norm(dim=-1, keepdim=True)
        return found.cpu().tolist()
