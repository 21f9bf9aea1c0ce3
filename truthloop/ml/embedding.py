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
