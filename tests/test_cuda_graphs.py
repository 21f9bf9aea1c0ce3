"""CUDA graphs replay eager's kernels: what they compute must be bitwise what eager computes.

These need a GPU (skipped in CPU CI); bench/run_on_gpu.sh runs them on the lent GPU box. On the
CPU, the same wrappers are plain calls, which the rest of the suite covers.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_models(truthloop_cache):
    from truthloop.ml.backends import quiet_libraries
    from truthloop.config import ModelConfig
    from truthloop.ml.models import load_models

    quiet_libraries()
    return load_models(ModelConfig(models="tiny", device="cuda"))


@pytest.fixture(scope="module")
def cuda_interrogator(cuda_models):
    from truthloop.config import CaptionConfig
    from truthloop.ml.interrogate import build_interrogator

    return build_interrogator(cuda_models, CaptionConfig(chunk_size=400))


def _images(count: int):
    from PIL import Image

    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            for _ in range(count)]


def test_graphed_function_equals_eager_and_replays():
    from truthloop.ml.cudagraph import CudaGraphed

    weight = torch.randn(64, 64, device="cuda", dtype=torch.float16)
    fn = lambda x: torch.relu(x @ weight).softmax(-1)  # noqa: E731
    graphed = CudaGraphed(fn)
    with torch.no_grad():
        for seed in range(4):
            x = torch.randn(8, 64, device="cuda", dtype=torch.float16,
                            generator=torch.Generator("cuda").manual_seed(seed))
            assert torch.equal(graphed(x), fn(x))
        assert graphed.replays == 3 and not graphed.failures
        # another shape is another graph; with autograd on it is just the function
        y = torch.randn(3, 64, device="cuda", dtype=torch.float16)
        assert torch.equal(graphed(y), fn(y))
    assert torch.equal(graphed(y), fn(y)) and graphed.replays == 3


def _hash(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_unet_graph_paints_the_eager_image(cuda_models):
    from truthloop.config import GenerateConfig
    from truthloop.ml.generate import Painter

    config = GenerateConfig(steps=6, width=64, height=64)
    eager = Painter(cuda_models.pipe, config, "cuda", cuda_graphs=False)
    expected = [_hash(eager.paint(p, lambda s, t: None)) for p in ("a cat", "a dog")]
    graphed = Painter(cuda_models.pipe, config, "cuda", cuda_graphs=True)
    try:
        for _ in range(2):  # first image: eager step then capture; second: all replays
            got = [_hash(graphed.paint(p, lambda s, t: None)) for p in ("a cat", "a dog")]
            assert got == expected
        assert graphed.graphed_unet.graphed.replays > 0
        assert not graphed.graphed_unet.graphed.failures
        # The prompts' text encodings replay too (ml.generate.graph_text_encoders).
        encoder, = graphed.graphed_encoders
        assert encoder.replays > 0 and not encoder.failures
        # A plain pipeline call (no inference_mode) through the same graphs: same image.
        plain = cuda_models.pipe("a cat", negative_prompt=config.negative_prompt,
                                 num_inference_steps=6, guidance_scale=config.guidance,
                                 width=64, height=64,
                                 generator=torch.Generator("cuda").manual_seed(config.seed))
        assert _hash(plain.images[0]) == expected[0]
    finally:
        graphed.graphed_unet.uninstall()
        for encoder in graphed.graphed_encoders:
            encoder.uninstall()


def test_blip_graph_gives_the_eager_tokens(cuda_models):
    from truthloop.ml.fastcaption import FastCaptioner

    args = (cuda_models.caption_model, cuda_models.caption_processor, "cuda", cuda_models.dtype)
    eager = FastCaptioner(*args, cuda_graphs=False)
    graphed = FastCaptioner(*args, cuda_graphs=True)
    for image in _images(4):
        inputs = eager._inputs(image)
        reference = eager.reference_ids(image, 20)
        assert torch.equal(eager.generate_ids(inputs["pixel_values"], 20), reference)
        assert torch.equal(graphed.generate_ids(inputs["pixel_values"], 20), reference)
    assert graphed._graphs[20].replays == 3 and not graphed._graphs[20].failures


@pytest.mark.parametrize("graph_recheck", [False, True])
def test_graphed_similarity_and_subset_recheck_match_clip_interrogator(cuda_interrogator,
                                                                       graph_recheck):
    from truthloop.ml.fastci import FastInterrogator

    ci = cuda_interrogator
    # Every link a near-tie: each is re-checked on the tied subset, the first few both ways.
    fast = FastInterrogator(ci, tie_tol=3.0, recheck="subset", recheck_pad=8,
                            graph_recheck=graph_recheck)
    for image in _images(3):
        caption = "a photo of a thing"
        assert fast.interrogate(image, caption=caption) == ci.interrogate(image, caption=caption)
    assert fast._text_similarity.replays > 0 and not fast._text_similarity.failures
    assert fast._image_features.replays > 0 and not fast._image_features.failures
    assert fast.fixed_shapes and fast._suffix_pass.replays > 0 and not fast._suffix_pass.failures
    assert fast.stats["subset_checks"] >= 1
    if graph_recheck:
        assert fast._subset_similarity.replays > 0 and not fast._subset_similarity.failures
    assert fast.stats["fallbacks"] == fast.stats["links"] > 0


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("heads,head_dim", [(12, 64), (2, 16)])
def test_prefix_then_causal_attention_is_attention_over_the_joined_keys(dtype, heads, head_dim,
                                                                        kernel, monkeypatch):
    """The chain encoder's attention (the shared prefix and each row's own keys, merged by their
    log-sum-exps, from PyTorch's kernel or, where that fails, plain math) against one attention
    over the keys joined per row."""
    from truthloop.ml import attention
    from truthloop.ml.attention import prefix_then_causal_attention

    monkeypatch.setattr(attention, "_EFFICIENT_LSE", kernel)

    gen = torch.Generator("cuda").manual_seed(0)
    rows, width, prefix_keys = 256, 8, 77
    randn = lambda *shape: torch.randn(*shape, device="cuda", dtype=dtype,  # noqa: E731
                                       generator=gen)
    q, k, v = randn(rows, heads, width, head_dim), randn(rows, heads, width, head_dim), \
        randn(rows, heads, width, head_dim)
    prefix_k, prefix_v = randn(1, heads, prefix_keys, head_dim), randn(1, heads, prefix_keys,
                                                                      head_dim)
    for prefix_len in (1, 30, 77):
        present = torch.arange(prefix_keys, device="cuda") < prefix_len
        got = prefix_then_causal_attention(q, k, v, prefix_k, prefix_v, present)
        steps = torch.arange(width, device="cuda")
        mask = torch.cat([present.expand(width, -1), steps[None, :] <= steps[:, None]], dim=1)
        keys = torch.cat([prefix_k.expand(rows, -1, -1, -1), k], 2)
        values = torch.cat([prefix_v.expand(rows, -1, -1, -1), v], 2)
        exact = F.scaled_dot_product_attention(q.float(), keys.float(), values.float(),
                                               attn_mask=mask)
        error = (got.float() - exact).abs().max().item()
        if dtype == torch.float16:
            # Both halves come out rounded to fp16 before they are merged: allow a few of
            # fp16's steps, measured against the rounding of the one attention it replaces.
            joined = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            assert error <= 3 * (joined.float() - exact).abs().max().item(), prefix_len
        else:
            assert error < 1e-5, prefix_len


def test_chain_encoder_on_the_gpu_close_to_encode_text(cuda_interrogator):
    """Both chain encoders (fixed shapes through graphs, and the eager one) on the GPU: the
    features encode_text gives, to the rounding of its precision."""
    from truthloop.ml.fastci import FastInterrogator

    ci = cuda_interrogator
    for fixed in (True, False):
        fast = FastInterrogator(ci, fixed_shapes=fixed, cuda_graphs=fixed)
        phrases = fast.merged.labels[::97]
        bank = fast._bank(phrases)
        for prefix in [None, "a photo of a cat", "word " * 60, "a photo of a dog"]:
            rows = fast._token_rows(prefix, phrases, bank)
            with torch.no_grad(), torch.autocast("cuda"):
                ours = fast._encode_rows(rows).float()
                reference = ci.clip_model.encode_text(torch.from_numpy(rows).cuda()).float()
            scale = reference.abs().max().item()
            assert (ours - reference).abs().max().item() < 1e-2 * scale, (fixed, prefix)



def test_batched_captions_reuse_the_graphed_features_with_the_same_numbers(truthloop_cache):
    """On the GPU (CUDA graphs, fp16): the features a batch keeps for the caption of the same
    image, its preprocessing in threads, and its ranking in two threads on two streams (each
    with its own graphs) give what one thread computing everything anew gives."""
    from PIL import Image

    from truthloop.config import RunConfig
    from truthloop.ml.backends import load_backends
    from truthloop.ml.batched import BatchedBackends

    cfg = RunConfig(start_prompt="-")
    cfg.models.models, cfg.models.device = "tiny", "cuda"
    cfg.caption.mode = "best"
    single = load_backends(cfg, lambda event: None)
    images = [Image.fromarray(a) for a in np.random.default_rng(3).integers(
        0, 256, (4, 64, 64, 3), dtype=np.uint8)]
    threaded = BatchedBackends(single, cfg)  # ranks in 2 threads on their own streams
    assert threaded.rank_threads == 2
    for _ in range(3):  # eager, capture, replay
        batched = BatchedBackends(single, cfg, rank_threads=1)
        assert batched.features(images) == [single.embedder.features(i) for i in images]
        captions = batched.caption(images)
        assert BatchedBackends(single, cfg, rank_threads=1).caption(
            [i.copy() for i in images]) == captions
        assert threaded.caption([i.copy() for i in images]) == captions


@pytest.mark.parametrize("family", ["sdxl", "flux2-klein", "z-image"])
def test_a_familys_graphed_denoiser_paints_the_eager_image(family, truthloop_cache):
    """Issue 29: each generator family's denoiser steps replayed from CUDA graphs draw the plain
    pipeline's pixels (the first image eager, the second captures, the third replays); SDXL's
    text encoders replay theirs too (graph_text_encoders), the same embeddings."""
    from family_helpers import PROMPT, generate_config
    from truthloop.ml.families.painting import FamilyPainter, load_generator
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cuda")
    config = generate_config(family, steps=3, width=128, height=128)
    eager = np.asarray(FamilyPainter(pipe, family, config, "cuda").paint(PROMPT,
                                                                         lambda s, t: None))
    graphed = FamilyPainter(pipe, family, config, "cuda", cuda_graphs=True)
    try:
        images = [np.asarray(graphed.paint(PROMPT, lambda s, t: None)) for _ in range(3)]
    finally:
        graphed.graphed.uninstall()
        for encoder in graphed.graphed_encoders:
            encoder.uninstall()
    encoders = graphed.graphed_encoders
    print(f"{family}: {graphed.graphed.replays} replays; capture failures "
          f"{list(graphed.graphed.failures.values())[:1]}; text encoders' replays "
          f"{[e.replays for e in encoders]}, failures {[e.failures for e in encoders]}")
    for image in images:
        assert np.array_equal(image, eager)
    if family == "sdxl":  # the UNet's step is one fixed-shape call: it must replay
        assert graphed.graphed.replays >= config.steps
        # One encoding an image per encoder (no negative prompt: the pipeline's zeros), the
        # second image's captured and replayed, the third's replayed.
        assert len(encoders) == 2 and all(e.replays >= 2 and not e.failures for e in encoders)


def test_on_a_gpu_a_pairs_clip_embedder_gives_clip_interrogators_image_features(truthloop_cache):
    """Every pair but the seed's measures its images with OpenClipEmbedder: on a GPU its CLIP is
    fp16 with some parameters kept fp32, and it once fed the patch convolution fp32 pixels (every
    SDXL + LLaVA-1.5 trajectory stopped at its first image). Its features are
    clip-interrogator's image_to_features, the seed pair's, for the same CLIP."""
    from clip_interrogator import Config, Interrogator

    from truthloop.ml.embedding import OpenClipEmbedder
    from truthloop.ml.models import load_clip
    from truthloop.ml.tiny import build_tiny_models

    model, preprocess, name, _ = load_clip(build_tiny_models().clip_model, "cuda")
    embedder = OpenClipEmbedder(model, preprocess, name, "cuda")
    image = _images(1)[0]
    found = torch.tensor(embedder.features(image))
    assert found.shape == (model.visual.output_dim,)
    assert abs(float(found.norm()) - 1) < 1e-3
    reference = Interrogator.__new__(Interrogator)  # its image_to_features alone, on this CLIP
    reference.config, reference.device = Config(device="cuda"), "cuda"
    reference.clip_model, reference.clip_preprocess = model, preprocess
    reference._prepare_clip = lambda: None
    expected = reference.image_to_features(image)[0].float().cpu()
    torch.testing.assert_close(found, expected, atol=1e-3, rtol=0)


def test_on_a_gpu_a_pairs_graphed_clip_embedder_gives_the_eager_features(truthloop_cache):
    """A pair's CLIP image tower replays from a CUDA graph on a GPU (the default there): the
    eager embedder's features, bit for bit, for the image it first saw eagerly, the one whose
    call captured the graph and one replayed."""
    from truthloop.ml.embedding import OpenClipEmbedder
    from truthloop.ml.models import load_clip
    from truthloop.ml.tiny import build_tiny_models

    model, preprocess, name, _ = load_clip(build_tiny_models().clip_model, "cuda")
    eager = OpenClipEmbedder(model, preprocess, name, "cuda")
    graphed = OpenClipEmbedder(model, preprocess, name, "cuda", cuda_graphs=True)
    images = _images(3)
    assert [graphed.features(i) for i in images] == [eager.features(i) for i in images]
    assert graphed._encode.replays == 2 and not graphed._encode.failures
    assert eager._encode.replays == 0
