"""The named embedders of `truthloop measure` (named_measures.py says which and why), loaded
through transformers' from_pretrained from the Hugging Face cache like every model
(ml/models.py's path: a checkpoint neither cached nor downloadable is one line), or as tiny
random-weight checkpoints built offline from configs (`--models tiny`, the tests).

Each gives unit-length features, in batches, through the model's own preprocessing (its
preprocessor_config.json / tokenizer):

    clip      CLIPModel's projected image and text features (one space: the cross measure)
    dino      ViTModel's CLS token after the last layer norm (timm's DINO features), on images
              transformed as the Telephone Game's code does (DinoTransform)
    dinov2    Dinov2Model's pooled output (the CLS token after the last layer norm)
    sentence  the model cards' transformers-only recipe: the token embeddings averaged over the
              attention mask (sentence-transformers' mean pooling), at its max_seq_length
    dreamsim  the dreamsim package's embed (its own weights, its own download)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from truthloop.catalog import cached_file
from truthloop.model_ids import download_hint
from truthloop.named_measures import NamedEmbedder

# Bump when a tiny recipe below changes, so an old cache is rebuilt rather than reused.
TINY_VERSION = 3
TINY_TEXT_TOKENS = 60  # the tiny sentence models' longest input (64 positions)


class NamedModel:
    """A loaded named embedder: image_features / text_features (lists of unit vectors) for
    the measures its NamedEmbedder lists; `source`: what was loaded, as run.json records
    models ({"requested", "repo", "revision", "path"})."""

    def __init__(self, named: NamedEmbedder, model: Any, processor: Any, device: str,
                 source: dict[str, str | None]):
        self.named = named
        self.model = model
        self.processor = processor
        self.device = device
        self.source = source

    def image_features(self, images: list[Any]) -> list[list[float]]:
        import torch

        kind = self.named.kind
        with torch.inference_mode():
            if kind == "dreamsim":
                found = torch.cat([self.model.embed(self.processor(image).to(self.device))
                                   for image in images])
            else:
                image_processor = getattr(self.processor, "image_processor", self.processor)
                pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
                pixels = pixels.to(self.device)
                if kind == "clip":
                    found = _tensor(self.model.get_image_features(pixel_values=pixels))
                elif kind == "dinov2":
                    found = self.model(pixel_values=pixels).pooler_output
                else:  # dino
                    found = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return _unit_rows(found)

    def text_features(self, texts: list[str]) -> list[list[float]]:
        import torch

        if "text" not in self.named.measures:
            raise TypeError(f"{self.named.label} has no text features")
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        # the card's max_seq_length, within what the tokenizer (and so the model) takes
        length = min(self.named.max_length or 10**6, getattr(tokenizer, "model_max_length", 77))
        tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=length,
                           return_tensors="pt").to(self.device)
        with torch.inference_mode():
            if self.named.kind == "clip":
                found = _tensor(self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
            else:  # sentence: mean pooling over the attention mask
                hidden = self.model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                found = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return _unit_rows(found)


def _tensor(output: Any) -> Any:
    """get_*_features' result: a tensor (transformers 4) or an output whose pooler_output is
    the projected features (transformers 5)."""
    return output if hasattr(output, "norm") else output.pooler_output


def _unit_rows(found: Any) -> list[list[float]]:
    found = found.float()
    return (found / found.norm(dim=-1, keepdim=True)).cpu().tolist()


def check(chosen: list[NamedEmbedder], tiny: bool) -> None:
    """One line (ModelUnavailable) for an embedder that cannot be loaded here, before any is:
    a checkpoint neither in the hub cache nor downloadable (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    from truthloop.ml.models import ModelUnavailable

    if tiny or not constants.HF_HUB_OFFLINE:
        return
    absent = [named for named in chosen
              if named.repo and cached_file(named.repo, "config.json") is None]
    if absent:
        names = ", ".join(f"{n.name} ({n.repo})" for n in absent)
        hints = " and ".join(f"`{download_hint(n.repo)}`" for n in absent)
        verb = "is" if len(absent) == 1 else "are"
        raise ModelUnavailable(f"embedder {names} {verb} not in the Hugging Face cache and "
                               f"cannot be downloaded here (HF_HUB_OFFLINE): run {hints} on a "
                               "connected machine (and copy its HF_HOME cache)")


def load_embedder(named: NamedEmbedder, tiny: bool = False, device: str = "auto",
                  notice: Any = lambda message: None) -> NamedModel:
    """`named` on `device` (ml.models.pick_device), in fp32: these are small models, and the
    numbers are compared across runs and machines."""
    from truthloop.ml.models import _from_pretrained, _is_local, _source, pick_device

    picked = pick_device(device, notice)
    if named.kind == "dreamsim":
        return _load_dreamsim(named, picked)
    spec = tiny_embedder(named) if tiny else named.repo
    model, processor = _from_pretrained(f"embedder {named.name}", spec,
                                        lambda path: _load(named, path))
    model.eval()
    repo = None if _is_local(spec) else spec
    source = _source(spec, repo, "config.json") | {"requested": "tiny" if tiny else spec}
    return NamedModel(named, model.to(picked), processor, picked, source)


def _load(named: NamedEmbedder, path: str) -> tuple[Any, Any]:
    import torch
    import transformers

    if named.kind == "clip":
        return (transformers.CLIPModel.from_pretrained(path, dtype=torch.float32),
                transformers.CLIPProcessor.from_pretrained(path))
    if named.kind == "dino":  # no pooler: DINO's checkpoints have none
        model = transformers.ViTModel.from_pretrained(path, dtype=torch.float32,
                                                      add_pooling_layer=False)
        return model, DinoTransform(model.config.image_size)
    if named.kind == "dinov2":
        return (transformers.Dinov2Model.from_pretrained(path, dtype=torch.float32),
                transformers.AutoImageProcessor.from_pretrained(path))
    return (transformers.AutoModel.from_pretrained(path, dtype=torch.float32),
            transformers.AutoTokenizer.from_pretrained(path))


class DinoTransform:
    """DINO ViT-B/16's images as the Telephone Game's code gives them to timm's DINO, and as DINO
    was trained: the short side resized to `crop` * 8/7 (256 for 224; bilinear), a centre crop
    of `crop`, ImageNet's mean and deviation; torchvision's Resize, CenterCrop, ToTensor and
    Normalize, with their roundings, in Pillow and numpy. (The hub conversion's
    preprocessor_config.json resizes to 224 without a crop and normalises with 0.5 and 0.5.)
    Called as an image processor: (images=[...], return_tensors="pt") -> {"pixel_values"}."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, crop: int = 224):
        self.crop = crop
        self.short = crop * 8 // 7

    def __call__(self, images: list[Any], return_tensors: str = "pt") -> dict[str, Any]:
        import numpy as np
        import torch
        from PIL import Image

        rows = []
        for image in images:
            width, height = image.size
            if width <= height:
                size = (self.short, int(self.short * height / width))
            else:
                size = (int(self.short * width / height), self.short)
            image = image.convert("RGB").resize(size, Image.BILINEAR)
            left = int(round((size[0] - self.crop) / 2.0))
            top = int(round((size[1] - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            pixels = (pixels - np.asarray(self.MEAN, np.float32)) / np.asarray(self.STD, np.float32)
            rows.append(pixels.transpose(2, 0, 1))
        return {"pixel_values": torch.from_numpy(np.stack(rows))}


def _load_dreamsim(named: NamedEmbedder, device: str) -> NamedModel:
    """DreamSim through its own package (pip install dreamsim), whose weights it downloads
    into truthloop's cache on first use."""
    from dreamsim import dreamsim

    from truthloop.paths import cache_dir

    folder = cache_dir() / "dreamsim"
    model, preprocess = dreamsim(pretrained=True, device=device, cache_dir=str(folder))
    source = {"requested": "dreamsim", "repo": None, "revision": None, "path": str(folder)}
    return NamedModel(named, model, preprocess, device, source)


# -- tiny checkpoints ---------------------------------------------------------------------------
def tiny_embedder(named: NamedEmbedder) -> str:
    """The tiny checkpoint of `named`, built on first use (ml/tiny.py keeps it beside the other
    tiny models, under this module's TINY_VERSION)."""
    from truthloop.ml.tiny import tiny_embedder_model

    if named.kind == "dreamsim":
        raise ValueError("DreamSim has no tiny version")
    return tiny_embedder_model(named.name, TINY_VERSION, lambda out, root: _build_tiny(
        named, out, root))


def _build_tiny(named: NamedEmbedder, out: Path, tiny_root: Path) -> None:
    import transformers as tf

    out.mkdir(parents=True, exist_ok=True)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                 num_attention_heads=4)
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    if named.kind == "clip":
        words = tiny_root / "clip-tokenizer"  # CLIP's BPE vocabulary, as the tiny SD's
        vocab = json.loads((words / "vocab.json").read_text(encoding="utf-8"))
        merges = (words / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
        tokenizer = tf.CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                                     model_max_length=77)
        config = tf.CLIPConfig(
            text_config=dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                             eos_token_id=49407, pad_token_id=49407, **small),
            vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
        processor = tf.CLIPProcessor(
            image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 32},
                                                  crop_size={"height": 32, "width": 32}),
            tokenizer=tokenizer)
        _spread(tf.CLIPModel(config)).save_pretrained(out)
        processor.save_pretrained(out)
    elif named.kind == "dino":
        config = tf.ViTConfig(image_size=32, patch_size=8, **small)
        # its images: DinoTransform at the model's size, as the real one's
        _spread(tf.ViTModel(config, add_pooling_layer=False)).save_pretrained(out)
    elif named.kind == "dinov2":
        config = tf.Dinov2Config(image_size=32, patch_size=8, mlp_ratio=2,
                                 **{k: v for k, v in small.items() if k != "intermediate_size"})
        _spread(tf.Dinov2Model(config)).save_pretrained(out)
        tf.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                             **imagenet).save_pretrained(out)
    else:  # sentence: MiniLM is a BERT, MPNet its own architecture
        from truthloop.ml.tiny import tiny_words

        mpnet = named.name == "mpnet"
        specials = (["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] if mpnet
                    else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        words = specials + tiny_words()
        vocab = out / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
        if mpnet:
            tokenizer = tf.MPNetTokenizer(str(vocab), do_lower_case=True,
                                          model_max_length=TINY_TEXT_TOKENS)
            config = tf.MPNetConfig(vocab_size=len(words), max_position_embeddings=66,
                                    pad_token_id=1, bos_token_id=0, eos_token_id=2, **small)
            model = tf.MPNetModel(config)
        else:
            tokenizer = tf.BertTokenizer(str(vocab), do_lower_case=True,
                                         model_max_length=TINY_TEXT_TOKENS)
            config = tf.BertConfig(vocab_size=len(words), max_position_embeddings=64,
                                   pad_token_id=0, **small)
            model = tf.BertModel(config)
        _spread(model).save_pretrained(out)
        tokenizer.save_pretrained(out)


def _spread(model: Any) -> Any:
    """Wider random weights: at the usual initialisation a tiny model maps every input to
    nearly one vector (cosines of 0.99999 all round), and the tests could not tell inputs
    apart (the tiny BLIP does the same)."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model
