"""LLaVA-1.5 through transformers' LlavaForConditionalGeneration and LlavaProcessor (a CLIP
image processor, a Llama tokenizer and the checkpoint's chat template, which makes
"USER: <image>\\n{instruction} ASSISTANT:"), asked the run's instruction, greedy (the checkpoint's
generation_config.json names only bos, eos and pad ids: one beam, no sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.ml.families.captioning import pretrained

TINY_VERSION = 1

# llava-hf/llava-1.5-7b-hf's chat_template.json, as the repository holds it (read 2026-12-06
# in a verbatim duplicate, "Duplicate from llava-hf/llava-1.5-7b-hf":
# https://huggingface.co/FriendliAI/llava-1.5-7b-hf/blob/main/chat_template.json).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The real checkpoint (read 2026-12-06): config.json
# https://huggingface.co/llava-hf/llava-1.5-7b-hf/blob/main/config.json (its text_config names
# only what differs from LlamaConfig's defaults, which are Llama-2-7B's: Vicuna-7B v1.5), and
# processor_config.json (patch 14, "default" feature selection, 1 extra CLS token).
_VISION = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
               num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
               projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_TEXT = dict(model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
             max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
             bos_token_id=1, eos_token_id=2, pad_token_id=32001)
# preprocessor_config.json: CLIP's 336 crop, OpenAI CLIP's mean and std, bicubic.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def dtype(device: str) -> Any:
    import torch

    # The model card loads it in float16 (the checkpoint's shards are float16).
    return torch.float16 if device == "cuda" else torch.float32


load = pretrained("LlavaForConditionalGeneration", "LlavaProcessor")


def caption(model: Any, processor: Any, image: Any, instruction: str,
            max_new_tokens: int, generate: Any = None) -> str:
    """The model card's call: the chat template with the image and the instruction as the user
    turn, `generate` greedy (the card passes do_sample=False); only the new tokens are decoded
    (the card decodes the prompt too)."""
    conversation = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device,
                                                                          model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    return processor.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def caption_batch(model: Any, processor: Any, images: list[Any], instruction: str,
                  max_new_tokens: int, generate: Any = None) -> list[str]:
    """`caption`'s call for several images in one `generate`: the same prompt for each, padded
    on the left (where a prompt ends is where its answer starts; LLaVA-1.5's prompts are all
    one length, 576 image tokens each, so nothing pads in practice)."""
    conversation = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt",
                       padding=True, padding_side="left").to(model.device, model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    return processor.batch_decode(tokens[:, inputs["input_ids"].shape[1]:],
                                  skip_special_tokens=True)


def _llama_tokenizer(words: list[str], size: int | None = None) -> Any:
    """A Llama-style tokenizer built offline: <unk> <s> </s>, the 256 byte-fallback pieces,
    then "▁word" pieces, each reached by merges of its prefixes (so a listed word is one token,
    as common words are in Llama's vocabulary), up to `size` pieces; then <image> and <pad>
    as the checkpoint adds them (32000 and 32001 in the real one)."""
    from transformers import AddedToken, LlamaTokenizer

    from truthloop.ml.families.building import add_word_pieces

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{byte:02X}>": 3 + byte for byte in range(256)})
    for piece in ["▁", *sorted(set("".join(words)))]:
        vocab.setdefault(piece, len(vocab))
    merges = add_word_pieces(vocab, words, "▁", size)
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True,
                               add_eos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken("<image>", special=True, normalized=False)]})
    tokenizer.add_special_tokens({"pad_token": AddedToken("<pad>", special=True,
                                                          normalized=False)})
    return tokenizer


def _processor(tokenizer: Any, image_size: int, patch_size: int) -> Any:
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, resample=3, image_mean=_CLIP_MEAN, image_std=_CLIP_STD)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


def _config(vision: dict, text: dict, tokenizer: Any) -> Any:
    from transformers import LlavaConfig

    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                       image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
                       projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default", tie_word_embeddings=False)


def build_tiny(out: Path) -> None:
    """LLaVA-1.5's architecture shrunk: a 2-layer CLIP ViT (32x32 images, 16 patches) whose
    second-to-last layer feeds a 2-layer Llama through the 2-layer GELU projector."""
    from transformers import LlavaForConditionalGeneration

    from truthloop.ml.families.building import only_words_speakable, widen_to_follow_the_image
    from truthloop.ml.tiny import _TINY_WORDS

    words = sorted(set(_TINY_WORDS))
    tokenizer = _llama_tokenizer(words)
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded to 64, as the real 32002 -> 32064
    vision = dict(_VISION, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32)
    text = dict(_TEXT, vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                max_position_embeddings=512,
                pad_token_id=tokenizer.convert_tokens_to_ids("<pad>"))
    model = LlavaForConditionalGeneration(_config(vision, text, tokenizer))
    widen_to_follow_the_image(model)
    only_words_speakable(model, vocab_size,
                         tokenizer.convert_tokens_to_ids([f"▁{word}" for word in words]))
    model.save_pretrained(out)
    _processor(tokenizer, image_size=32, patch_size=8).save_pretrained(out)


def full_size(device: str, dtype: Any) -> tuple[Any, Any]:
    """LLaVA-1.5 7B with random weights on `device` (benchmarks): CLIP ViT-L/14 at 336
    (576 image tokens), Llama-2-7B's shape, 7.06 B parameters. The tokenizer holds 32000
    pieces (English words from CLIP's BPE list, whole-word tokens like Llama's) so prompts and
    captions have about the real token counts."""
    from transformers import LlavaForConditionalGeneration

    from truthloop.ml.families.building import clip_words, made_then_cast

    tokenizer = _llama_tokenizer(clip_words(), size=32000)
    model = made_then_cast(LlavaForConditionalGeneration, _config(_VISION, _TEXT, tokenizer),
                           device, dtype)
    return model, _processor(tokenizer, image_size=336, patch_size=14)
