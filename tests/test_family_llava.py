"""The llava-1.5 captioner family: truthloop's caption is the answer the model card's plain
call gives (chat template with the image and the instruction, greedy `generate`, decode)."""

from __future__ import annotations

from family_helpers import assert_a_missing_directory_is_one_line, caption_config
from family_helpers import captioner_fixtures, noise_image, three_captions

tiny_dir, captioner = captioner_fixtures("llava-1.5")


def test_the_caption_is_the_model_cards_plain_call(tiny_dir, captioner):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from truthloop.families import DEFAULT_INSTRUCTION

    config = caption_config("llava-1.5")
    assert (config.instruction, config.caption_max_length) == (DEFAULT_INSTRUCTION, 77)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_dir)
    # As llava-hf/llava-1.5-7b-hf's model card writes it (its decode starts at [2:] and so
    # repeats the prompt; the loop wants the answer alone).
    conversation = [{"role": "user", "content": [
        {"type": "text", "text": config.instruction}, {"type": "image"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == f"USER: <image>\n{config.instruction} ASSISTANT:"
    for seed in (1, 2):
        image = noise_image(seed)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=77, do_sample=False)
        answer = output[0][inputs["input_ids"].shape[1]:]
        expected = processor.decode(answer, skip_special_tokens=True)
        assert captioner.caption(image) == expected


def test_it_decodes_as_the_checkpoint_says_one_beam_no_sampling(tiny_dir, captioner):
    """The checkpoint's generation_config.json (the real one's too) names only token ids: generate
    takes its defaults, one beam and no sampling, and the captioner says so."""
    import json
    from pathlib import Path

    shipped = json.loads((Path(tiny_dir) / "generation_config.json").read_text())
    assert not {"num_beams", "do_sample", "temperature", "top_k", "top_p"} & set(shipped)
    expected = {
        "num_beams": 1, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0,
        "length_penalty": 1.0, "early_stopping": False, "max_new_tokens": 77,
        "do_sample": False, "from": "generation_config.json", "sampling_dropped": {}}
    # (FamilyCaptioner may add how it runs the decode, e.g. a static cache.)
    assert {name: captioner.decoding.get(name) for name in expected} == expected


def test_captions_are_words_that_follow_the_image_and_the_instruction(captioner):
    from truthloop.ml.families import llava
    from truthloop.ml.tiny import _TINY_WORDS

    captions = three_captions(captioner, set(_TINY_WORDS))
    assert len(set(captions)) == 3, captions
    asked_otherwise = llava.caption(captioner.model, captioner.processor, noise_image(1),
                                    "What is in the picture?", 77)
    assert asked_otherwise != captions[0]
    assert len(llava.caption(captioner.model, captioner.processor, noise_image(1),
                             captioner.config.instruction, 5).split()) == 5


def test_a_missing_directory_is_one_line(tmp_path):
    assert_a_missing_directory_is_one_line("captioner", "llava-1.5", tmp_path)


def test_full_size_is_llava_1_5_7b():
    """7.06 B parameters (the hub's float16 shards: 14.1 GB); an image is 576 tokens."""
    import torch

    from truthloop.ml.families import llava

    model, processor = llava.full_size("meta", torch.float16)
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
    assert model.dtype == torch.float16
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"},
                                      {"type": "text", "text": "Describe this image."}]}],
        add_generation_prompt=True)
    inputs = processor(images=noise_image(1), text=prompt, return_tensors="pt")
    assert (inputs["input_ids"] == 32000).sum() == 576
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)
