"""Attention kernels for the `best` chain's text encoder (fastci): open_clip's causal CLIP text
blocks run on suffix tokens that also attend to a prefix shared by every row, without copying the
prefix into each row. Pure torch; fastci decides when they apply (`supports_prefix`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def supports_prefix(model) -> bool:
    """Whether the model's text tower is open_clip's plain causal CLIP text transformer."""
    from open_clip.transformer import ResidualAttentionBlock

    try:
        blocks = model.transformer.resblocks
        mask = model.attn_mask
        if model.text_pool_type != "argmax" or mask is None or len(blocks) == 0:
            return False
        ctx = mask.shape[0]
        causal = torch.full((ctx, ctx), float("-inf")).triu_(1)
        if not torch.equal(mask.float().cpu(), causal):
            return False
        for block in blocks:
            attn = block.attn
            if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
                return False
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                return False
            if attn.bias_k is not None or attn.add_zero_attn:
                return False
        return isinstance(model.token_embedding, nn.Embedding)
    except AttributeError:
        return False


def qkv(block, x):
    attn = block.attn
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    b, length, width = h.shape
    split = lambda t: t.reshape(b, length, attn.num_heads, attn.head_dim).transpose(1, 2)
    return split(q), split(k), split(v)


def block_rest(block, x, o):
    """The block after attention: output projection, residuals and MLP (ResidualAttentionBlock)."""
    b, heads, length, head_dim = o.shape
    o = o.transpose(1, 2).reshape(b, length, heads * head_dim)
    o = F.linear(o, block.attn.out_proj.weight, block.attn.out_proj.bias)
    x = x + block.ls_1(o)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(block, x, kv):
    """A ResidualAttentionBlock on suffix tokens that also attend to a cached prefix."""
    q, k, v = qkv(block, x)
    if kv is None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        o = prefix_then_causal_attention(q, k, v, *kv)
    return block_rest(block, x, o)


def prefix_then_causal_attention(q, k, v, prefix_k, prefix_v, present=None):
    """Attention of suffix queries q (rows, heads, width, head_dim) to a prefix shared by all
    rows (prefix_k/v: (1, heads, P, head_dim), only the keys where `present` is true, if given)
    followed by their own keys k, v under a causal mask: the softmax over the joined keys,
    computed as two attentions merged by their log-sum-exps. Joining the keys instead (the
    prefix copied into every row, then one attention over them) took over half of `best`'s
    GPU time on an H200, the copy alone 30% (bench/, --profile-best)."""
    rows, heads, width, head_dim = q.shape
    # Every row's queries against the one prefix: a single batch of rows * width queries.
    flat = q.transpose(0, 1).reshape(1, heads, rows * width, head_dim)
    out_p, lse_p = attention_lse(flat, prefix_k, prefix_v, present, causal=False)
    out_p = out_p[0].unflatten(1, (rows, width)).transpose(0, 1)
    lse_p = lse_p[0].unflatten(1, (rows, width)).transpose(0, 1)
    out_s, lse_s = attention_lse(q, k, v, None, causal=True)
    # softmax over both key sets = the two softmaxes weighted by their shares of the total
    # exp-sum: exp(lse_p) / (exp(lse_p) + exp(lse_s)) = sigmoid(lse_p - lse_s).
    share = torch.sigmoid(lse_p - lse_s).to(out_s.dtype)[..., None]
    return torch.lerp(out_s, out_p.to(out_s.dtype), share)


# PyTorch's memory-efficient attention kernel returns each query's log-sum-exp, which the public
# scaled_dot_product_attention does not. It is a private op (the one that function calls for
# this kernel), so a failure turns it off for the process and plain float32 math takes over.
_EFFICIENT_LSE = True


def attention_lse(q, k, v, present=None, causal=False):
    """softmax(q k^T / sqrt(head_dim)) v over the keys where `present` (keys,) is true (and
    causally, if asked), and each query's log-sum-exp of its scores (float32). At least one key
    must be present for every query (every CLIP text starts with its start token)."""
    global _EFFICIENT_LSE
    if q.is_cuda and _EFFICIENT_LSE:
        try:
            return _efficientattention_lse(q, k, v, present, causal)
        except RuntimeError:  # a card or build without this kernel
            _EFFICIENT_LSE = False
    length = q.shape[2]
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if present is not None:
        scores = scores.masked_fill(~present, float("-inf"))
    if causal:
        keep = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = (torch.exp(scores - lse[..., None]) @ v.float()).to(q.dtype)
    return out, lse


def _efficientattention_lse(q, k, v, present, causal):
    length = q.shape[2]
    bias = None
    if present is not None:
        # An additive bias broadcast over rows, heads and queries (stride 0), its row padded
        # to 8 elements as scaled_dot_product_attention pads masks for this kernel.
        keys = present.shape[0]
        bias = torch.zeros(1, 1, 1, -(-keys // 8) * 8, dtype=q.dtype, device=q.device)
        bias[..., :keys].masked_fill_(~present, float("-inf"))
        bias = bias[..., :keys].expand(q.shape[0], q.shape[1], length, keys)
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, 0.0, causal)
    return out, lse[..., :length]
