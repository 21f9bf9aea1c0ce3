"""The qwen3-vl captioner family: truthloop's caption is the answer the model card's plain call
gives (the chat template with the image and the instruction, greedy `generate`, the new tokens
decoded), and the benchmark's architecture is Qwen3-VL 2B Instruct's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _family_config(**changes):
    """The CaptionConfig a run of the qwen3-vl family starts with (families.py's defaults)."""
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig()
    config.models.captioner = "qwen3-vl"
    apply_pair_defaults(config)
    return dataclasses.replace(config.caption, **changes)


@pytest.fixture(scope="module")
def tiny_dir(truthloop_cache):
    from truthloop.ml.tiny import tiny_family_model

    return tiny_family_model("captioner", "qwen3-vl")


@pytest.fixture(scope="module")
def captioner(tiny_dir):
    from truthloop.ml.families.captioning import load_captioner

    captioner, record = load_captioner("qwen3-vl", tiny_dir, "cpu", _family_config())
    return captioner


def test_the_caption_is_the_model_cards_plain_call(tiny_dir, captioner):
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from truthloop.families import DEFAULT_INSTRUCTION

    config = _family_config()
    assert (config.instruction, config.caption_max_length) == (DEFAULT_INSTRUCTION, 77)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    for seed in (1, 2):
        image = _image(seed)
        # As Qwen/Qwen3-VL-2B-Instruct's model card writes it, greedy.
        messages = [{"role": "user", "content": [
            {"type": "image", "image": image}, {"type": "text", "text": config.instruction}]}]
        inputs = processor.apply_chat_template(messages, tokenize=True,
                                               add_generation_prompt=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            generated_ids = model.generate(**inputs, max_new_tokens=77, do_sample=False)
        generated_ids_trimmed = [out_ids[len(in_ids):] for in_ids, out_ids
                                 in zip(inputs.input_ids, generated_ids)]
        output_text = processor.batch_decode(generated_ids_trimmed, skip_special_tokens=True,
                                             clean_up_tokenization_spaces=False)
        # The loop keeps the caption on one line without surrounding space.
        assert captioner.caption(image) == " ".join(output_text[0].split())


def test_the_model_sees_the_image_then_the_instruction_in_qwens_chat_format(captioner):
    processor = captioner.processor
    instruction = captioner.config.instruction
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                      f"{instruction}<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor(text=[prompt], images=[_image(1)], return_tensors="pt")
    # The tiny image processor makes a 48x64 image 48x64 (multiples of 8-pixel patches merged
    # 2x2): 6x8 patches, 12 image tokens in the text.
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_token).sum()) == 12


def test_captions_are_words_that_follow_the_image_and_the_instruction(captioner):
    from truthloop.ml.families import qwen3_vl
    from truthloop.ml.tiny import _TINY_WORDS

    captions = [captioner.caption(_image(seed)) for seed in (1, 2, 3)]
    assert all(caption and set(caption.split()) <= set(_TINY_WORDS) for caption in captions), \
        captions
    assert len(set(captions)) == 3, captions
    assert captioner.caption(_image(1)) == captions[0]  # greedy: same image, same words
    asked_otherwise = qwen3_vl.caption(captioner.model, captioner.processor, _image(1),
                                       "What is in the picture?", 77)
    assert asked_otherwise.strip() != captions[0]
    assert len(qwen3_vl.caption(captioner.model, captioner.processor, _image(1),
                                captioner.config.instruction, 5).split()) == 5


def test_a_missing_directory_is_one_line(tmp_path):
    from truthloop.ml.families.captioning import load_captioner
    from truthloop.ml.models import ModelUnavailable

    missing = str(tmp_path / "no-such-qwen3-vl")
    with pytest.raises(ModelUnavailable) as error:
        load_captioner("qwen3-vl", missing, "cpu", _family_config())
    message = str(error.value)
    assert missing in message and "no such directory" in message and "\n" not in message


def test_full_size_is_qwen3_vl_2b():
    """2.13 B parameters (the ViT 0.41 B; input and output embeddings tied): 4.26 GB in
    bfloat16, the repository's model.safetensors. A 1024x1024 image is 1024 image tokens."""
    import torch

    from truthloop.ml.families import qwen3_vl

    model, processor = qwen3_vl.full_size("meta", torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 2_127_532_032
    assert sum(p.numel() for p in model.model.visual.parameters()) == 406_957_056
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"],
                       images=[Image.new("RGB", (1024, 1024))], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 64, 64]]
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_token).sum()) == 1024
