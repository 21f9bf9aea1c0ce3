"""The florence-2 captioner family: truthloop's caption is the answer transformers' documented
Florence-2 call gives (task token as the text, `generate`, decode with the special tokens,
`post_process_generation`), greedy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _family_config(**changes):
    """The CaptionConfig a run of the florence-2 family starts with (families.py's defaults)."""
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig()
    config.models.captioner = "florence-2"
    apply_pair_defaults(config)
    return dataclasses.replace(config.caption, **changes)


@pytest.fixture(scope="module")
def tiny_dir(truthloop_cache):
    from truthloop.ml.tiny import tiny_family_model

    return tiny_family_model("captioner", "florence-2")


@pytest.fixture(scope="module")
def captioner(tiny_dir):
    from truthloop.ml.families.captioning import load_captioner

    captioner, record = load_captioner("florence-2", tiny_dir, "cpu", _family_config())
    return captioner


def _documented_call(tiny_dir, image, task_prompt, max_new_tokens):
    """transformers' model_doc/florence2.md usage, with greedy decoding in place of its
    num_beams=3 (the loop's captions are greedy)."""
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    inputs = processor(text=task_prompt, images=image, return_tensors="pt")
    with torch.no_grad():
        generated_ids = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                       do_sample=False, num_beams=1)
    generated_text = processor.batch_decode(generated_ids, skip_special_tokens=False)[0]
    parsed = processor.post_process_generation(generated_text, task=task_prompt,
                                               image_size=image.size)
    return parsed[task_prompt]


def test_the_caption_is_the_documented_call(tiny_dir, captioner):
    config = _family_config()
    assert (config.instruction, config.caption_max_length) == ("<DETAILED_CAPTION>", 77)
    for seed in (1, 2):
        image = _image(seed)
        assert captioner.caption(image) == _documented_call(tiny_dir, image,
                                                            "<DETAILED_CAPTION>", 77)


def test_captions_are_words_that_follow_the_image_and_the_task(tiny_dir, captioner):
    from truthloop.ml.families import florence2
    from truthloop.ml.tiny import _TINY_WORDS

    captions = [captioner.caption(_image(seed)) for seed in (1, 2, 3)]
    # Post-processed: no <s>, </s> or <pad> left, only words.
    assert all(caption and set(caption.split()) <= set(_TINY_WORDS) for caption in captions), \
        captions
    assert len(set(captions)) == 3, captions
    assert captioner.caption(_image(1)) == captions[0]  # greedy: same image, same words
    short = florence2.caption(captioner.model, captioner.processor, _image(1), "<CAPTION>", 77)
    assert short != captions[0]  # another task token, another question
    assert short == _documented_call(tiny_dir, _image(1), "<CAPTION>", 77)


def test_a_missing_directory_is_one_line(tmp_path):
    from truthloop.ml.families.captioning import load_captioner
    from truthloop.ml.models import ModelUnavailable

    missing = str(tmp_path / "no-such-florence")
    with pytest.raises(ModelUnavailable) as error:
        load_captioner("florence-2", missing, "cpu", _family_config())
    message = str(error.value)
    assert missing in message and "no such directory" in message and "\n" not in message


def test_full_size_is_florence_2_large():
    """0.77 B parameters; a 768x768 image is 577 tokens; <image> is id 51289 as in the native
    checkpoint (Microsoft's 51289 ids + <image>, the embedding padded to 51328)."""
    import torch

    from truthloop.ml.families import florence2

    model, processor = florence2.full_size("meta", torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 770_213_888
    assert model.dtype == torch.bfloat16
    assert model.config.text_config.vocab_size == 51328
    assert processor.tokenizer.image_token_id == model.config.image_token_id == 51289
    inputs = processor(text="<DETAILED_CAPTION>", images=_image(1), return_tensors="pt")
    assert (inputs["input_ids"] == 51289).sum() == 577
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 768, 768)
