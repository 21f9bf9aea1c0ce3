"""A tiny Qwen tokenizer, built offline, for the tiny checkpoints of the families that read text
through Qwen: FLUX.2 [klein] and Z-Image (a Qwen3 text encoder) and Qwen3-VL (the captioner).

It is the real tokenizer class (transformers' Qwen2Tokenizer: byte-level BPE with Qwen's
pre-tokenizer) over a small vocabulary trained here on tiny.py's word list, with Qwen's special
tokens and a chat template that renders what Qwen3's and Qwen3-VL's shipped templates render for
the messages truthloop sends (one user turn, a generation prompt; Qwen3's `enable_thinking`).
Any text tokenizes (unknown words fall back to bytes); the vocabulary's whole words are what a
tiny captioner may say (see `word_token_ids`).

Beside it, the Qwen3 text encoder both generator families read prompts with: Qwen3-4B's
configuration (`QWEN3_4B`, full size) and a tiny one over this tokenizer (`tiny_text_config`).
"""

from __future__ import annotations

import json
from typing import Any

# Qwen's control tokens, as its tokenizers name them (special: left out of decoded captions).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD,
                  VIDEO_PAD)
# Qwen3's reasoning markers are added tokens but not special ones (decoding keeps them).
THINKING_TOKENS = ("<think>", "</think>")

# The user turn and generation prompt as Qwen3's template writes them; with
# enable_thinking=False it opens an empty reasoning block, as Qwen3's does (FLUX.2 [klein] encodes
# its prompt that way; Z-Image passes enable_thinking=True and gets the bare prompt).
TEXT_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Qwen3-VL's: an image item becomes <|vision_start|><|image_pad|><|vision_end|> (the processor
# then repeats <|image_pad|> once per merged image patch), text items follow as they are.
VISION_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for item in message.content %}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' or 'video' in item %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item.text }}"
    "{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer(chat_template: str = TEXT_CHAT_TEMPLATE) -> Any:
    """A Qwen2Tokenizer over a few hundred tokens: the 256 byte symbols, BPE merges that spell
    tiny.py's words (each word also as one token with its leading space), Qwen's special tokens.
    End of a turn is <|im_end|> and padding <|endoftext|>, as in Qwen3's instruct tokenizers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    from truthloop.ml.tiny import _TINY_WORDS

    words = sorted(set(_TINY_WORDS))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([" " + word for word in words] + words, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" "))
              for merge in trained["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges, unk_token=None,
                               eos_token=IM_END, pad_token=ENDOFTEXT)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)
                          for token in SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token in THINKING_TOKENS])
    tokenizer.chat_template = chat_template
    return tokenizer


def word_token_ids(tokenizer: Any) -> list[int]:
    """The ids of tiny.py's words as whole tokens (with their leading space): what a tiny
    captioner's output layer is allowed to favour, so its captions are words, not byte soup."""
    from truthloop.ml.tiny import _TINY_WORDS

    vocab = tokenizer.get_vocab()
    # "Ġ" is the byte-level alphabet's space.
    return sorted({vocab["Ġ" + word] for word in _TINY_WORDS if "Ġ" + word in vocab})


def special_ids(tokenizer: Any) -> dict[str, int]:
    """Token ids a model config must agree with (image/video/vision markers, end, padding)."""
    ids = tokenizer.convert_tokens_to_ids
    return {token: ids(token) for token in (*SPECIAL_TOKENS, *THINKING_TOKENS)}


# Qwen3-4B, the text encoder of FLUX.2 [klein] 4B and of Z-Image-Turbo, transcribed from their
# checkpoints' text_encoder/config.json (the same numbers in both):
# https://huggingface.co/black-forest-labs/FLUX.2-klein-4B/blob/main/text_encoder/config.json
# https://huggingface.co/smartdigitalnetworks/Z-Image-Turbo/blob/main/text_encoder/config.json
# (a copy "Duplicate from Tongyi-MAI/Z-Image-Turbo").
QWEN3_4B = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
    max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000,
    attention_bias=False, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
)


def tiny_text_config(tokenizer: Any, num_hidden_layers: int) -> Any:
    """A tiny Qwen3Config over `tokenizer` (build_tokenizer's): width 16, 2 heads of 8, one
    key/value head, the tokenizer's ids for the start, end and padding of a text."""
    from transformers import Qwen3Config

    ids = special_ids(tokenizer)
    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
        num_hidden_layers=num_hidden_layers, num_attention_heads=2, num_key_value_heads=1,
        head_dim=8, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT],
    )
