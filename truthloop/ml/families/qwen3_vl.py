"""Qwen3-VL through transformers' Qwen3VLForConditionalGeneration and Qwen3VLProcessor (a
dynamic-resolution image processor, a video processor, the Qwen tokenizer and the checkpoint's
chat template: "<|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>{instruction}
<|im_end|>\\n<|im_start|>assistant\\n"), asked the run's instruction, greedy: the checkpoint's
generation config samples (GENERATION below), and FamilyCaptioner turns that off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.ml.families.captioning import pretrained

TINY_VERSION = 2

# The default checkpoint's architecture (read 2026-12-06). Its config.json,
# https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct/blob/main/config.json, is behind the hub;
# these numbers are the ones every public transcription of it agrees on (jax-ml/bonsai's
# qwen3_vl modeling.py `qwen3vl_2b`, sgl-jax's Qwen3VLVisionConfig defaults, InfiniLM's
# printout of the loaded checkpoint) and give the 4.26 GB bfloat16 model.safetensors of the
# repository's file list (https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct/tree/main).
_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
    max_position_embeddings=262144, rms_norm_eps=1e-6, attention_bias=False,
    rope_parameters={"rope_type": "default", "rope_theta": 5000000,
                     "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    bos_token_id=151643, eos_token_id=151645,
)
_VISION = dict(
    depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3,
    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17],
    hidden_act="gelu_pytorch_tanh",
)
# The sampling the checkpoint's generation_config.json asks for (do_sample true, top_k, top_p,
# temperature): the values of the model card's "Generation Hyperparameters" for VL (the card's
# call passes none of them, so generate samples with these). The file itself was not readable
# from here on 2026-12-07; truthloop decodes greedily whatever it says (FamilyCaptioner), and the
# tiny checkpoint carries these so its tests go through the same turning-off.
SAMPLING = dict(do_sample=True, top_k=20, top_p=0.8, temperature=0.7, repetition_penalty=1.0)
# preprocessor_config.json (Qwen2VLImageProcessorFast): 16-pixel patches merged 2x2, between
# 256x256 and 4096x4096 pixels in all, mean and std 0.5.
_IMAGES = dict(patch_size=16, temporal_patch_size=2, merge_size=2,
               size={"shortest_edge": 65536, "longest_edge": 16777216},
               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def dtype(device: str) -> Any:
    import torch

    # The checkpoint is bfloat16 and the model card loads it as stored (dtype="auto").
    return torch.bfloat16 if device == "cuda" else torch.float32


load = pretrained("Qwen3VLForConditionalGeneration", "AutoProcessor")


def caption(model: Any, processor: Any, image: Any, instruction: str,
            max_new_tokens: int, generate: Any = None) -> str:
    """The model card's call: the image and the instruction as the user turn through the chat
    template, `generate` (greedy once FamilyCaptioner has turned the checkpoint's sampling
    off), only the new tokens decoded without special tokens."""
    messages = [{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "text", "text": instruction}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    inputs = inputs.to(model.device)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    new = tokens[:, inputs["input_ids"].shape[1]:]
    return processor.batch_decode(new, skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)[0]


def caption_batch(model: Any, processor: Any, images: list[Any], instruction: str,
                  max_new_tokens: int, generate: Any = None) -> list[str]:
    """`caption`'s call for several images in one `generate`: one conversation each, padded on
    the left (an image's token count follows its size, so prompts differ in length when the
    images' sizes do)."""
    messages = [[{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "text", "text": instruction}]}]
        for image in images]
    inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt",
                                           processor_kwargs={"padding": True,
                                                             "padding_side": "left"})
    inputs = inputs.to(model.device)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    new = tokens[:, inputs["input_ids"].shape[1]:]
    return processor.batch_decode(new, skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)


def _processor(tokenizer: Any, images: dict[str, Any]) -> Any:
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    from truthloop.ml.families import tiny_qwen

    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**images),
                            video_processor=Qwen3VLVideoProcessor(**images),
                            tokenizer=tokenizer, chat_template=tiny_qwen.VISION_CHAT_TEMPLATE)


def _generation_config(ids: dict[str, int]) -> Any:
    from transformers import GenerationConfig

    from truthloop.ml.families import tiny_qwen as q

    return GenerationConfig(bos_token_id=ids[q.ENDOFTEXT], pad_token_id=ids[q.ENDOFTEXT],
                            eos_token_id=[ids[q.IM_END], ids[q.ENDOFTEXT]], **SAMPLING)


def _config(text: dict, vision: dict, ids: dict[str, int], tie: bool) -> Any:
    from transformers import Qwen3VLConfig

    from truthloop.ml.families import tiny_qwen as q

    return Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tie,
        image_token_id=ids[q.IMAGE_PAD], video_token_id=ids[q.VIDEO_PAD],
        vision_start_token_id=ids[q.VISION_START], vision_end_token_id=ids[q.VISION_END],
    )


def build_tiny(out: Path) -> None:
    """Qwen3-VL's architecture shrunk: a 2-block ViT of width 32 on 8-pixel patches (images
    are resized to at most 64x64: 16 merged image tokens), whose patch merger and one deepstack
    merger feed a 2-layer Qwen3 decoder with interleaved multimodal rotary positions; its
    generation config samples, as the real one's."""
    from transformers import Qwen3VLForConditionalGeneration

    from truthloop.ml.families import tiny_qwen as q
    from truthloop.ml.families.building import only_words_speakable, widen_to_follow_the_image

    tokenizer = q.build_tokenizer(q.VISION_CHAT_TEMPLATE)
    ids = q.special_ids(tokenizer)
    vocab_size = -(-len(tokenizer) // 64) * 64
    text = dict(_TEXT, vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                max_position_embeddings=4096, bos_token_id=ids[q.ENDOFTEXT],
                eos_token_id=ids[q.IM_END], pad_token_id=ids[q.ENDOFTEXT],
                rope_parameters=dict(_TEXT["rope_parameters"], mrope_section=[2, 1, 1]))
    vision = dict(_VISION, depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                  patch_size=8, out_hidden_size=32, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    model = Qwen3VLForConditionalGeneration(_config(text, vision, ids, tie=False))
    widen_to_follow_the_image(model)
    only_words_speakable(model, vocab_size, q.word_token_ids(tokenizer))
    model.generation_config = _generation_config(ids)
    model.save_pretrained(out)
    tiny_images = dict(_IMAGES, patch_size=8,
                       size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64})
    _processor(tokenizer, tiny_images).save_pretrained(out)


def full_size(device: str, dtype: Any) -> tuple[Any, Any]:
    """Qwen3-VL 2B Instruct with random weights on `device` (benchmarks): 2.13 B parameters
    (the ViT 0.41 B), tied input and output embeddings. The processor is the checkpoint's
    image processor (so an image gives the real number of image tokens) with the tiny
    tokenizer: the instruction's few tokens differ in count, the image's hundreds do not."""
    from transformers import Qwen3VLForConditionalGeneration

    from truthloop.ml.families import tiny_qwen as q
    from truthloop.ml.families.building import made_on

    tokenizer = q.build_tokenizer(q.VISION_CHAT_TEMPLATE)
    ids = q.special_ids(tokenizer)
    config = _config(_TEXT, _VISION, ids, tie=True)
    with made_on(device, dtype):
        model = Qwen3VLForConditionalGeneration(config)
    model.generation_config = _generation_config(ids)
    return model.eval(), _processor(tokenizer, _IMAGES)
