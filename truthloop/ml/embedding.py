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

    def __init__(self, model: Any, preprocess: Any, clip_name: str, device: str,
                 cuda_graphs: bool = False):
        import open_clip

        from truthloop.ml.cudagraph import CudaGraphed

        self.model = model
        self.preprocess = preprocess
        self.device = device
        self.tokenize = open_clip.get_tokenizer(clip_name.split("/", 1)[0])
        # On CUDA the image tower (one image, one shape: ~500 small kernels launched from Python)
        # replays from a CUDA graph: the same kernels, the same features.
        self._encode = CudaGraphed(self._encode_eager, name="openclip-image")
        self._encode.enabled = bool(cuda_graphs) and str(device).startswith("cuda")

    def features(self, image: Any) -> list[float]:
        return self.pixel_features(self.preprocess_image(image))

    def preprocess_image(self, image: Any) -> Any:
        """CLIP's preprocessing of one image, on the CPU (Pillow lets other threads run: a
        batch's images are preprocessed side by side)."""
        return self.preprocess(image.convert("RGB"))

    def pixel_features(self, pixels: Any) -> list[float]:
        """Unit-length features of one preprocessed image."""
        import torch

        with torch.inference_mode():
            found = self._encode(pixels.unsqueeze(0).to(self.device))
        return found[0].cpu().tolist()

    def _encode_eager(self, pixels: Any) -> Any:
        import torch

        # Under CUDA's autocast, as clip-interrogator's image_to_features: open_clip's fp16 CLIP
        # keeps some parameters in fp32 (its first one may be either), and its patch convolution
        # takes the input as it comes, so a cast to "the model's dtype" fed it fp32 on a GPU.
        # The cast cache off: a graph's capture must not keep casts made outside it (the casts'
        # values are the same either way).
        with torch.autocast("cuda", enabled=str(self.device).startswith("cuda"),
                            cache_enabled=False):
            found = self.model.encode_image(pixels).float()
            return found / found.norm(dim=-1, keepdim=True)

    def text_features(self, prompts: list[str]) -> list[list[float]]:
        return unit_text_features(self.model, self.tokenize, self.device, prompts)
