"""CLIP features of images and prompts for the drift measures and the atlas: one computation of
text features for every embedder, and the embedder of the pairs whose captioner is not
clip-interrogator (clip-interrogator's CLIP serves its own pair: interrogate.ClipEmbedder)."""

from __future__ import annotations

from typing import Any


def unit_text_features(model: Any, tokenize: Any, device: str,
                       prompts: list[str]) -> list[list[float]]:
    """Unit-length CLIP text features of the prompts, in the images' space: `tokenize` (the CLIP's
    own tokenizer) and `model`'s text tower. Every embedder's text side (ClipEmbedder's through
    clip-interrogator, OpenClipEmbedder's)."""
    import torch

    with torch.inference_mode():
        tokens = tokenize(list(prompts)).to(device)
        found = model.encode_text(tokens).float()
        found = found / found.norm(dim=-1, keepdim=True)
    return found.cpu().tolist()


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

        # Under CUDA's autocast, as clip-interrogator's image_to_features: open_clip's fp16 CLIP
        # keeps some parameters in fp32 (its first one may be either), and its patch convolution
        # takes the input as it comes, so a cast to "the model's dtype" fed it fp32 on a GPU.
        with torch.inference_mode(), torch.autocast(
                "cuda", enabled=str(self.device).startswith("cuda")):
            pixels = self.preprocess(image.convert("RGB")).unsqueeze(0).to(self.device)
            found = self.model.encode_image(pixels).float()
            found = found / found.norm(dim=-1, keepdim=True)
        return found[0].cpu().tolist()

    def text_features(self, prompts: list[str]) -> list[list[float]]:
        return unit_text_features(self.model, self.tokenize, self.device, prompts)
