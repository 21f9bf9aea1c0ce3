"""BLIP captions without HF ``generate``: same tokens, a fraction of the per-token overhead.

clip-interrogator 0.6.0 captions with::

    inputs = processor(images=image, return_tensors="pt").to(device).to(dtype)
    tokens = model.generate(**inputs, max_new_tokens=n)
    caption = processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()

``BlipForConditionalGeneration.generate`` runs the vision model once, then
``text_decoder.generate`` greedily from ``[[bos]]`` (the [DEC] token) with eos = the SEP token, a
DynamicCache for self-attention and the image keys/values computed once and reused for
cross-attention. On a GPU almost all of the ~25 ms per token is Python: GenerationMixin, the
decorators and mask builders of every module, one host sync per token.

``FastCaptioner`` replays that greedy decode op for op on the model's own weights: the same
kernels, in the same order, on tensors of the same shapes, strides and dtypes (the self-attention
cache grows with ``torch.cat`` from an empty tensor, as DynamicLayer does), so the logits, and
with them the tokens, are bitwise the same. What it leaves out is only what is exactly neutral:

* the attention masks: for one unpadded sequence HF's causal mask is all zeros (of the scores'
  dtype) and its image mask is None; adding 0.0 changes no value (-0.0 becomes +0.0, and
  exp() makes no difference between them);
* dropout (the model must be in eval mode, else we fall back);
* the logits processors: we only run when the config builds none (see ``unsupported``).

Host syncs: on CUDA we look for the SEP token once every ``check_every`` tokens (the steps
decoded past it are thrown away; they cannot change the ones before). HF stops at the first SEP
or after max_new_tokens, and so do we.

Anything the fast path does not replicate exactly falls back to the HF call, so the caption is
always the reference one; ``reason`` says why the fallback was taken (None when fast).

On CUDA the second caption of a given max_new_tokens captures the whole decode (vision tower and
every step, no SEP checks in between) as one CUDA graph, and later captions replay it: the same
kernels on the same shapes, so the same tokens (tests/test_cuda_graphs.py, bench/).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

# Generation-config keys that cannot change a single greedy, unbatched decode (ids we override
# or that the decoder-only path never reads, bookkeeping, output flags that only matter with
# return_dict_in_generate, which we require off).
_IGNORED_KEYS = {
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "max_length",  # max_new_tokens is always passed and wins
    "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash",
    "low_memory", "disable_compile", "compile_config",  # compilation needs a static cache
    "early_stopping", "length_penalty",  # beam search only (num_beams is checked)
}
# Only read when do_sample is true.
_SAMPLING_KEYS = {
    "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
    "eta_cutoff",
}
# Values with which HF builds no logits processor / stopping criterion / other decode mode.
_NEUTRAL = {
    "do_sample": (None, False),
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "num_return_sequences": (None, 1),
    "use_cache": (None, True),
    "return_dict_in_generate": (None, False),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "guidance_scale": (None, 1.0),
    "diversity_penalty": (None, 0.0),
    "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False),
    "token_healing": (None, False),
    "is_assistant": (None, False),
    "penalty_alpha": (None, 0.0),
}


def _generation_config_problem(config: Any) -> str | None:
    """Why greedy decoding under this GenerationConfig is not what we replicate (None: it is)."""
    if config is None:
        return None
    try:
        from transformers import GenerationConfig

        defaults = GenerationConfig().to_dict()
    except Exception:  # pragma: no cover - very old/new transformers
        defaults = {}
    values = config.to_dict()
    sampling = bool(values.get("do_sample"))
    for key, value in values.items():
        if key in _IGNORED_KEYS or (key in _SAMPLING_KEYS and not sampling):
            continue
        if key in _NEUTRAL and value in _NEUTRAL[key]:
            continue
        if key in defaults and value == defaults[key]:
            continue
        return f"generation_config.{key}={value!r}"
    return None


class FastCaptioner:
    """``caption(image, max_new_tokens)`` == clip-interrogator's ``generate_caption`` string.

    ``FastCaptioner(ci.caption_model, ci.caption_processor, ci.device, ci.dtype)``.
    ``check_every``: tokens decoded between looks for the SEP token (each look is one host
    sync); default 8 on accelerators, 1 on CPU (where a look costs nothing).
    """

    def __init__(self, model: Any, processor: Any, device: Any, dtype: Any, *,
                 check_every: int | None = None, cuda_graphs: bool = True):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.check_every = check_every
        self.reason: str | None = None  # why the last caption used the HF path, if it did
        # On CUDA, from the second caption on, the whole decode (vision tower and every token
        # step) replays from one CUDA graph per max_new_tokens: see truthloop.ml.cudagraph.
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[int, Any] = {}

    # -- the reference -------------------------------------------------------------------

    def _inputs(self, image: Any) -> Any:
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        return inputs.to(self.dtype)

    def reference_ids(self, image: Any, max_new_tokens: int) -> torch.Tensor:
        """The HF call, exactly as clip-interrogator makes it."""
        return self.model.generate(**self._inputs(image), max_new_tokens=max_new_tokens)

    def _decode(self, tokens: torch.Tensor) -> str:
        return self.processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()

    # -- when to fall back ---------------------------------------------------------------

    def unsupported(self, inputs: Any, max_new_tokens: Any) -> str | None:
        """Why this call must go through HF generate (None: the fast path is exact)."""
        from transformers import BlipForConditionalGeneration
        from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel

        model = self.model
        if type(model) is not BlipForConditionalGeneration:
            return f"model is {type(model).__name__}"
        decoder = getattr(model, "text_decoder", None)
        if type(decoder) is not BlipTextLMHeadModel:
            return f"text_decoder is {type(decoder).__name__}"
        if model.training or decoder.training or model.vision_model.training:
            return "model in training mode (dropout)"
        if getattr(model, "hf_device_map", None) or any(
                hasattr(module, "_hf_hook") for module in model.modules()):
            return "accelerate hooks / device map"
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 1:
            return f"max_new_tokens={max_new_tokens!r}"
        keys = set(inputs.keys())
        if keys != {"pixel_values"}:
            return f"processor inputs {sorted(keys)}"
        pixel_values = inputs["pixel_values"]
        if pixel_values.dim() != 4 or pixel_values.shape[0] != 1:
            return f"pixel_values shape {tuple(pixel_values.shape)}"
        text = decoder.config
        if not text.is_decoder:
            return "text config is not a decoder"
        if getattr(text, "chunk_size_feed_forward", 0):
            return "chunk_size_feed_forward"
        if 1 + max_new_tokens > text.max_position_embeddings:
            return "max_new_tokens exceeds position embeddings"
        if text.bos_token_id is None:
            return "no bos_token_id"
        # generate() reads the decoder's config; the outer one is checked too, so that a
        # transformers version that merged it in would still be matched.
        for name, config in (("text_decoder", decoder.generation_config),
                             ("model", getattr(model, "generation_config", None))):
            problem = _generation_config_problem(config)
            if problem:
                return f"{name} {problem}"
        for module in (model, decoder, decoder.bert, decoder.cls):
            if module._forward_hooks or module._forward_pre_hooks:
                return f"forward hooks on {type(module).__name__}"
        return None

    # -- the fast path -------------------------------------------------------------------

    def caption(self, image: Any, max_new_tokens: int) -> str:
        inputs = self._inputs(image)
        self.reason = self.unsupported(inputs, max_new_tokens)
        if self.reason is not None:
            tokens = self.model.generate(**inputs, max_new_tokens=max_new_tokens)
        else:
            tokens = self.generate_ids(inputs["pixel_values"], max_new_tokens)
        return self._decode(tokens)

    def _graphed(self, max_new_tokens: int) -> Any:
        from truthloop.ml.cudagraph import CudaGraphed

        graphed = self._graphs.get(max_new_tokens)
        if graphed is None:
            graphed = CudaGraphed(lambda pixel_values: self._decode_steps(
                pixel_values, max_new_tokens, look_for_eos=False), name="blip",
                eager_first=False)
            self._graphs[max_new_tokens] = graphed
        return graphed

    @torch.no_grad()
    def generate_ids(self, pixel_values: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """[[bos, t1, ..., tk]] as ``model.generate`` returns it (call ``unsupported`` first)."""
        on_cuda = pixel_values.device.type == "cuda" and self.cuda_graphs
        if not on_cuda or max_new_tokens not in self._graphs:
            if on_cuda:
                self._graphed(max_new_tokens)  # the next caption of this length is replayed
            return self._decode_steps(pixel_values, max_new_tokens, look_for_eos=True)
        # Every step decoded, no host sync until the end; the steps past the first SEP are
        # thrown away (they cannot change the ones before), as with check_every below.
        tokens = self._graphed(max_new_tokens)(pixel_values)
        eos = self.model.text_decoder.config.sep_token_id
        if eos is not None:
            hits = (tokens[0, 1:] == eos).nonzero()
            if hits.numel():
                tokens = tokens[:, :int(hits[0, 0]) + 2]
        return tokens

    def _decode_steps(self, pixel_values: torch.Tensor, max_new_tokens: int,
                      look_for_eos: bool) -> torch.Tensor:
        model = self.model
        decoder = model.text_decoder
        text = decoder.config
        bert = decoder.bert
        emb = bert.embeddings
        head = decoder.cls.predictions
        layers = bert.encoder.layer
        n_heads = layers[0].attention.self.num_attention_heads
        head_size = layers[0].attention.self.attention_head_size
        scale = math.sqrt(head_size)
        eos = text.sep_token_id

        image_embeds = model.vision_model(pixel_values=pixel_values,
                                          interpolate_pos_encoding=False)[0]
        device = image_embeds.device
        dtype = image_embeds.dtype

        def heads(x: torch.Tensor) -> torch.Tensor:  # (1, L, H*d) -> (1, H, L, d), a view
            return x.view(*x.shape[:-1], -1, head_size).transpose(1, 2)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            scores = torch.matmul(q, k.transpose(-1, -2))
            scores = scores / scale
            probs = F.softmax(scores, dim=-1)
            context = torch.matmul(probs, v)
            context = context.permute(0, 2, 1, 3).contiguous()
            return context.view(*context.size()[:-2], n_heads * head_size)

        def linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, module.weight, module.bias)

        def norm(module: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)

        # Cross-attention keys/values: computed once, as HF's EncoderDecoderCache does, and
        # passed through the same cat-with-empty so layout and values match.
        empty = torch.empty(0, dtype=dtype, device=device)  # torch.tensor([]): same, no copy
        cross_kv = []
        for layer in layers:
            attn = layer.crossattention.self
            cross_kv.append((torch.cat([empty, heads(linear(attn.key, image_embeds))], dim=-2),
                             torch.cat([empty, heads(linear(attn.value, image_embeds))], dim=-2)))
        self_kv: list[list[torch.Tensor]] = [[empty, empty] for _ in layers]

        position_weight = emb.position_embeddings.weight
        word_weight = emb.word_embeddings.weight
        position_ids = emb.position_ids
        # One row per image (a lockstep batch decodes many; a single caption has one).
        token = torch.full((pixel_values.shape[0], 1), text.bos_token_id, dtype=torch.long,
                           device=device)
        generated = [token]
        check_every = self.check_every or (1 if device.type == "cpu" else 8)
        unchecked = 0
        stop_at = None
        for step in range(max_new_tokens):
            hidden = F.embedding(token, word_weight)
            hidden += F.embedding(position_ids[:, step:step + 1], position_weight)
            hidden = norm(emb.LayerNorm, hidden)
            for index, layer in enumerate(layers):
                # self-attention over the cache
                attn = layer.attention.self
                q = heads(linear(attn.query, hidden))
                cache = self_kv[index]
                cache[0] = torch.cat([cache[0], heads(linear(attn.key, hidden))], dim=-2)
                cache[1] = torch.cat([cache[1], heads(linear(attn.value, hidden))], dim=-2)
                out = layer.attention.output
                hidden = norm(out.LayerNorm, linear(out.dense, attend(q, cache[0], cache[1]))
                              + hidden)
                # cross-attention over the image
                attn = layer.crossattention.self
                q = heads(linear(attn.query, hidden))
                out = layer.crossattention.output
                hidden = norm(out.LayerNorm, linear(out.dense, attend(q, *cross_kv[index]))
                              + hidden)
                # feed-forward
                inner = layer.intermediate.intermediate_act_fn(
                    linear(layer.intermediate.dense, hidden))
                hidden = norm(layer.output.LayerNorm, linear(layer.output.dense, inner) + hidden)
            transform = head.transform
            x = norm(transform.LayerNorm, transform.transform_act_fn(
                linear(transform.dense, hidden)))
            logits = linear(head.decoder, x)
            # GenerationMixin: logits[:, -1] copied to float32, no processors, argmax
            scores = logits[:, -1].to(copy=True, dtype=torch.float32)
            token = torch.argmax(scores, dim=-1)[:, None]
            generated.append(token)
            if eos is None or not look_for_eos:
                continue
            unchecked += 1
            if unchecked == check_every or step == max_new_tokens - 1:
                recent = torch.cat(generated[-unchecked:], dim=1)[0]
                hits = (recent == eos).nonzero()
                if hits.numel():
                    stop_at = len(generated) - unchecked + int(hits[0, 0])
                    break
                unchecked = 0
        tokens = torch.cat(generated, dim=1)
        if stop_at is not None:
            tokens = tokens[:, :stop_at + 1]
        return tokens


def fast_generate_caption(ci: Any, image: Any, cuda_graphs: bool = True) -> str:
    """Drop-in for ``ci.generate_caption(image)`` (clip-interrogator 0.6.0's Interrogator)."""
    if ci.caption_model is None or ci.config.caption_model_name.startswith("git-"):
        return ci.generate_caption(image)
    ci._prepare_caption()  # offloading, as generate_caption does
    captioner = getattr(ci, "_truthloop_fast_captioner", None)
    if captioner is None or captioner.model is not ci.caption_model \
            or captioner.processor is not ci.caption_processor:
        captioner = FastCaptioner(ci.caption_model, ci.caption_processor, ci.device, ci.dtype,
                                  cuda_graphs=cuda_graphs)
        ci._truthloop_fast_captioner = captioner
    return captioner.caption(image, ci.config.caption_max_length)
