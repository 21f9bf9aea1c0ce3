"""Florence-2 through transformers' own Florence2ForConditionalGeneration and Florence2Processor
(the native port, in transformers since 2025-08: no remote code). The instruction is a task token
(<CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>) that the processor expands into its
question; the answer goes through the processor's post_process_generation, as the library's
documented usage does (https://huggingface.co/docs/transformers/model_doc/florence2). Decoding is
the checkpoint's: beam search with 3 beams and no repeated 3-gram (GENERATION below), as the
documented call (num_beams=3) and Microsoft's card (num_beams=3, do_sample=False) decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.ml.families.captioning import pretrained

TINY_VERSION = 2

# The native checkpoint's configuration. transformers' conversion script
# (src/transformers/models/florence2/convert_florence2_original_pytorch_to_hf.py) keeps Microsoft's
# vision and text configs and adds <image> to the tokenizer (51289 -> 51290 ids, the embedding
# padded to 51328). Microsoft's config.json (read 2026-12-06, identical in its duplicates):
# https://huggingface.co/microsoft/Florence-2-large/blob/main/config.json: a DaViT with
# dim_embed [256, 512, 1024, 2048], num_heads and num_groups [8, 16, 32, 64], depths
# [1, 1, 9, 1], window 12, projection_dim 1024; a BART of d_model 1024, 12 + 12 layers,
# 16 heads, FFN 4096, 1024 positions. preprocessor_config.json: 768x768, ImageNet mean/std,
# 577 image tokens (24 x 24 + 1).
_VISION = dict(embed_dim=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64),
               num_groups=(8, 16, 32, 64), depths=(1, 1, 9, 1), patch_size=(7, 3, 3, 3),
               patch_stride=(4, 2, 2, 2), patch_padding=(3, 1, 1, 1),
               patch_prenorm=(False, True, True, True), window_size=12, projection_dim=1024,
               max_temporal_embeddings=100, max_position_embeddings=50)
_TEXT = dict(model_type="bart", vocab_size=51328, d_model=1024, encoder_layers=12,
             decoder_layers=12, encoder_attention_heads=16, decoder_attention_heads=16,
             encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
             activation_function="gelu", scale_embedding=False, bos_token_id=0, pad_token_id=1,
             eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
# The native checkpoint's generation_config.json: transformers' conversion keeps Microsoft's text
# config, whose generation settings save_pretrained writes out (3 beams, no repeated 3-gram, early
# stopping, BART's forced <s> and </s>). Read 2026-12-07 as Microsoft's config.json text_config
# gives them and as fine-tunes saved from the checkpoints ship them (e.g.
# https://huggingface.co/yuairchen/Flo1/blob/main/generation_config.json); transformers' Florence-2
# page calls generate with num_beams=3, Microsoft's card with num_beams=3 and do_sample=False.
GENERATION = dict(num_beams=3, no_repeat_ngram_size=3, early_stopping=True, bos_token_id=0,
                  pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                  forced_bos_token_id=0, forced_eos_token_id=2)
# The words of Florence2Processor's caption questions ("Describe in detail what is shown in
# the image."): the tiny tokenizer reads them as words.
_QUESTION_WORDS = "what does the image describe in detail is shown with a paragraph".split()
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
# Florence-2's added tokens besides the 1000 <loc_N>: the task tags of its training data.
_TASK_TAGS = ("<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<ncap>", "</ncap>",
              "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>", "</seg>", "<sep>",
              "<region_cap>", "</region_cap>", "<region_to_desciption>",
              "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>",
              "<and>")


def dtype(device: str) -> Any:
    import torch

    # transformers' Florence-2 page loads the native checkpoints in bfloat16 on GPU
    # (Microsoft's own card used float16).
    return torch.bfloat16 if device == "cuda" else torch.float32


load = pretrained("Florence2ForConditionalGeneration", "Florence2Processor")


def caption(model: Any, processor: Any, image: Any, instruction: str,
            max_new_tokens: int, generate: Any = None) -> str:
    """The documented call with the task token as the text, decoded as the checkpoint's
    generation config says (3 beams); the processor's post-processing turns the decoded answer
    into the caption."""
    inputs = processor(text=instruction, images=image, return_tensors="pt").to(model.device,
                                                                               model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    text = processor.batch_decode(tokens, skip_special_tokens=False)[0]
    answer = processor.post_process_generation(text, task=instruction,
                                               image_size=(image.width, image.height))
    return answer[instruction]


def caption_batch(model: Any, processor: Any, images: list[Any], instruction: str,
                  max_new_tokens: int, generate: Any = None) -> list[str]:
    """`caption`'s call for several images in one `generate` (each its own beams): the same
    task question for each, so the encoder's inputs are all one length and nothing pads."""
    inputs = processor(text=[instruction] * len(images), images=images, return_tensors="pt",
                       padding=True).to(model.device, model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens)
    texts = processor.batch_decode(tokens, skip_special_tokens=False)
    return [processor.post_process_generation(text, task=instruction,
                                              image_size=(image.width, image.height))[instruction]
            for text, image in zip(texts, images)]


def _bart_tokenizer(words: list[str], size: int | None = None) -> Any:
    """A BART (byte-level BPE) tokenizer built offline: <s> <pad> </s> <unk>, the 256 byte
    symbols, then "Ġword" pieces reached by merges of their prefixes (a listed word after a
    space is one token, as in GPT-2's vocabulary), up to `size` ids, then <mask>; Florence-2's
    added tokens (<loc_0>..<loc_999> and its task tags) and <image>."""
    import tempfile

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import AddedToken, BartTokenizer

    from truthloop.ml.families.building import add_word_pieces

    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges = add_word_pieces(vocab, words, "Ġ", size)
    vocab["<mask>"] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=merges)
    added = [*(f"<loc_{n}>" for n in range(1000)), *_TASK_TAGS, "<image>"]
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in added],
                         special_tokens=True)
    # <image> is named the model's image token (tokenizer.image_token, _id), as the native
    # checkpoint's tokenizer_config.json names it; a reload is the public way to name it after
    # it took its id (51289 in the real one).
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        return BartTokenizer.from_pretrained(scratch,
                                             extra_special_tokens={"image_token": "<image>"})


def _processor(tokenizer: Any, image_size: int, image_seq_length: int) -> Any:
    from transformers import CLIPImageProcessor, Florence2Processor

    image_processor = CLIPImageProcessor(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size}, do_center_crop=False,
        resample=3, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD,
        image_seq_length=image_seq_length)
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                              post_processor_config={"pure_text": {}})


def _config(vision: dict, text: dict, tokenizer: Any) -> Any:
    from transformers import Florence2Config

    return Florence2Config(vision_config=vision, text_config=text,
                           image_token_id=tokenizer.image_token_id, tie_word_embeddings=True)


def _generation_config() -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(**GENERATION)


def build_tiny(out: Path) -> None:
    """Florence-2's architecture shrunk: a 2-stage DaViT on 32x32 images (4x4 patches + 1 pooled
    = 17 image tokens) and a 2 + 2 layer BART of width 32, tied embeddings and the generation
    config (beam search) as the real one."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    from truthloop.ml.families.building import widen_to_follow_the_image
    from truthloop.ml.tiny import _TINY_WORDS

    words = sorted(set(_TINY_WORDS) | set(_QUESTION_WORDS))
    tokenizer = _bart_tokenizer(words)
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded to 64, as the real 51290 -> 51328
    vision = dict(_VISION, embed_dim=(16, 32), num_heads=(2, 4), num_groups=(2, 4),
                  depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
                  patch_prenorm=(False, True), window_size=2, projection_dim=32)
    text = dict(_TEXT, vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                decoder_ffn_dim=37, max_position_embeddings=256)
    model = Florence2ForConditionalGeneration(_config(vision, text, tokenizer))
    widen_to_follow_the_image(model)
    with torch.no_grad():
        # The output layer is the input embedding (tied), so other pieces cannot be silenced;
        # the words' rows are made long instead, so a word's logit wins: a caption of real
        # words, never empty.
        spoken = tokenizer.convert_tokens_to_ids([f"Ġ{word}" for word in _TINY_WORDS])
        model.get_input_embeddings().weight[spoken] *= 8.0
    model.generation_config = _generation_config()
    model.save_pretrained(out)
    _processor(tokenizer, image_size=32, image_seq_length=17).save_pretrained(out)


def full_size(device: str, dtype: Any) -> tuple[Any, Any]:
    """Florence-2-large with random weights on `device` (benchmarks): 0.77 B parameters, 577
    image tokens from a 768x768 image. The tokenizer holds 50265 pieces (English words from
    CLIP's BPE list, whole-word like GPT-2's) plus Florence-2's 1025 added tokens."""
    from transformers import Florence2ForConditionalGeneration

    from truthloop.ml.families.building import clip_words, made_then_cast

    tokenizer = _bart_tokenizer(clip_words(), size=50264)
    model = made_then_cast(Florence2ForConditionalGeneration, _config(_VISION, _TEXT, tokenizer),
                           device, dtype)
    model.generation_config = _generation_config()  # its captions cost 3 beams, as the real ones
    return model, _processor(tokenizer, image_size=768, image_seq_length=577)
