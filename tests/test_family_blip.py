"""The blip captioner family: truthloop's caption is the text BLIP's model card's plain
`generate` + `decode` gives (greedy, unconditional, max_new_tokens)."""

from __future__ import annotations

from pathlib import Path

from family_helpers import assert_a_missing_directory_is_one_line, caption_config
from family_helpers import captioner_fixtures, noise_image, three_captions

tiny_dir, captioner = captioner_fixtures("blip")


def test_the_caption_is_the_model_cards_plain_generate(tiny_dir, captioner):
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    max_new_tokens = caption_config("blip").caption_max_length
    assert max_new_tokens == 32
    processor = BlipProcessor.from_pretrained(tiny_dir)
    model = BlipForConditionalGeneration.from_pretrained(tiny_dir)
    for seed in (1, 2):
        image = noise_image(seed)
        inputs = processor(image, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        expected = processor.decode(out[0], skip_special_tokens=True)
        assert captioner.caption(image) == expected


def test_it_decodes_as_its_text_decoder_says(captioner):
    """BLIP's generate decodes in its text decoder, whose generation config comes from
    config.json's text_config: one beam, no sampling, and the captioner says so."""
    expected = {
        "num_beams": 1, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0,
        "length_penalty": 1.0, "early_stopping": False, "max_new_tokens": 32,
        "do_sample": False, "from": "config.json", "sampling_dropped": {}}
    # (FamilyCaptioner may add how it runs the decode, e.g. a static cache.)
    assert {name: captioner.decoding.get(name) for name in expected} == expected


def test_captions_are_words_that_follow_the_image(tiny_dir, captioner):
    vocabulary = set((Path(tiny_dir) / "vocab.txt").read_text().split())
    captions = three_captions(captioner, vocabulary)
    assert len(set(captions)) > 1, captions  # random weights, but not blind to the picture


def test_the_length_limit_is_max_new_tokens(captioner):
    from truthloop.ml.families import blip

    short = blip.caption(captioner.model, captioner.processor, noise_image(1), "", 3)
    assert 1 <= len(short.split()) <= 3


def test_a_missing_directory_is_one_line(tmp_path):
    assert_a_missing_directory_is_one_line("captioner", "blip", tmp_path)


def test_full_size_is_blip_large():
    import torch

    from truthloop.ml.families import blip

    model, processor = blip.full_size("meta", torch.float16)
    count = sum(p.numel() for p in model.parameters())
    assert count == 446_290_492
    # The hub's float32 pytorch_model.bin is 1,879,148,141 bytes: these parameters, the decoder's
    # tied output layer (30524 x 768) a second time, and under 1 MB of pickle around them.
    stored = 4 * (count + 30524 * 768)
    assert stored <= 1_879_148_141 < stored + 1_000_000
    assert model.dtype == torch.float16
    tokenizer = processor.tokenizer
    assert len(tokenizer) == model.config.text_config.vocab_size
    assert tokenizer.bos_token_id == model.config.text_config.bos_token_id
    assert tokenizer.sep_token_id == model.config.text_config.sep_token_id
