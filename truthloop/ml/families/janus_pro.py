"""Janus-Pro, one model on both sides of the loop: transformers' JanusForConditionalGeneration
and JanusProcessor (a SigLIP image processor, DeepSeek's tokenizer and the checkpoint's chat
template, "<|User|>: ...\\n\\n<|Assistant|>:").

- image mode (the generator): the prompt as the user turn, the processor's image mode (the
  begin-of-image token appended), `generate(generation_mode="image", do_sample=True)`: 576 image
  tokens sampled one by one with classifier-free guidance (the checkpoint's guidance_scale 5;
  the unconditional row is the prompt with its words replaced by padding), then the VQ decoder
  turns them into a 384x384 picture (`decode_image_tokens`, the processor's `postprocess`).
  transformers samples them with torch.multinomial from the device's global random stream, so
  `TokenPainter` swaps the run's stream in for the call (`drawing_from`): a seed gives one image.
- text mode (the captioner): the image and the instruction as the user turn, the processor's text
  mode (DeepSeek's default system prompt before it, as the checkpoint's processor_config says),
  `generate` greedy (the checkpoint's generation_config.json samples nothing for text: it names
  token ids, the image mode's guidance_scale and the temperature 1 of its image sampling).

When both sides of a run name janus-pro with one checkpoint, it is loaded once and shared
(ml/backends.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from truthloop.ml.families.captioning import pretrained

TINY_VERSION = 1

# The chat template transformers' conversion writes into the checkpoint
# (src/transformers/models/janus/convert_janus_weights_to_hf.py, CHAT_TEMPLATE), which makes
# DeepSeek's own format: "<|User|>: {text}\n\n<|Assistant|>:".
CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}"
    "{%set i=0%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}"
    "<|User|>: "
    "{%elif message['role']|lower=='assistant'%}"
    "<|Assistant|>:{%if not (loop.last and not add_generation_prompt and "
    "message['content'][0]['type']=='text' and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}"
    "{{message['role'].capitalize()}}: "
    "{%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}"
    "{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}"
    "{{' '+text}}"
    "{%else%}"
    "{{text}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}"
    "{{seps[0]}}"
    "{%else%}"
    "{{seps[1]}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

# DeepSeek's control tokens, as its tokenizer names them.
BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD = "<\uff5c\u2581pad\u2581\uff5c>"
IMAGE_TOKENS = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                "eoi_token": "<end_of_image>"}

# Janus-Pro-1B's architecture (deepseek-community/Janus-Pro-1B, the transformers conversion of
# deepseek-ai/Janus-Pro-1B; its config.json and generation_config.json as transcribed in a
# public audit of the native Janus family, read 2026-12-08): a DeepSeek-LLM 1.5B text model
# (Llama's shape), SigLIP-L at 384 (576 patches of 16) for reading images, a VQ tokenizer with a
# 16384-code book and a 24x24 grid for drawing them, bfloat16.
_TEXT = dict(model_type="llama", vocab_size=102400, hidden_size=2048, intermediate_size=5632,
             num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
             max_position_embeddings=16384, hidden_act="silu", rms_norm_eps=1e-6,
             bos_token_id=100000, eos_token_id=100001, pad_token_id=100002)
_VISION = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=384,
               patch_size=16, projection_dim=2048, depth=2, num_image_tokens=576)
_VQ = dict(embed_dim=8, num_embeddings=16384, projection_dim=2048, image_token_embed_dim=2048)
# generation_config.json: the image mode's guidance and sampling temperature, the padding that
# fills the unconditional row and the token that opens an image.
GUIDANCE = 5.0
# preprocessor_config.json: 384x384, padded square with the mean's grey, mean and std 0.5.
_IMAGES = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], min_size=14)


def dtype(device: str) -> Any:
    import torch

    # The checkpoint is bfloat16; DeepSeek's own code runs it so on a GPU.
    return torch.bfloat16 if device == "cuda" else torch.float32


load = pretrained("JanusForConditionalGeneration", "JanusProcessor")


# -- text mode: the captioner ------------------------------------------------------------------
# What transformers' text mode sets over the generation config before its generate decodes
# (JanusForConditionalGeneration.generate: guidance_scale None, so that the image mode's
# guidance makes no classifier-free-guidance processor for text); fastdecode reads it to judge
# the text mode's decoding.
CAPTION_CALL_SETTINGS = {"guidance_scale": None}


def _caption_prompt(processor: Any, instruction: str) -> str:
    conversation = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def caption(model: Any, processor: Any, image: Any, instruction: str,
            max_new_tokens: int, generate: Any = None) -> str:
    """transformers' documented call: the image and the instruction as the user turn, the
    processor's text mode, `generate(generation_mode="text")` (greedy: the checkpoint samples no
    text), only the new tokens decoded."""
    inputs = processor(images=image, text=_caption_prompt(processor, instruction),
                       generation_mode="text", return_tensors="pt").to(model.device, model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens,
                                          generation_mode="text")
    return processor.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def caption_batch(model: Any, processor: Any, images: list[Any], instruction: str,
                  max_new_tokens: int, generate: Any = None) -> list[str]:
    """`caption`'s call for several images in one `generate`: the same prompt for each (576
    image tokens each, so no prompt is padded)."""
    prompt = _caption_prompt(processor, instruction)
    inputs = processor(images=images, text=[prompt] * len(images), generation_mode="text",
                       padding=True, return_tensors="pt").to(model.device, model.dtype)
    tokens = (generate or model.generate)(**inputs, max_new_tokens=max_new_tokens,
                                          generation_mode="text")
    return processor.batch_decode(tokens[:, inputs["input_ids"].shape[1]:],
                                  skip_special_tokens=True)


# -- image mode: the generator -----------------------------------------------------------------
def image_tokens(model: Any) -> int:
    """How many tokens make an image (576: a 24x24 grid), one forward pass each."""
    return model.model.vision_model.config.num_image_tokens


def draw(model: Any, processor: Any, prompt: str, guidance: float,
         on_token: Callable[[int, int], None] = lambda done, total: None,
         generation_config: Any = None) -> Any:
    """transformers' documented call: the prompt as the user turn, the processor's image mode,
    `generate(generation_mode="image", do_sample=True)` at `guidance`, the tokens decoded to a
    PIL image. `on_token(done, total)` after every image token (raising in it abandons the
    image); `generation_config`: the checkpoint's as loaded (a shared model's is the captioner's
    after it turned sampling off). Samples from the device's global random stream."""
    from transformers import LogitsProcessor, LogitsProcessorList

    total = image_tokens(model)

    class Progress(LogitsProcessor):
        done = 0

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.done += 1
            on_token(self.done, total)
            return scores

    conversation = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=text, generation_mode="image", return_tensors="pt").to(model.device)
    # generate sizes its static cache to the longest it has made on this model (kept to spare a
    # recompile): forgotten, so that an image depends on its own prompt alone, as a fresh
    # model's plain call does.
    model.__dict__.pop("_previous_max_cache_length", None)
    arguments: dict[str, Any] = {"do_sample": True, "guidance_scale": guidance,
                                 "use_cache": True}
    if generation_config is not None:
        import copy

        generation_config = copy.deepcopy(generation_config)
        generation_config.update(**arguments)
        arguments = {"generation_config": generation_config}
    tokens = model.generate(**inputs, generation_mode="image",
                            logits_processor=LogitsProcessorList([Progress()]), **arguments)
    return to_picture(processor, model.decode_image_tokens(tokens))[0]


def to_picture(processor: Any, decoded: Any) -> list[Any]:
    """The VQ decoder's output as PIL images: the processor's `postprocess` (undo the
    normalisation, rescale, clip to uint8), then torchvision's to_pil_image, which is what
    postprocess(return_tensors="PIL.Image.Image") makes, as transformers documents the call;
    that argument fails in transformers 5.25's torchvision image processor (its BatchFeature
    takes no such tensor type), so the last step is made here."""
    from torchvision.transforms.v2.functional import to_pil_image

    pixels = processor.postprocess(list(decoded.float()))["pixel_values"]
    return [to_pil_image(image) for image in pixels]


@contextmanager
def drawing_from(generator: Any, device: Any) -> Iterator[None]:
    """For the call, the global random stream of `device` (the one torch.multinomial draws from
    when given no generator, as transformers' image mode does) is `generator`'s: it starts at
    the generator's state, and the generator ends where the draws left it (a shared stream
    moves on). The global stream is put back as it was."""
    import torch

    device = torch.device(device)
    on_cuda = device.type == "cuda"
    index = device.index if device.index is not None else (
        torch.cuda.current_device() if on_cuda else None)
    with torch.random.fork_rng(devices=[index] if on_cuda else []):
        if on_cuda:
            torch.cuda.set_rng_state(generator.get_state(), index)
        elif device.type == "cpu":
            torch.set_rng_state(generator.get_state())
        else:  # mps: another kind of stream; seeded from the run's
            torch.mps.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        try:
            yield
        finally:
            if on_cuda:
                generator.set_state(torch.cuda.get_rng_state(index))
            elif device.type == "cpu":
                generator.set_state(torch.get_rng_state())


# -- the tiny checkpoint and the full-size one ---------------------------------------------------
def _tokenizer(words: list[str], size: int) -> Any:
    """A DeepSeek-style tokenizer built offline: byte-level BPE trained on `words` (each word
    also one token with its leading space) up to `size` pieces, DeepSeek's begin/end/padding
    tokens (the begin token before every text, as the real one adds it) and Janus' three image
    tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[BOS, EOS, PAD, *IMAGE_TOKENS.values()])
    bpe.train_from_iterator([" " + word for word in words] + words, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bpe.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, padding_side="left",
                                   extra_special_tokens=dict(IMAGE_TOKENS))


def _processor(tokenizer: Any, vision: dict) -> Any:
    from transformers import JanusImageProcessor, JanusProcessor

    side = vision["image_size"]
    # The real processor_config.json asks for DeepSeek's default system prompt in text mode.
    return JanusProcessor(image_processor=JanusImageProcessor(
        **_IMAGES, size={"height": side, "width": side}), tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE, use_default_system_prompt=True,
        num_image_tokens=vision["num_image_tokens"])


def _config(text: dict, vision: dict, vq: dict, tokenizer: Any) -> Any:
    from transformers import JanusConfig

    ids = tokenizer.convert_tokens_to_ids
    text = dict(text, bos_token_id=ids(BOS), eos_token_id=ids(EOS), pad_token_id=ids(PAD))
    # The output layer is the text model's own, not its input embeddings (DeepSeek-LLM's).
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=ids(IMAGE_TOKENS["image_token"]),
                       tie_word_embeddings=False)


def _generation_config(model: Any, tokenizer: Any) -> None:
    """What the conversion writes into generation_config.json: temperature 1 and guidance 5 for
    the image mode, the padding of the unconditional row, the token that opens an image."""
    generation = model.generation_config
    generation._from_model_config = False
    generation.temperature = 1
    generation.guidance_scale = GUIDANCE
    generation.pad_token_id = tokenizer.convert_tokens_to_ids(PAD)
    generation.generation_kwargs = {
        "boi_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["boi_token"])}


def build_tiny(out: Path) -> None:
    """Janus-Pro's shape shrunk: a 2-layer Llama of width 32, a 2-layer SigLIP reading 64x64
    images as 16 patches of 16, a 512-code VQ book on a 4x4 grid decoded to 64x64 through
    Janus-Pro's four upsamplings (one resnet block a level, 32 channels: GroupNorm's 32 groups).
    An image is 16 tokens (the real 576 take a busy 2-core CPU seconds to tens of seconds)."""
    import torch
    from transformers import JanusForConditionalGeneration

    from truthloop.ml.families.building import only_words_speakable, widen_to_follow_the_image
    from truthloop.ml.tiny import _TINY_WORDS

    words = sorted(set(_TINY_WORDS))
    tokenizer = _tokenizer(words, 4096)
    vocab_size = -(-len(tokenizer) // 64) * 64
    text = dict(_TEXT, vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                max_position_embeddings=2048)
    vision = dict(_VISION, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  mlp_ratio=2.0, projection_dim=32, image_size=64, num_image_tokens=16)
    vq = dict(_VQ, num_embeddings=512, projection_dim=32, image_token_embed_dim=32,
              latent_channels=32, base_channels=32, channel_multiplier=[1, 1, 1, 1, 1],
              num_res_blocks=1)
    config = _config(text, vision, vq, tokenizer)
    model = JanusForConditionalGeneration(config)
    vqmodel = model.model.vqmodel
    kept = {name: parameter.clone() for name, parameter in vqmodel.named_parameters()}
    widen_to_follow_the_image(model)
    with torch.no_grad():  # the VQ decoder at its own scale: a picture, not saturated colour
        for name, parameter in vqmodel.named_parameters():
            parameter.copy_(kept[name])
    speakable = [tokenizer.convert_tokens_to_ids("\u0120" + word) for word in words]
    only_words_speakable(model, vocab_size, speakable)
    _generation_config(model, tokenizer)
    model.save_pretrained(out)
    _processor(tokenizer, vision).save_pretrained(out)


def full_size(device: str, dtype: Any) -> tuple[Any, Any]:
    """Janus-Pro-1B with random weights on `device` (benchmarks). The tokenizer holds 100000
    pieces (English words from CLIP's BPE list) so prompts and captions come to about their real
    token counts."""
    from transformers import JanusForConditionalGeneration

    from truthloop.ml.families.building import clip_words, made_then_cast

    tokenizer = _tokenizer(clip_words(), 100000)
    config = _config(_TEXT, _VISION, _VQ, tokenizer)
    model = made_then_cast(JanusForConditionalGeneration, config, device, dtype)
    _generation_config(model, tokenizer)
    return model, _processor(tokenizer, _VISION)
