"""The florence-2 captioner family: truthloop's caption is the answer transformers' documented
Florence-2 call gives (task token as the text, `generate` with 3 beams, decode with the special
tokens, `post_process_generation`), decoded as the checkpoint's generation config says."""

from __future__ import annotations

from family_helpers import assert_a_missing_directory_is_one_line, caption_config
from family_helpers import captioner_fixtures, noise_image, three_captions

tiny_dir, captioner = captioner_fixtures("florence-2")


def _documented_call(tiny_dir, image, task_prompt, max_new_tokens):
    """transformers' model_doc/florence2.md usage (num_beams=3; the rest of the decoding is the
    checkpoint's generation config)."""
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    inputs = processor(text=task_prompt, images=image, return_tensors="pt")
    with torch.no_grad():
        generated_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=3)
    generated_text = processor.batch_decode(generated_ids, skip_special_tokens=False)[0]
    parsed = processor.post_process_generation(generated_text, task=task_prompt,
                                               image_size=image.size)
    return parsed[task_prompt]


def test_the_caption_is_the_documented_call(tiny_dir, captioner):
    config = caption_config("florence-2")
    assert (config.instruction, config.caption_max_length) == ("<DETAILED_CAPTION>", 77)
    for seed in (1, 2):
        image = noise_image(seed)
        assert captioner.caption(image) == _documented_call(tiny_dir, image,
                                                            "<DETAILED_CAPTION>", 77)


def test_it_decodes_with_the_checkpoints_beam_search_and_says_so(tiny_dir, captioner):
    """The tiny checkpoint ships the real one's generation config (3 beams, no repeated 3-gram);
    the captioner keeps it, says so, and its caption is not the one-beam greedy one."""
    import json
    from pathlib import Path

    import torch

    shipped = json.loads((Path(tiny_dir) / "generation_config.json").read_text())
    assert (shipped["num_beams"], shipped["no_repeat_ngram_size"]) == (3, 3)
    expected = {
        "num_beams": 3, "no_repeat_ngram_size": 3, "repetition_penalty": 1.0,
        "length_penalty": 1.0, "early_stopping": True, "max_new_tokens": 77,
        "do_sample": False, "from": "generation_config.json", "sampling_dropped": {}}
    # (FamilyCaptioner may add how it runs the decode, e.g. a static cache.)
    assert {name: captioner.decoding.get(name) for name in expected} == expected
    processor, model = captioner.processor, captioner.model
    inputs = processor(text="<DETAILED_CAPTION>", images=noise_image(1), return_tensors="pt")
    with torch.no_grad():
        one_beam = model.generate(**inputs, max_new_tokens=77, num_beams=1,
                                  no_repeat_ngram_size=0)
    greedy = processor.post_process_generation(
        processor.batch_decode(one_beam, skip_special_tokens=False)[0],
        task="<DETAILED_CAPTION>", image_size=noise_image(1).size)["<DETAILED_CAPTION>"]
    assert captioner.caption(noise_image(1)) != " ".join(greedy.split())


def test_captions_are_words_that_follow_the_image_and_the_task(tiny_dir, captioner):
    from truthloop.ml.families import florence2
    from truthloop.ml.tiny import _TINY_WORDS

    # Post-processed: no <s>, </s> or <pad> left, only words.
    captions = three_captions(captioner, set(_TINY_WORDS))
    assert len(set(captions)) == 3, captions
    short = florence2.caption(captioner.model, captioner.processor, noise_image(1), "<CAPTION>", 77)
    assert short != captions[0]  # another task token, another question
    assert short == _documented_call(tiny_dir, noise_image(1), "<CAPTION>", 77)


def test_a_missing_directory_is_one_line(tmp_path):
    assert_a_missing_directory_is_one_line("captioner", "florence-2", tmp_path)


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
    inputs = processor(text="<DETAILED_CAPTION>", images=noise_image(1), return_tensors="pt")
    assert (inputs["input_ids"] == 51289).sum() == 577
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 768, 768)
