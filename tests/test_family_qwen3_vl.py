"""The qwen3-vl captioner family: truthloop's caption is the answer the model card's plain call
gives (the chat template with the image and the instruction, greedy `generate`, the new tokens
decoded), and the benchmark's architecture is Qwen3-VL 2B Instruct's."""

from __future__ import annotations

from PIL import Image
from family_helpers import assert_a_missing_directory_is_one_line, caption_config
from family_helpers import captioner_fixtures, noise_image, three_captions

tiny_dir, captioner = captioner_fixtures("qwen3-vl")


def test_the_caption_is_the_model_cards_plain_call(tiny_dir, captioner):
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from truthloop.families import DEFAULT_INSTRUCTION

    config = caption_config("qwen3-vl")
    assert (config.instruction, config.caption_max_length) == (DEFAULT_INSTRUCTION, 77)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    for seed in (1, 2):
        image = noise_image(seed)
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


def test_the_checkpoints_sampling_is_turned_off_and_said_so(tiny_dir, captioner):
    """The tiny checkpoint samples as the real one's generation config asks (do_sample, top_k,
    top_p, temperature): its plain call gives other words under another torch seed. The
    captioner decodes greedily instead (the same caption every time) and says what it dropped."""
    import json
    from pathlib import Path

    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    shipped = json.loads((Path(tiny_dir) / "generation_config.json").read_text())
    assert shipped["do_sample"] is True
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": [
        {"type": "image", "image": noise_image(1)},
        {"type": "text", "text": captioner.config.instruction}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    sampled = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            sampled.append(model.generate(**inputs, max_new_tokens=20).tolist())
    assert sampled[0] != sampled[1]
    expected = {
        "num_beams": 1, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0,
        "length_penalty": 1.0, "early_stopping": False, "max_new_tokens": 77,
        "do_sample": False, "from": "generation_config.json",
        "sampling_dropped": {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8}}
    # (FamilyCaptioner may add how it runs the decode, e.g. a static cache.)
    assert {name: captioner.decoding.get(name) for name in expected} == expected
    captions = set()
    for seed in (0, 1):
        torch.manual_seed(seed)
        captions.add(captioner.caption(noise_image(1)))
    assert len(captions) == 1


def test_the_model_sees_the_image_then_the_instruction_in_qwens_chat_format(captioner):
    processor = captioner.processor
    instruction = captioner.config.instruction
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                      f"{instruction}<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor(text=[prompt], images=[noise_image(1)], return_tensors="pt")
    # The tiny image processor makes a 48x64 image 48x64 (multiples of 8-pixel patches merged
    # 2x2): 6x8 patches, 12 image tokens in the text.
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_token).sum()) == 12


def test_captions_are_words_that_follow_the_image_and_the_instruction(captioner):
    from truthloop.ml.families import qwen3_vl
    from truthloop.ml.tiny import _TINY_WORDS

    captions = three_captions(captioner, set(_TINY_WORDS))
    assert len(set(captions)) == 3, captions
    asked_otherwise = qwen3_vl.caption(captioner.model, captioner.processor, noise_image(1),
                                       "What is in the picture?", 77)
    assert asked_otherwise.strip() != captions[0]
    assert len(qwen3_vl.caption(captioner.model, captioner.processor, noise_image(1),
                                captioner.config.instruction, 5).split()) == 5


def test_a_missing_directory_is_one_line(tmp_path):
    assert_a_missing_directory_is_one_line("captioner", "qwen3-vl", tmp_path)


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
