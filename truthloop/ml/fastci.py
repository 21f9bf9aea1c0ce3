"""clip-interrogator 0.6.0's ranking, re-implemented to give the same strings much faster.

`FastInterrogator(ci)` wraps an already-built `clip_interrogator.Interrogator` and reuses its CLIP
model, tokenizer, preprocessing, label tables, config and caption model. Each mode returns the
string `ci.<mode>(image)` returns. Where the time went in the original, and what replaces it:

* `LabelTable._rank` re-stacked ~112k numpy rows and copied them to the device on every call.
  Here the tables are stacked once; the chunked top-k (keep `int(chunk_size / num_chunks)` per
  chunk, then rank the survivors *without* `reverse`, as the original does) is reproduced call for
  call, so the result still depends on `chunk_size` exactly as the original's does.
* `chain()` re-tokenised and re-encoded ~2048 strings "{prompt}, {phrase}" at 77 tokens per link.
  Here each phrase is tokenised once, the prompt's token ids are joined to it, and the text tower
  runs the shared prefix once (CLIP's text tower is causal, so the prefix's keys and values do not
  depend on what follows) and then only each candidate's tokens up to its end-of-text token (the
  pooled position; later tokens cannot reach it through a causal mask). Candidates whose token ids
  coincide (different case, truncation at 77) are encoded once.

Exactness. Everything that feeds a comparison between two prompts' similarities (`similarity`,
`similarities`, the table top-k's) is computed by the same calls on the same tensors as the
original, so those numbers are bit-identical. Only the argmax inside `rank_top` uses the faster
encoder, whose similarities differ from the original's by float rounding (~1e-7 in fp32). So on
CPU (fp32) its winner is accepted only when no other candidate lies within `tie_tol` of it and
no other candidate has the winner's very token ids (in the original's batch, identical rows can
differ in the last bit with their position, so such a tie is decided by BLAS blocking).
Otherwise that link is recomputed exactly as the original computes it, from the same token ids
(which are checked to equal the tokenizer's in the tests), and the original's argmax is taken.
Either way the chosen phrase is the original's.

Tie order. The original iterates a Python `set` of phrases, so equal scores are broken by set
order, which depends on the process's string-hash seed (PYTHONHASHSEED). Here the set is built from
the same list in the same way and receives the same removals, so it iterates in the same order in
the same process: the same result as `ci` here, though another process may break a tie differently
(as `ci` itself would).

On CUDA with fp16 weights everything runs under the same autocast as the original, but different
kernels round differently (fp16 similarities are coarse enough for exact ties to be common), so a
near-tie may go the other way; `tie_tol` is 1e-3 there, and with fp16's coarse steps that sends
many links back to the original's computation. Recomputing the whole batch for those would cost
what the original costs, so on the GPU only the near-tied candidates are recomputed, once this
process has checked that doing so gives the full batch's very numbers (`recheck`).
"""

from __future__ import annotations

import math
import re
from contextlib import nullcontext
from typing import Optional, Sequence

import ftfy
import numpy as np
import torch
import torch.nn.functional as F

from truthloop.ml.attention import (
    block_forward, block_rest, prefix_then_causal_attention, qkv, supports_prefix,
)
from ftfy.badness import is_bad
from torch import nn

from clip_interrogator.clip_interrogator import _prompt_at_max_len, _truncate_to_fit

# When are the ids of "{prompt}, {phrase}" those of "{prompt}," followed by those of "{phrase}"?
# open_clip cleans text with ftfy.fix_text, html.unescape (twice), whitespace folding and lower(),
# then splits it with a regex whose matches never contain whitespace, and BPE-encodes each match
# on its own. So the ids compose whenever cleaning the joined string cleans each side as it would
# alone. html.unescape acts entity by entity and no entity contains a space. ftfy fixes line by
# line (so: no line breaks); with each side left unchanged by ftfy, it leaves the joined string
# unchanged unless its mojibake detector fires on it: the detector's patterns are a few
# characters long and none spans a ", " (a test checks the ids over all labels), so it is enough
# that it fires neither on "{prompt}, " nor on ", {phrase}". Whitespace folding and lower() act
# locally (lower()'s one contextual rule, final sigma, stops at the comma and the space).
_PLAIN_ASCII = re.compile(r"[\x20-\x25\x27-\x3b\x3d-\x7e]*")  # no '&', '<': nothing to unescape


def _composable_phrase(phrase: str) -> bool:
    if _PLAIN_ASCII.fullmatch(phrase):
        return True
    return (phrase.isprintable() and ftfy.fix_text(phrase) == phrase
            and not is_bad(", " + phrase))


def _composable_prefix(prefix: str) -> bool:
    head = prefix + ","
    if _PLAIN_ASCII.fullmatch(head):
        return True
    return (head.isprintable() and ftfy.fix_text(head) == head and not is_bad(prefix + ", "))


# float32 rounding through the text tower moves a cosine similarity by ~1e-7; this leaves margin
# for larger fp32 models before a near-tie is trusted to the fast path.
# fp16 on the GPU: on an H200, 46/50 images matched clip-interrogator with no re-check and 50/50
# with near-ties (within 1e-3) re-checked exactly, which was also faster overall (bench/).
DEFAULT_GPU_TIE_TOL = 1e-3
DEFAULT_CPU_TIE_TOL = 1e-4


def _autocast(device_type: str, cache: bool = True):
    # The original wraps everything in torch.cuda.amp.autocast(), which only touches CUDA tensors.
    return torch.autocast("cuda", cache_enabled=cache) if device_type == "cuda" else nullcontext()


class _Table:
    """One label table: its labels and their embeddings stacked once on the device."""

    def __init__(self, labels: list[str], embeds: torch.Tensor, chunk_size):
        self.labels = labels
        self.embeds = embeds
        # A callable, so a chunk_size changed on the ci after construction is honoured as the
        # original honours it (its merged table reads ci.config at every call).
        self.chunk_size = chunk_size


class _Bank:
    """Token ids of one chain's phrases, padded into a matrix once per chain."""

    def __init__(self, phrases: Sequence[str], encode, composable):
        self.index = {}
        ids = []
        for phrase in phrases:
            if phrase not in self.index:
                self.index[phrase] = len(ids)
                ids.append(encode(phrase))
        self.lengths = np.array([len(i) for i in ids], dtype=np.int64)
        width = int(self.lengths.max()) if ids else 0
        self.ids = np.zeros((len(ids), width), dtype=np.int64)
        for row, i in enumerate(ids):
            self.ids[row, :len(i)] = i
        self.composable = np.array([composable(p) for p in self.index], dtype=bool)


class FastInterrogator:
    def __init__(self, ci, tie_tol: Optional[float] = None, batch_size: Optional[int] = None,
                 cuda_graphs: bool = True, recheck: str = "auto", recheck_pad: int = 32,
                 recheck_verify: int = 3, fixed_shapes: Optional[bool] = None,
                 graph_recheck: bool = True, tables_from: Optional["FastInterrogator"] = None):
        """`tie_tol`: accept the fast encoder's winner in `rank_top` only if every other candidate
        scores more than this below it, else recompute that link as the original does. Default:
        1e-4 on CPU, 1e-3 on the GPU (fp16).

        `recheck`: how a near-tie is recomputed the original's way. "full": the original's whole
        batch (bitwise its numbers, ~the original's cost). "subset": only the near-tied
        candidates, padded to a multiple of `recheck_pad` rows; the kernels compute each row on
        its own, so its numbers are the full batch's as long as the GEMMs pick kernels that
        reduce in the same order for both row counts. So the first `recheck_verify` near-ties are
        computed both ways and must agree bit for bit on every near-tied candidate, else it
        stays on full for good. "auto": subset on CUDA, full elsewhere. On an H200 (fp16) the
        subset's numbers were bit-equal to the full batch's for 16/16 near-ties with padding to
        8, 32, 64, 128 or 256 rows, and 10/16 unpadded (bench/, --profile-best): 32 it is.
        `cuda_graphs`: the original's one-prompt similarity (a fixed (1, 77) shape, called once
        per chain link) and the image encoder replay from CUDA graphs: the same kernels, so the
        same numbers.
        `fixed_shapes` (default: with CUDA graphs): the chain's fast text encoder runs at a few
        fixed shapes (the prefix padded to the context length behind a key mask, suffixes
        padded to length buckets, rows to multiples of 256), so that each shape's pass is
        captured once and replayed on every later link; eagerly, every link had new shapes and
        the host, not the GPU, set the pace. Its scores are as approximate as the variable-shape
        encoder's (near-ties are re-checked the original's way either way).
        `graph_recheck`: the subset re-check's encode_text, at its padded shapes, replays from
        CUDA graphs too; the verification above compares those replayed numbers with the full
        batch's. On an H200 it took `best` from 0.171 to 0.141 s per image, the same string on
        50/50 images and no verification mismatch (bench/ --part best).
        `tables_from`: share that interrogator's label tables and token caches (`sibling`).
        """
        self._init_args = dict(tie_tol=tie_tol, batch_size=batch_size, cuda_graphs=cuda_graphs,
                               recheck=recheck, recheck_pad=recheck_pad,
                               recheck_verify=recheck_verify, fixed_shapes=fixed_shapes,
                               graph_recheck=graph_recheck)
        self.ci = ci
        self.device = torch.device(ci.device)
        self.tie_tol = (DEFAULT_CPU_TIE_TOL if self.device.type == "cpu" else DEFAULT_GPU_TIE_TOL) \
            if tie_tol is None else float(tie_tol)
        self.batch_size = batch_size or (512 if self.device.type == "cpu" else 2048)
        if recheck not in ("auto", "full", "subset"):
            raise ValueError(f"recheck={recheck!r}")
        if recheck == "auto":
            # On the CPU the near-ties are rare and a full recheck is cheap next to the rest.
            recheck = "subset" if self.device.type == "cuda" else "full"
        self.recheck = recheck
        self.recheck_pad = max(1, int(recheck_pad))
        self._recheck_verify_left = int(recheck_verify) if recheck == "subset" else 0
        # fallbacks: links recomputed the original way because of a near-tie; of those,
        # subset_checks were also computed both ways, subset_mismatches disagreed.
        self.stats = {"links": 0, "fallbacks": 0, "subset_checks": 0, "subset_mismatches": 0}
        from truthloop.ml.cudagraph import CudaGraphed

        self._text_similarity = CudaGraphed(self._text_similarity_eager, name="clip-text")
        self._image_features = CudaGraphed(self._image_features_eager, name="clip-image")
        # The fixed-shape passes share one memory pool: they run one after another and their
        # outputs are copied out at once, so they never need their buffers at the same time.
        self._prefix_pass = CudaGraphed(self._prefix_pass_eager, name="clip-prefix",
                                        shared_pool=True)
        self._suffix_pass = CudaGraphed(self._suffix_pass_eager, name="clip-suffix",
                                        shared_pool=True)
        self._subset_similarity = CudaGraphed(self._text_similarity_eager, name="clip-recheck",
                                              shared_pool=True)
        for graphed in (self._text_similarity, self._image_features, self._prefix_pass,
                        self._suffix_pass):
            graphed.enabled = bool(cuda_graphs)
        self._subset_similarity.enabled = bool(cuda_graphs) and graph_recheck


        from open_clip.tokenizer import SimpleTokenizer, _clean_lower

        tok = ci.tokenize
        self._simple_tok = (isinstance(tok, SimpleTokenizer) and tok.reduction_fn is None
                            and tok.clean_fn is _clean_lower)
        self._chosen: Optional[tuple[str, np.ndarray]] = None  # the last rank_top's pick, ids
        self._survivor_memo = None
        self._prefix_ok = supports_prefix(ci.clip_model)
        self._pass_cost = _pass_cost_in_tokens(ci.clip_model, self.device.type)
        if fixed_shapes is None:
            fixed_shapes = bool(cuda_graphs) and self.device.type == "cuda"
        self.fixed_shapes = bool(fixed_shapes) and self._prefix_ok
        if tables_from is not None:
            # Read-only tables; the caches only ever gain the same value for a key.
            self._ids_cache = tables_from._ids_cache
            self._composable = tables_from._composable
            for name in ("merged", "artists", "flavors", "mediums", "movements", "trendings",
                         "negative"):
                setattr(self, name, getattr(tables_from, name))
            return
        self._ids_cache: dict[str, list[int]] = {}
        self._composable: dict[str, bool] = {}

        config = ci.config
        tables = [ci.artists, ci.flavors, ci.mediums, ci.movements, ci.trendings]
        stacks = [self._stack(t.embeds) for t in tables]
        # One copy for the merged table (fast/best modes); the single tables are views into it.
        merged = torch.cat(stacks).to(self.device)
        self.merged = _Table([label for t in tables for label in t.labels], merged,
                             lambda: config.chunk_size)
        start = 0
        views = []
        for t, s in zip(tables, stacks):
            views.append(_Table(t.labels, merged[start:start + len(s)],
                                (lambda t=t: t.chunk_size)))
            start += len(s)
        self.artists, self.flavors, self.mediums, self.movements, self.trendings = views
        self.negative = _Table(ci.negative.labels, self._stack(ci.negative.embeds).to(self.device),
                               lambda: ci.negative.chunk_size)

    def sibling(self) -> "FastInterrogator":
        """Another interrogator like this one, to rank other images in another thread: the same
        label tables and token caches, its own CUDA graphs (their buffers are per call) and its
        own per-call state. It computes what this one computes."""
        return FastInterrogator(self.ci, **self._init_args, tables_from=self)

    @staticmethod
    def _stack(embeds) -> torch.Tensor:
        # Same values and dtype as the original's per-call torch.stack (fp32 on CPU, fp16 else).
        return torch.stack([torch.from_numpy(np.asarray(e)) for e in embeds])

    def pretokenize(self) -> None:
        """Tokenise every label now (a few seconds) rather than as chains first meet them."""
        for table in (self.merged, self.negative):
            for label in table.labels:
                self._encode_cached(label)
                self._composable_cached(label)

    # ---------------------------------------------------------------- public modes

    def image_features(self, image) -> torch.Tensor:
        return self.pixel_features(self.preprocess(image))

    def preprocess(self, image) -> torch.Tensor:
        """CLIP's preprocessing of one image (CPU work; Pillow lets other threads run)."""
        self.ci._prepare_clip()
        return self.ci.clip_preprocess(image)

    def pixel_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """image_features of an image already preprocessed, (1, dim)."""
        with torch.no_grad():
            return self._image_features(pixels.unsqueeze(0).to(self.device))

    def _image_features_eager(self, images):
        # image_to_features' own computation (cast cache off: see _text_similarity_eager).
        with torch.no_grad(), _autocast(self.device.type, cache=False):
            features = self.ci.clip_model.encode_image(images)
            features /= features.norm(dim=-1, keepdim=True)
            return features

    def interrogate(self, image, caption: Optional[str] = None, *, min_flavors: int = 8,
                    max_flavors: int = 32, features: Optional[torch.Tensor] = None) -> str:
        """`features`: this image's image_features, if already computed (the same numbers)."""
        caption = caption or self.ci.generate_caption(image)
        if features is None:
            features = self.image_features(image)
        flaves = self._rank(self.merged, features, self.ci.config.flavor_intermediate_count)
        best_prompt, best_sim = caption, self._similarity(features, caption)
        best_prompt = self._chain(features, flaves, best_prompt, best_sim, min_count=min_flavors,
                                  max_count=max_flavors)
        # The original recomputes the same image features inside these two; they are
        # deterministic, so reusing them changes nothing. It passes max_flavors (32) to classic.
        fast_prompt = self._fast(image, features, max_flavors, caption)
        classic_prompt = self._classic(image, features, max_flavors, caption)
        candidates = [caption, classic_prompt, fast_prompt, best_prompt]
        return candidates[np.argmax(self._similarities(features, candidates))]

    def interrogate_fast(self, image, caption: Optional[str] = None, *,
                         max_flavors: int = 32, features: Optional[torch.Tensor] = None) -> str:
        return self._fast(image, features, max_flavors, caption)

    def interrogate_classic(self, image, caption: Optional[str] = None, *,
                            max_flavors: int = 3, features: Optional[torch.Tensor] = None) -> str:
        return self._classic(image, features, max_flavors, caption)

    def interrogate_negative(self, image, *, max_flavors: int = 32) -> str:
        features = self.image_features(image)
        flaves = self._rank(self.flavors, features, self.ci.config.flavor_intermediate_count,
                            reverse=True)
        flaves = flaves + self.negative.labels
        return self._chain(features, flaves, max_count=max_flavors, reverse=True)

    # ---------------------------------------------------------------- modes' bodies

    def _fast(self, image, features, max_flavors, caption):
        caption = caption or self.ci.generate_caption(image)
        if features is None:
            features = self.image_features(image)
        tops = self._rank(self.merged, features, max_flavors)
        return _truncate_to_fit(caption + ", " + ", ".join(tops), self.ci.tokenize)

    def _classic(self, image, features, max_flavors, caption):
        caption = caption or self.ci.generate_caption(image)
        if features is None:
            features = self.image_features(image)
        medium = self._rank(self.mediums, features, 1)[0]
        artist = self._rank(self.artists, features, 1)[0]
        trending = self._rank(self.trendings, features, 1)[0]
        movement = self._rank(self.movements, features, 1)[0]
        flaves = ", ".join(self._rank(self.flavors, features, max_flavors))
        if caption.startswith(medium):
            prompt = f"{caption} {artist}, {trending}, {movement}, {flaves}"
        else:
            prompt = f"{caption}, {medium} {artist}, {trending}, {movement}, {flaves}"
        return _truncate_to_fit(prompt, self.ci.tokenize)

    def _chain(self, features, phrases, best_prompt: str = "", best_sim: float = 0,
               min_count: int = 8, max_count: int = 32, reverse: bool = False) -> str:
        # Statement for statement the original's chain(), so the set sees the same insertions
        # and removals and iterates in the same order; only rank_top is replaced.
        self.ci._prepare_clip()
        phrases = set(phrases)
        bank = self._bank(list(phrases))
        if not best_prompt:
            best_prompt = self._rank_top(features, None, [f for f in phrases], bank, reverse)
            best_sim = self._similarity(features, best_prompt)
            phrases.remove(best_prompt)
        curr_prompt, curr_sim = best_prompt, best_sim

        def check(addition: str, idx: int) -> bool:
            nonlocal best_prompt, best_sim, curr_prompt, curr_sim
            prompt = curr_prompt + ", " + addition
            sim = self._similarity(features, prompt)
            if reverse:
                sim = -sim
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            if sim > curr_sim or idx < min_count:
                curr_prompt, curr_sim = prompt, sim
                return True
            return False

        for idx in range(max_count):
            flave = self._rank_top(features, curr_prompt, [f for f in phrases], bank, reverse)
            if not check(flave, idx):
                break
            if self._at_max_len(curr_prompt):
                break
            phrases.remove(flave)
        return best_prompt

    # ---------------------------------------------------------------- label tables

    def _rank(self, table: _Table, features, top_count: int = 1, reverse: bool = False):
        labels, embeds = table.labels, table.embeds
        if len(labels) <= table.chunk_size():
            return [labels[i] for i in self._topk(features, embeds, top_count, reverse)]
        survivors = self._survivors(table, features, reverse)
        picked = embeds[torch.tensor(survivors, dtype=torch.long, device=embeds.device)]
        # The original's final re-rank of the survivors ignores `reverse`.
        return [labels[survivors[i]] for i in self._topk(features, picked, top_count, False)]

    def _survivors(self, table: _Table, features, reverse: bool) -> list[int]:
        """Indices kept by the per-chunk top-k, which does not depend on top_count: `best` ranks
        the merged table twice (2048, then 32 for its fast prompt) on the same features."""
        labels, embeds, chunk_size = table.labels, table.embeds, table.chunk_size()
        key = (id(table), features._version, reverse, chunk_size)
        if self._survivor_memo is not None and self._survivor_memo[0] is features \
                and self._survivor_memo[1] == key:
            return self._survivor_memo[2]

        num_chunks = int(math.ceil(len(labels) / chunk_size))
        keep_per_chunk = int(chunk_size / num_chunks)
        survivors: list[int] = []
        if self.device.type == "cpu":
            # One small matmul per chunk, on a tensor laid out as the original's fresh stack:
            # the same BLAS call on the same bytes, hence the same similarities and tie order.
            for chunk_idx in range(num_chunks):
                start = chunk_idx * chunk_size
                stop = min(start + chunk_size, len(labels))
                tops = self._topk(features, _aligned(embeds[start:stop]), keep_per_chunk, reverse)
                survivors.extend(start + i for i in tops)
        else:
            # One matmul for all chunks; per-chunk top-k on the host as the original does it.
            with torch.no_grad(), _autocast(self.device.type):
                similarity = features @ embeds.T
                if reverse:
                    similarity = -similarity
            survivors = _chunked_topk(similarity.float().cpu()[0], chunk_size, keep_per_chunk)
        self._survivor_memo = (features, key, survivors)
        return survivors

    def _topk(self, features, embeds, top_count, reverse) -> list[int]:
        # LabelTable._rank, minus the re-stacking.
        top_count = min(top_count, len(embeds))
        with torch.no_grad(), _autocast(self.device.type):
            similarity = features @ embeds.T
            if reverse:
                similarity = -similarity
        _, top_labels = similarity.float().cpu().topk(top_count, dim=-1)
        return top_labels[0].tolist()

    # ---------------------------------------------------------------- the original's text calls

    def _text_similarity_eager(self, tokens, features):
        # similarity()/similarities()' own computation. Autocast's cast cache is off so that a
        # CUDA graph can capture this; it only saves re-casting, the values are the same.
        with torch.no_grad(), _autocast(self.device.type, cache=False):
            text_features = self.ci.clip_model.encode_text(tokens)
            text_features /= text_features.norm(dim=-1, keepdim=True)
            return text_features @ features.T

    def _similarity(self, features, text: str) -> float:
        self.ci._prepare_clip()
        ids = self._chosen_ids(text)
        tokens = (self.ci.tokenize([text]) if ids is None
                  else torch.from_numpy(np.ascontiguousarray(ids[None]))).to(self.device)
        with torch.no_grad():
            similarity = self._text_similarity(tokens, features)
        return similarity[0][0].item()

    def _similarities(self, features, texts: list[str]) -> list[float]:
        self.ci._prepare_clip()
        tokens = self.ci.tokenize(list(texts)).to(self.device)
        with torch.no_grad():
            similarity = self._text_similarity(tokens, features)
        return similarity.T[0].tolist()

    def _exact_scores(self, features, rows: np.ndarray, reverse: bool,
                      compute=None) -> torch.Tensor:
        """rank_top's own computation on the same ids ci.tokenize gives (the tokenising
        skipped): similarity()'s, negated when reversed (a sign flip is exact)."""
        tokens = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
        with torch.no_grad():
            similarity = (compute or self._text_similarity_eager)(tokens, features)[:, 0]
        return -similarity if reverse else similarity

    def _rank_top_exact(self, features, rows: np.ndarray, near: np.ndarray,
                        reverse: bool) -> int:
        """The original's argmax over `rows`, given that it lies among the indices `near`
        (ascending)."""
        if self.recheck == "full":
            # The same batch as the original's, so the same floats and the same argmax.
            return int(self._exact_scores(features, rows, reverse).argmax().item())
        pad = -len(near) % self.recheck_pad
        subset = rows[np.concatenate([near, np.full(pad, near[-1])])]
        scores = self._exact_scores(features, subset, reverse,
                                    self._subset_similarity)[:len(near)]
        if self._recheck_verify_left > 0:
            self._recheck_verify_left -= 1
            self.stats["subset_checks"] += 1
            full = self._exact_scores(features, rows, reverse)
            if not torch.equal(full[torch.from_numpy(near).to(self.device)], scores):
                self.stats["subset_mismatches"] += 1
                self.recheck = "full"  # this machine's kernels depend on the row count
                self._recheck_verify_left = 0
                return int(full.argmax().item())
        # near is ascending, so argmax's first-of-equals is the original's first-of-equals.
        return int(near[int(scores.argmax().item())])

    # ---------------------------------------------------------------- rank_top

    def _rank_top(self, features, prefix: Optional[str], phrases: list[str], bank: _Bank,
                  reverse: bool) -> str:
        """The phrase whose candidate ("{prefix}, {phrase}", or the bare phrase when prefix is
        None) the original's rank_top would return."""
        self.stats["links"] += 1
        rows = self._token_rows(prefix, phrases, bank)
        index = self._rank_top_index(features, rows, reverse)
        # The chain's next steps tokenise this very candidate (its similarity, its length):
        # keep its ids, which are exactly ci.tokenize's (see _token_rows).
        text = phrases[index] if prefix is None else f"{prefix}, {phrases[index]}"
        self._chosen = (text, rows[index])
        return phrases[index]

    def _chosen_ids(self, text: str) -> Optional[np.ndarray]:
        chosen = self._chosen
        return chosen[1] if chosen is not None and chosen[0] == text else None

    def _at_max_len(self, text: str) -> bool:
        """clip-interrogator's _prompt_at_max_len (the last of the 77 ids is not padding)."""
        ids = self._chosen_ids(text)
        if ids is None:
            return _prompt_at_max_len(text, self.ci.tokenize)
        return bool(ids[-1] != 0)

    def _rank_top_index(self, features, rows: np.ndarray, reverse: bool) -> int:
        if len(rows) == 1:
            return 0
        unique, first, counts, inverse = _unique_rows(rows)
        if len(unique) > 1:
            with torch.no_grad(), _autocast(self.device.type):
                text_features = self._encode_rows(unique)
                text_features /= text_features.norm(dim=-1, keepdim=True)
                similarity = text_features @ features.T
                if reverse:
                    similarity = -similarity
            scores = similarity.float().cpu().numpy()[:, 0]
        else:
            scores = np.zeros(1, dtype=np.float32)
        # `unique` is in order of first appearance, so argmax's first-of-equals is the
        # original's first-of-equals, as far as equal ids give equal scores.
        best = int(np.argmax(scores))
        if self.tie_tol > 0:
            # They need not: in the original's batch, identical rows can differ in the last bit
            # with their position (BLAS blocking), so a winner shared by several candidates is a
            # tie too, decided only by the original's own computation.
            near = scores >= scores[best] - self.tie_tol
            if counts[near].sum() > 1:
                self.stats["fallbacks"] += 1
                candidates = np.flatnonzero(near[inverse])
                return self._rank_top_exact(features, rows, candidates, reverse)
        return int(first[best])

    def _bank(self, phrases: Sequence[str]) -> _Bank:
        return _Bank(phrases, self._encode_cached, self._composable_cached)

    def _composable_cached(self, phrase: str) -> bool:
        known = self._composable.get(phrase)
        if known is None:
            known = self._composable[phrase] = _composable_phrase(phrase)
        return known

    def _encode_cached(self, text: str) -> list[int]:
        ids = self._ids_cache.get(text)
        if ids is None:
            ids = self._ids_cache[text] = self.ci.tokenize.encode(text) if self._simple_tok else []
        return ids

    def _token_rows(self, prefix, phrases, bank: _Bank) -> np.ndarray:
        """The ids ci.tokenize gives the candidates, (n, context_length), from cached ids."""
        tok = self.ci.tokenize
        texts = phrases if prefix is None else [f"{prefix}, {f}" for f in phrases]
        if not self._simple_tok:
            return tok(texts).numpy()
        if prefix is None:
            head = [tok.sot_token_id]
        elif _composable_prefix(prefix):
            head = [tok.sot_token_id] + tok.encode(prefix + ",")
        else:
            return tok(texts).numpy()
        ctx, eot = tok.context_length, tok.eot_token_id
        sel = np.fromiter((bank.index[f] for f in phrases), dtype=np.int64, count=len(phrases))
        lengths = bank.lengths[sel]
        n, h, width = len(phrases), len(head), bank.ids.shape[1]
        rows = np.zeros((n, max(ctx, h + width + 1)), dtype=np.int64)
        rows[:, :h] = head
        rows[:, h:h + width] = bank.ids[sel]
        rows[np.arange(n), h + lengths] = eot
        # The tokenizer's truncation: keep context_length ids, the last one end-of-text.
        rows[h + lengths + 1 > ctx, ctx - 1] = eot
        rows = rows[:, :ctx]
        if prefix is not None:
            odd = np.flatnonzero(~bank.composable[sel])
            if len(odd):
                rows[odd] = tok([texts[i] for i in odd]).numpy()
        return rows

    # ---------------------------------------------------------------- text tower

    def _encode_rows(self, rows: np.ndarray) -> torch.Tensor:
        """encode_text of these token rows (context_length wide), computed once for their shared
        prefix and then only up to each row's pooled (end-of-text) position."""
        model = self.ci.clip_model
        if not self._prefix_ok:
            out = [model.encode_text(torch.from_numpy(rows[i:i + self.batch_size]).to(self.device))
                   for i in range(0, len(rows), self.batch_size)]
            return torch.cat(out)
        if self.fixed_shapes:
            return self._encode_rows_fixed(rows)

        pool, prefix_len = _pool_and_prefix(rows)
        prefix_kv = self._prefix_kv(rows[0, :prefix_len])
        suffix_len = pool - prefix_len + 1
        order = np.argsort(suffix_len, kind="stable")
        sorted_len = suffix_len[order]

        cast_dtype = model.transformer.get_cast_dtype()
        pieces, places = [], []
        for start, stop in _length_groups(sorted_len, self.batch_size, self._pass_cost):
            idx = order[start:stop]
            length = int(sorted_len[stop - 1])
            tokens = torch.from_numpy(rows[idx, prefix_len:prefix_len + length]).to(self.device)
            x = model.token_embedding(tokens).to(cast_dtype)
            x = x + model.positional_embedding[prefix_len:prefix_len + length].to(cast_dtype)
            for block, kv in zip(model.transformer.resblocks, prefix_kv):
                x = block_forward(block, x, kv)
            at = torch.from_numpy(pool[idx] - prefix_len).to(self.device)
            pieces.append(x[torch.arange(len(idx), device=self.device), at])
            places.append(idx)
        # ln_final acts on each position alone, so pooling before it changes nothing.
        return _projected(model, _in_row_order(pieces, places))

    # ---------------------------------------------------------------- the same, at fixed shapes

    SUFFIX_BUCKETS = (4, 8, 12, 16, 24, 32, 48, 64, 77)
    ROW_QUANTUM = 256

    def _encode_rows_fixed(self, rows: np.ndarray) -> torch.Tensor:
        """_encode_rows through passes of a few fixed shapes (see `fixed_shapes`)."""
        ctx = rows.shape[1]
        pool, prefix_len = _pool_and_prefix(rows)
        prefix = np.zeros((1, ctx), dtype=np.int64)
        prefix[0, :prefix_len] = rows[0, :prefix_len]
        kv = self._prefix_pass(torch.from_numpy(prefix).to(self.device))
        length_tensor = torch.tensor(prefix_len, dtype=torch.int64).to(self.device)
        suffix_len = pool - prefix_len + 1
        order = np.argsort(suffix_len, kind="stable")
        sorted_len = suffix_len[order]
        buckets = tuple(b for b in self.SUFFIX_BUCKETS if b < ctx) + (ctx,)
        pieces, places = [], []
        for start, stop, width in _bucket_groups(sorted_len, buckets, self.ROW_QUANTUM,
                                                 self.batch_size, self._pass_cost):
            idx = order[start:stop]
            count = len(idx)
            padded = -(-count // self.ROW_QUANTUM) * self.ROW_QUANTUM
            tokens = np.zeros((padded, width), dtype=np.int64)
            present = rows[idx, prefix_len:prefix_len + width]
            tokens[:count, :present.shape[1]] = present
            at = np.zeros(padded, dtype=np.int64)
            at[:count] = pool[idx] - prefix_len
            out = self._suffix_pass(kv, torch.from_numpy(tokens).to(self.device), length_tensor,
                                    torch.from_numpy(at).to(self.device))
            pieces.append(out[:count])
            places.append(idx)
        return _in_row_order(pieces, places)

    def _prefix_pass_eager(self, tokens: torch.Tensor) -> torch.Tensor:
        """Keys and values of every layer for a (1, length) row, (layers, 2, heads, length,
        head_dim). The causal mask keeps the first P positions' keys and values independent of
        any padding after them."""
        model = self.ci.clip_model
        blocks = model.transformer.resblocks
        cast_dtype = model.transformer.get_cast_dtype()
        with torch.no_grad(), _autocast(self.device.type, cache=False):
            x = model.token_embedding(tokens).to(cast_dtype)
            x = x + model.positional_embedding[:tokens.shape[1]].to(cast_dtype)
            kvs = []
            for index, block in enumerate(blocks):
                q, k, v = qkv(block, x)
                kvs.append(torch.stack([k[0], v[0]]))
                if index < len(blocks) - 1:  # the last layer's prefix outputs are never read
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    x = block_rest(block, x, o)
            return torch.stack(kvs)

    def _suffix_pass_eager(self, kv: torch.Tensor, tokens: torch.Tensor,
                           prefix_len: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Pooled, projected text features of suffix rows (rows, width) that attend to the first
        `prefix_len` positions of the prefix in `kv` and causally to themselves."""
        model = self.ci.clip_model
        cast_dtype = model.transformer.get_cast_dtype()
        ctx = model.positional_embedding.shape[0]
        rows, width = tokens.shape
        device = tokens.device
        with torch.no_grad(), _autocast(self.device.type, cache=False):
            positions = (prefix_len + torch.arange(width, device=device)).clamp(max=ctx - 1)
            x = model.token_embedding(tokens).to(cast_dtype)
            x = x + model.positional_embedding[positions].to(cast_dtype)
            present = torch.arange(kv.shape[3], device=device) < prefix_len
            for block, layer in zip(model.transformer.resblocks, kv):
                q, k, v = qkv(block, x)
                o = prefix_then_causal_attention(q, k, v, layer[0][None], layer[1][None],
                                                  present)
                x = block_rest(block, x, o)
            return _projected(model, x[torch.arange(rows, device=device), at])

    def _prefix_kv(self, prefix_ids: np.ndarray):
        """Each layer's keys and values for the shared prefix, (1, heads, prefix_len, head_dim)."""
        if len(prefix_ids) == 0:
            return [None] * len(self.ci.clip_model.transformer.resblocks)
        tokens = torch.from_numpy(np.ascontiguousarray(prefix_ids))[None].to(self.device)
        return [(layer[0][None], layer[1][None]) for layer in self._prefix_pass_eager(tokens)]


def _pool_and_prefix(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's pooled position (the original pools at text.argmax(): the first maximal id)
    and the length of the prefix all rows share, up to the earliest pooled position."""
    pool = rows.argmax(axis=1)
    differs = np.flatnonzero((rows != rows[0]).any(axis=0))
    common = int(differs[0]) if len(differs) else rows.shape[1]
    return pool, min(common, int(pool.min()))


def _in_row_order(pieces: list[torch.Tensor], places: list[np.ndarray]) -> torch.Tensor:
    """The batches' outputs, concatenated back into the order of the rows they came from."""
    x = torch.cat(pieces)
    order = np.argsort(np.concatenate(places), kind="stable")
    return x[torch.from_numpy(order).to(x.device)]


def _projected(model, x: torch.Tensor) -> torch.Tensor:
    """encode_text's last steps on pooled positions: ln_final, then the text projection."""
    x = model.ln_final(x)
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x


def _chunked_topk(similarity: torch.Tensor, chunk_size: int, keep: int) -> list[int]:
    """The indices LabelTable.rank keeps from a host (CPU) row of similarities: each chunk's
    top `keep`, in order. The full chunks go through top-k as the rows of one matrix: the host's
    top-k treats each row as it treats a lone chunk (same length, same k), so it picks the same
    indices, ties included (a test compares it with chunk-by-chunk calls)."""
    total = similarity.shape[0]
    full = total // chunk_size
    survivors: list[int] = []
    if full:
        _, tops = similarity[:full * chunk_size].view(full, chunk_size).topk(
            min(keep, chunk_size), dim=-1)
        tops += torch.arange(full)[:, None] * chunk_size
        survivors.extend(tops.flatten().tolist())
    if full * chunk_size < total:
        start = full * chunk_size
        _, tops = similarity[None, start:].topk(min(keep, total - start), dim=-1)
        survivors.extend(start + i for i in tops[0].tolist())
    return survivors


def _aligned(t: torch.Tensor) -> torch.Tensor:
    # The original multiplies freshly allocated (64-byte aligned) stacks; BLAS kernels may sum in
    # another order from an unaligned start, so give them the same alignment.
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _unique_rows(rows: np.ndarray):
    """Distinct rows in order of first appearance, each one's first index and multiplicity, and
    for each row the index of its distinct row."""
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1] * rows.itemsize)))
    _, first, inverse, counts = np.unique(keys.ravel(), return_index=True, return_inverse=True,
                                          return_counts=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rows[first[order]], first[order], counts[order], rank[inverse.ravel()]


def _pass_cost_in_tokens(model, device_type: str) -> float:
    """Rough fixed cost of one pass through the text tower (launches, Python), in tokens' worth
    of its arithmetic: how much padding is worth a separate pass for shorter candidates."""
    try:
        width, layers = model.transformer.width, model.transformer.layers
    except AttributeError:
        return 0.0
    flops_per_token = 24 * layers * width * width
    # ~8 ms of launches at ~300 TFLOP/s on a GPU (an H200 box spent ~4x the GPU time issuing
    # kernels in this encoder: bench/ --profile-best); ~0.5 ms of Python at ~50 GFLOP/s on a CPU.
    seconds, rate = (8e-3, 3e14) if device_type == "cuda" else (5e-4, 5e10)
    return seconds * rate / flops_per_token


def _length_groups(sorted_len: np.ndarray, batch_size: int, pass_cost: float):
    """Split rows sorted by length into (start, stop) batches, each padded to its longest row,
    minimising padded tokens plus pass_cost per batch (no batch over batch_size rows)."""
    return [(start, stop) for start, stop, _ in
            _bucket_groups(sorted_len, None, 1, batch_size, pass_cost)]


def _bucket_groups(sorted_len: np.ndarray, buckets: Optional[Sequence[int]], quantum: int,
                   batch_size: int, pass_cost: float):
    """(start, stop, width) batches of rows sorted by length, each padded to a bucket width
    (buckets None: to its longest row) and a multiple of `quantum` rows, minimising padded
    tokens plus pass_cost per batch (no batch over batch_size rows)."""
    widths = sorted_len if buckets is None else \
        np.asarray(buckets)[np.searchsorted(buckets, sorted_len)]
    values, counts = np.unique(widths, return_counts=True)
    ends = np.cumsum(counts).tolist()
    values = values.tolist()
    best = [0.0] + [math.inf] * len(values)
    cut = [0] * (len(values) + 1)
    for k in range(1, len(values) + 1):
        for j in range(k):
            rows = ends[k - 1] - (ends[j - 1] if j else 0)
            padded = -(-rows // quantum) * quantum
            cost = best[j] + padded * values[k - 1] + pass_cost * math.ceil(rows / batch_size)
            if cost < best[k]:
                best[k], cut[k] = cost, j
    bounds, k = [], len(values)
    while k:
        bounds.append(k)
        k = cut[k]
    groups, start = [], 0
    for k in reversed(bounds):
        stop = ends[k - 1]
        groups.extend((i, min(i + batch_size, stop), int(values[k - 1]))
                      for i in range(start, stop, batch_size))
        start = stop
    return groups
