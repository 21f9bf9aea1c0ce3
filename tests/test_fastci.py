"""FastInterrogator gives clip-interrogator's exact strings (tiny models, CPU, fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_interrogator.clip_interrogator import _merge_tables
from PIL import Image

from truthloop.ml.fastci import FastInterrogator

MODES = ("interrogate", "interrogate_fast", "interrogate_classic")


def _images(pipe) -> dict[str, Image.Image]:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    images = {
        "red": Image.new("RGB", (64, 64), (255, 0, 0)),
        "gradient": Image.fromarray(np.stack(np.broadcast_arrays(
            ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)),
        "noise0": Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3),
                                                                    dtype=np.uint8)),
        "noise1": Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 80, 3),
                                                                    dtype=np.uint8)),
    }
    result = pipe("a lighthouse at dusk", num_inference_steps=2,
                  generator=torch.Generator("cpu").manual_seed(3))
    images["tiny-sd"] = result.images[0]
    return images


# Short captions give the chain room for many links before the 77-token limit.
CAPTIONS = {
    "red": "a red square",
    "gradient": "a photo of a sunset over the sea",
    "noise0": "static",
    "noise1": "an abstract painting, colorful",
    "tiny-sd": "a lighthouse at dusk",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny models' ops are far too small to share out; on a busy 2-core machine, intra-op
    # threads spin against each other and make both implementations several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def images(tiny_models):
    return _images(tiny_models.pipe)


@pytest.fixture(scope="session")
def interrogators(tiny_models, tiny_interrogator):
    """chunk_size -> (clip-interrogator, FastInterrogator over it); label tables come from the
    session's cache, computed once by tiny_interrogator."""
    from truthloop.config import CaptionConfig
    from truthloop.ml.interrogate import build_interrogator

    assert tiny_interrogator.config.chunk_size == 400
    ci2048 = build_interrogator(tiny_models, CaptionConfig(chunk_size=2048))
    return {400: (tiny_interrogator, FastInterrogator(tiny_interrogator)),
            2048: (ci2048, FastInterrogator(ci2048))}


# chunk_size 400 keeps one survivor per chunk (~280 phrases to chain); 2048 keeps ~2035, the
# expensive case for the original, so fewer images there.
CASES = [(400, name) for name in CAPTIONS] + [(2048, "gradient"), (2048, "tiny-sd")]


@pytest.mark.parametrize("chunk_size,name", CASES)
def test_modes_match(interrogators, images, chunk_size, name):
    ci, fast = interrogators[chunk_size]
    image, caption = images[name], CAPTIONS[name]
    for mode in MODES:
        expected = getattr(ci, mode)(image, caption=caption)
        assert getattr(fast, mode)(image, caption=caption) == expected, mode
    assert fast.interrogate_negative(image) == ci.interrogate_negative(image)


def test_generated_caption(interrogators, images):
    # The tiny BLIP's caption is long enough to stop the chain at 77 tokens early.
    ci, fast = interrogators[400]
    assert fast.interrogate(images["noise0"]) == ci.interrogate(images["noise0"])


def test_image_features(interrogators, images):
    from truthloop.ml.interrogate import ClipEmbedder

    ci, fast = interrogators[400]
    for image in images.values():
        assert torch.equal(fast.image_features(image), ci.image_to_features(image))
        # the loop's drift features come from the same computation either way
        assert ClipEmbedder(ci, fast).features(image) == ClipEmbedder(ci).features(image)


def test_chunk_size_changes_the_ranking(interrogators, images):
    # Guards the tests above: they would not notice a FastInterrogator that ignored chunk_size
    # if both sizes gave the same label ranking.
    features = interrogators[400][1].image_features(images["noise0"])
    ranked = {size: fast._rank(fast.merged, features, 2048) for size, (_, fast) in
              interrogators.items()}
    for size, (ci, fast) in interrogators.items():
        merged = _merge_tables([ci.artists, ci.flavors, ci.mediums, ci.movements, ci.trendings], ci)
        assert ranked[size] == merged.rank(features, 2048)
        assert ci.flavors.rank(features, 300, reverse=True) == \
            fast._rank(fast.flavors, features, 300, reverse=True)
    assert ranked[400] != ranked[2048]


def test_token_rows_match_tokenizer(interrogators):
    """The ids built from cached per-phrase ids are exactly ci.tokenize's, including the strings
    (non-ASCII, '&', '<', curly quotes, 77-token truncation) that take other paths."""
    ci, fast = interrogators[400]
    labels = fast.merged.labels + fast.negative.labels
    unusual = [label for label in labels if not label.isascii() or set(label) & set("&<")]
    sample = labels[::97] + unusual[::3] + [
        "", "Artstation", "artstation", "&amp; co", "<end_of_text>", "x  y", "\u00c3 x", "fi\ufb01",
        "\u03a3\u0391\u03a3", "a\nb"]
    bank = fast._bank(sample)
    prefixes = [None, "a photo of a cat", "what?!", "it's", "caf\u00e9 &amp; bar", "d&d, b & w",
                "tom &amp jerry <", "by Albrecht D\u00fcrer", "\u00c2", "\u201cquoted\u201d",
                "word " * 70, "word " * 80]
    for prefix in prefixes:
        texts = sample if prefix is None else [f"{prefix}, {f}" for f in sample]
        rows = fast._token_rows(prefix, sample, bank)
        assert np.array_equal(rows, ci.tokenize(texts).numpy()), prefix


def test_prefix_encoder_close_to_encode_text(interrogators, images):
    ci, fast = interrogators[400]
    phrases = fast.merged.labels[::211]
    bank = fast._bank(phrases)
    for prefix in [None, "a photo of a cat", "word " * 60]:
        rows = fast._token_rows(prefix, phrases, bank)
        with torch.no_grad():
            ours = fast._encode_rows(rows)
            reference = ci.clip_model.encode_text(torch.from_numpy(rows))
        # Far inside tie_tol (1e-4 on normalised features): near-ties fall back, others are safe.
        assert (ours - reference).abs().max().item() < 1e-5, prefix


def test_fixed_shape_encoder_close_to_encode_text(interrogators):
    """The GPU's fixed-shape passes (prefix padded behind a key mask, suffixes and rows padded
    to buckets), run eagerly here: the same features as encode_text, to float rounding."""
    ci, _ = interrogators[400]
    fast = FastInterrogator(ci, fixed_shapes=True)
    phrases = fast.merged.labels[::97]
    bank = fast._bank(phrases)
    for prefix in [None, "a photo of a cat", "word " * 60, "word " * 74]:
        rows = fast._token_rows(prefix, phrases, bank)
        with torch.no_grad():
            ours = fast._encode_rows(rows)
            reference = ci.clip_model.encode_text(torch.from_numpy(rows))
        assert ours.shape == reference.shape
        assert (ours - reference).abs().max().item() < 1e-5, prefix


def test_fixed_shape_groups_cover_every_row_once():
    from truthloop.ml.fastci import _bucket_groups

    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(1, 40, 3000))
    groups = _bucket_groups(lengths, (4, 8, 16, 32, 77), 256, 2048, 500.0)
    covered = np.concatenate([np.arange(a, b) for a, b, _ in groups])
    assert np.array_equal(covered, np.arange(len(lengths)))
    for start, stop, width in groups:
        assert stop - start <= 2048 and lengths[stop - 1] <= width


@pytest.mark.parametrize("name", ["noise1", "gradient"])
def test_fixed_shape_interrogation_matches(interrogators, images, name):
    ci, _ = interrogators[400]
    fast = FastInterrogator(ci, fixed_shapes=True)
    image, caption = images[name], CAPTIONS[name]
    assert fast.interrogate(image, caption=caption) == ci.interrogate(image, caption=caption)
    assert fast.interrogate_negative(image) == ci.interrogate_negative(image)


@pytest.mark.parametrize("prefix", [None, "a red square", "word " * 72, "word " * 76])
def test_rank_top_ties_and_truncation(interrogators, images, prefix):
    # Same ids from different strings (case), and candidates cut at 77 tokens into the same ids:
    # equal ids need not give equal scores in the original's batch (BLAS blocking), so these
    # must reach the original's own computation.
    ci, fast = interrogators[400]
    features = fast.image_features(images["gradient"])
    phrases = ["Artstation", "artstation", "by greg rutkowski", "by Greg Rutkowski",
               "oil painting", "highly detailed digital art", "highly detailed photo"]
    bank = fast._bank(phrases)
    for reverse in (False, True):
        for order in (phrases, phrases[::-1]):
            texts = order if prefix is None else [f"{prefix}, {f}" for f in order]
            expected = ci.rank_top(features, texts, reverse=reverse)
            got = fast._rank_top(features, prefix, list(order), bank, reverse)
            assert (got if prefix is None else f"{prefix}, {got}") == expected


def test_fallback_and_generic_paths(interrogators, images):
    """Always falling back, and the plain encode_text / plain tokenizer paths, agree too."""
    ci, _ = interrogators[400]
    image, caption = images["noise1"], CAPTIONS["noise1"]
    expected = ci.interrogate(image, caption=caption)
    always = FastInterrogator(ci, tie_tol=3.0)
    assert always.interrogate(image, caption=caption) == expected
    assert always.stats["fallbacks"] == always.stats["links"] > 0
    generic = FastInterrogator(ci)
    generic._prefix_ok = False
    generic._simple_tok = False
    assert generic.interrogate(image, caption=caption) == expected


@pytest.mark.parametrize("graph_recheck", [False, True])
def test_subset_recheck_is_checked_against_the_full_batch(interrogators, images, graph_recheck):
    """Near-ties recomputed on the tied candidates only: each check compares them bit for bit
    with the original's full batch, and the string stays clip-interrogator's. (graph_recheck
    runs the same computation through the CUDA-graph wrapper, a plain call on the CPU.)"""
    ci, _ = interrogators[400]
    image, caption = images["noise1"], CAPTIONS["noise1"]
    expected = ci.interrogate(image, caption=caption)
    subset = FastInterrogator(ci, tie_tol=3.0, recheck="subset", recheck_pad=8,
                              recheck_verify=10**6, graph_recheck=graph_recheck)
    assert subset.interrogate(image, caption=caption) == expected
    assert subset.stats["subset_checks"] > 0
    # Whatever this CPU's BLAS does, a disagreement sends it back to the full batch for good.
    assert (subset.recheck == "subset") == (subset.stats["subset_mismatches"] == 0)


def test_subset_recheck_that_disagrees_falls_back_for_good(interrogators, images):
    ci, _ = interrogators[400]
    image, caption = images["noise1"], CAPTIONS["noise1"]
    expected = ci.interrogate(image, caption=caption)
    fast = FastInterrogator(ci, tie_tol=3.0, recheck="subset", recheck_pad=8, recheck_verify=2)
    exact_scores = fast._exact_scores
    calls = []

    def skewed(features, rows, reverse, compute=None):
        # The first call is the first near-tie's subset (then its full batch, to check it):
        # its numbers off by a little, as if another kernel had summed them.
        scores = exact_scores(features, rows, reverse, compute)
        calls.append(len(rows))
        return scores + 1e-3 if len(calls) == 1 else scores

    fast._exact_scores = skewed
    assert fast.interrogate(image, caption=caption) == expected
    assert fast.stats["subset_mismatches"] == 1 and fast.recheck == "full"


def test_chain_reuses_the_chosen_candidates_ids(interrogators, images):
    """The similarity and length checks of the chosen "{prompt}, {flavor}" use the ids already
    built for it (exactly ci.tokenize's): same string, and that text is never tokenised again."""
    ci, _ = interrogators[400]
    image, caption = images["gradient"], CAPTIONS["gradient"]
    expected = ci.interrogate(image, caption=caption)
    fast = FastInterrogator(ci)
    tokenized = []
    tokenize = ci.tokenize

    class Spy:
        def __getattr__(self, name):
            return getattr(tokenize, name)

        def __call__(self, texts, *args, **kwargs):
            tokenized.append(list(texts))
            return tokenize(texts, *args, **kwargs)

    ci.tokenize = Spy()
    try:
        assert fast.interrogate(image, caption=caption) == expected
    finally:
        ci.tokenize = tokenize
    # (the final comparison of the four prompts still tokenises them together, as the original)
    assert fast._chosen is not None and [fast._chosen[0]] not in tokenized


@pytest.mark.parametrize("total,chunk_size", [(112_003, 2048), (4096, 2048), (1000, 2048),
                                              (5000, 400)])
def test_chunked_topk_is_chunk_by_chunk_topk(total, chunk_size):
    """The GPU path's per-chunk top-k on the host, batched: the same indices as the original's
    chunk-by-chunk calls, also among the exact ties that fp16 similarities are full of."""
    from truthloop.ml.fastci import _chunked_topk

    similarity = torch.randn(total, generator=torch.Generator().manual_seed(total)).half().float()
    num_chunks = -(-total // chunk_size)
    keep = int(chunk_size / num_chunks)
    expected = []
    for start in range(0, total, chunk_size):
        chunk = similarity[None, start:start + chunk_size]
        _, tops = chunk.topk(min(keep, chunk.shape[1]), dim=-1)
        expected.extend(start + i for i in tops[0].tolist())
    assert _chunked_topk(similarity, chunk_size, keep) == expected
