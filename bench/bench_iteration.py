"""Seed stack vs truthloop, side by side on one GPU, full-size random-weight models.

    python bench/bench_iteration.py --part base     # labels, interrogation, SD eager, iterations
    python bench/bench_iteration.py --part compile  # torch.compile: compile time, speed, drift

The seed stack is called exactly as the article's script calls it: clip-interrogator 0.6.0's
`Interrogator(Config(clip_model_name=..., chunk_size=400)).interrogate(image)` and a plain
diffusers `pipe(prompt, negative_prompt=n_prompt, generator=generator)` (SD2 768, 50 steps,
guidance 7.5, one shared CUDA generator). truthloop's path is its own Captioner (fast
interrogator) and Painter. Prints one table; writes the numbers as JSON next to it (--json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.fullsize import build_all  # noqa: E402
from truthloop.ml.backends import quiet_libraries  # noqa: E402
from truthloop.config import SEED_NEGATIVE_PROMPT, CaptionConfig, GenerateConfig  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []  # (what, seed stack, truthloop, ratio / note)
RESULTS: dict = {}


def row(what, seed=None, ours=None, note=""):
    fmt = lambda v: "" if v is None else (f"{v:.3f} s" if isinstance(v, float) else str(v))  # noqa
    ROWS.append((what, fmt(seed), fmt(ours), note))
    print(f"  {what}: seed={fmt(seed)} truthloop={fmt(ours)} {note}", flush=True)


def ratio(ours, seed):
    return f"{ours / seed:.2f}x" if seed else ""


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def timed(fn, repeat=3, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def varied_images(count: int) -> list[Image.Image]:
    """Noise, gradients, blocks and stripes with fixed seeds: inputs that rank labels differently."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        kind = index % 5
        size = 512
        if kind == 0:
            array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        elif kind == 1:
            ramp = np.linspace(0, 255, size, dtype=np.float32)
            colour = rng.uniform(0.2, 1.0, 3)
            array = (ramp[None, :, None] * colour[None, None, :]).repeat(size, 0)
        elif kind == 2:
            blocks = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
            array = np.kron(blocks, np.ones((size // 8, size // 8, 1), dtype=np.uint8))
        elif kind == 3:
            x = np.arange(size)[None, :] * rng.uniform(0.02, 0.2)
            array = ((np.sin(x + np.arange(size)[:, None] * 0.05) + 1) * 127)[..., None]
            array = array * rng.uniform(0.3, 1.0, 3)[None, None, :]
        else:
            array = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
            array[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rng.integers(0, 256, 3)
        images.append(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)))
    return images


def load_stack(paths):
    from truthloop.ml.models import load_caption_model, load_clip, load_pipeline, set_determinism

    set_determinism()
    start = time.perf_counter()
    pipe, _ = load_pipeline(paths["sd"], DEVICE, DTYPE)
    blip, processor, _ = load_caption_model(paths["blip"], DEVICE, DTYPE)
    clip, preprocess, clip_name, _ = load_clip(paths["clip"], DEVICE)
    load_seconds = time.perf_counter() - start

    class Models:
        pass

    models = Models()
    models.pipe, models.caption_model, models.caption_processor = pipe, blip, processor
    models.clip_model, models.clip_preprocess, models.clip_name = clip, preprocess, clip_name
    models.device, models.dtype = DEVICE, DTYPE
    return models, load_seconds


def seed_interrogator(models, cache_path):
    """clip-interrogator as the seed script configures it (chunk_size=400), models injected."""
    import contextlib
    import io

    from clip_interrogator import Config, Interrogator

    config = Config(clip_model_name=models.clip_name, chunk_size=400, cache_path=str(cache_path),
                    download_cache=False, device=DEVICE, quiet=True)
    config.caption_model = models.caption_model
    config.caption_processor = models.caption_processor
    config.clip_model = models.clip_model
    config.clip_preprocess = models.clip_preprocess
    with contextlib.redirect_stdout(io.StringIO()):
        return Interrogator(config)


class our_graphs_off:
    """The shared UNet and text encoder launched eagerly (our graph wrappers, once installed,
    switched off)."""

    def __init__(self, pipe):
        self.graphed = pipe.unet.__dict__.get("_truthloop_graphed")
        self.encoders = [wrapper for encoder in (pipe.text_encoder,)
                         if (wrapper := encoder.__dict__.get("_truthloop_graphed_text_encoder"))]

    def __enter__(self):
        if self.graphed is not None:
            self.was, self.graphed.graphed.enabled = self.graphed.graphed.enabled, False
            assert not self.graphed.compiled, "the seed stack must not run compiled"
        self.encoders_were = [wrapper.enabled for wrapper in self.encoders]
        for wrapper in self.encoders:
            wrapper.enabled = False

    def __exit__(self, *exc):
        if self.graphed is not None:
            self.graphed.graphed.enabled = self.was
        for wrapper, was in zip(self.encoders, self.encoders_were):
            wrapper.enabled = was


def image_hash(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


def pixel_diff(a, b) -> tuple[int, float]:
    x = np.asarray(a, dtype=np.int16)
    y = np.asarray(b, dtype=np.int16)
    d = np.abs(x - y)
    return int(d.max()), float(d.mean())


# ---------------------------------------------------------------------------------------------
def compare_fast_and_classic(ci, fast, images, captions):
    for mode, seed_call, fast_call in (
        ("fast", ci.interrogate_fast, fast.interrogate_fast),
        ("classic", ci.interrogate_classic, fast.interrogate_classic),
    ):
        same = sum(seed_call(im, caption=c) == fast_call(im, caption=c)
                   for im, c in zip(images[:10], captions[:10]))
        seed_time, _ = timed(lambda: seed_call(images[1], caption=captions[1]))
        fast_time, _ = timed(lambda: fast_call(images[1], caption=captions[1]))
        row(f"interrogate {mode}", seed_time, fast_time,
            f"{seed_time / fast_time:.1f}x faster; same string on {same}/{len(images[:10])}")
        RESULTS[mode] = {"seed": seed_time, "fast": fast_time, "agree": same}


def probe_recheck_pads(fast, images, captions, pads=(1, 8, 32, 64, 128, 256)):
    """For every near-tie: are the tied candidates' scores, computed in a batch of only them
    (padded to a multiple of `pad` rows), bitwise those of the original's full batch?"""
    import numpy as np

    original = fast._rank_top_exact
    equal = {pad: 0 for pad in pads}
    seen = []

    errors, winners_agree = [], 0

    def probe(features, rows, near, reverse):
        nonlocal winners_agree
        full = fast._exact_scores(features, rows, reverse)
        wanted = full[torch.from_numpy(near).to(full.device)]
        with torch.no_grad(), torch.autocast("cuda", enabled=DEVICE == "cuda"):
            approx = fast._encode_rows(rows)
            approx /= approx.norm(dim=-1, keepdim=True)
            approx = (approx @ features.T)[:, 0]
            if reverse:
                approx = -approx
        errors.append(float((approx.float() - full.float()).abs().max()))
        winners_agree += int(approx.argmax()) == int(full.argmax())
        for pad in pads:
            extra = -len(near) % pad
            subset = rows[np.concatenate([near, np.full(extra, near[-1])])]
            equal[pad] += torch.equal(fast._exact_scores(features, subset, reverse)[:len(near)],
                                      wanted)
        seen.append(len(near))
        return int(full.argmax().item())

    fast._rank_top_exact = probe
    try:
        for image, caption in zip(images, captions):
            fast.interrogate(image, caption=caption)
    finally:
        fast._rank_top_exact = original
    note = ", ".join(f"pad {pad}: {equal[pad]}/{len(seen)}" for pad in pads)
    row("near-tie re-check on the subset bit-equal to the full batch", note=note +
        f" (tied candidates per near-tie: median {statistics.median(seen) if seen else 0})")
    if errors:
        row("near-ties: fast encoder vs original scores", note=f"max |diff| per link: median "
            f"{statistics.median(errors):.2e}, max {max(errors):.2e}; fast argmax = original's "
            f"on {winners_agree}/{len(errors)}")
    RESULTS["recheck_pads"] = {"equal": equal, "near_ties": len(seen), "sizes": seen,
                               "errors": errors, "winners_agree": winners_agree}


def profile_interrogate(fast, images, captions):
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    sync()
    start = time.perf_counter()
    profile.enable()
    for image, caption in zip(images, captions):
        fast.interrogate(image, caption=caption)
    sync()
    profile.disable()
    elapsed = (time.perf_counter() - start) / len(images)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
    print(f"profile of fast.interrogate (best), {elapsed:.3f} s per image under cProfile",
          flush=True)
    print(text.getvalue(), flush=True)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats("fastci", 25)
    print(text.getvalue(), flush=True)
    if DEVICE == "cuda":  # where the GPU time goes, by kernel
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for image, caption in zip(images[:2], captions[:2]):
                fast.interrogate(image, caption=caption)
            sync()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)


def part_best(paths, work: Path, images_count: int, profile_best: bool = False):
    """Only the interrogation: the seed's clip-interrogator vs truthloop's, `best` on varied
    images with the same (token-equal, CUDA-graphed) BLIP captions, plus the near-tie probe."""
    from truthloop.ml.fastcaption import FastCaptioner
    from truthloop.ml.fastci import FastInterrogator

    models, _ = load_stack(paths)
    ci = seed_interrogator(models, work / "labels")
    fast = FastInterrogator(ci)
    images = varied_images(images_count)
    captioner = FastCaptioner(ci.caption_model, ci.caption_processor, ci.device, ci.dtype)
    captions = [captioner.caption(image, ci.config.caption_max_length) for image in images]
    agree, seed_times, fast_times, disagreements = 0, [], [], []
    for image, cap in zip(images, captions):
        seconds, expected = timed(lambda: ci.interrogate(image, caption=cap), 1, 0)
        seed_times.append(seconds)
        seconds, got = timed(lambda: fast.interrogate(image, caption=cap), 1, 0)
        fast_times.append(seconds)
        agree += got == expected
        if got != expected:
            disagreements.append((expected, got))
    seed_best, fast_best = statistics.median(seed_times[1:]), statistics.median(fast_times[1:])
    failures = {g.name: g.failures for g in (fast._prefix_pass, fast._suffix_pass,
                                              fast._text_similarity, fast._image_features,
                                              fast._subset_similarity)
                if g.failures}
    row("interrogate best (ranking; median of images)", seed_best, fast_best,
        f"{seed_best / fast_best:.1f}x faster; same string on {agree}/{len(images)} images; "
        f"stats {fast.stats}, recheck now {fast.recheck}, fixed shapes {fast.fixed_shapes}, "
        f"suffix graphs {len(fast._suffix_pass._graphs)} ({fast._suffix_pass.replays} replays), "
        f"re-check graphs {len(fast._subset_similarity._graphs)} "
        f"({fast._subset_similarity.replays} replays), capture failures {failures or 'none'}")
    row("  first image / mean of the rest", fast_times[0],
        statistics.mean(fast_times[1:]), "captures happen during the first images")
    RESULTS["best"] = {"seed": seed_best, "fast": fast_best, "agree": agree,
                       "images": len(images), "disagreements": disagreements[:3],
                       "stats": dict(fast.stats), "recheck": fast.recheck,
                       "seed_times": seed_times, "fast_times": fast_times,
                       "peak_gib": peak_gib()}
    row("peak GPU memory (allocated)", None, f"{peak_gib():.2f} GiB")
    compare_fast_and_classic(ci, fast, images, captions)
    probe_recheck_pads(fast, images[:6], captions[:6])
    if profile_best:
        profile_interrogate(fast, images[1:6], captions[1:6])


def part_base(paths, work: Path, images_count: int, iterations: int, compile_too: bool,
              skip_extras: bool = False, profile_best: bool = False):
    from truthloop.ml.fastci import FastInterrogator
    from truthloop.ml.generate import Painter

    models, load_seconds = load_stack(paths)
    row("load models (SD2 + BLIP-large + ViT-L-14, fp16)", note=f"{load_seconds:.1f} s")

    labels = work / "labels"
    for stale in labels.glob("*.safetensors"):
        stale.unlink()
    start = time.perf_counter()
    ci = seed_interrogator(models, labels)
    first = time.perf_counter() - start
    start = time.perf_counter()
    ci = seed_interrogator(models, labels)
    cached = time.perf_counter() - start
    start = time.perf_counter()
    fast = FastInterrogator(ci)
    fast_init = time.perf_counter() - start
    RESULTS["tie_tol"] = fast.tie_tol if hasattr(fast, "tie_tol") else None
    row("label embeddings (~112k), first use", first, None, "computed once per CLIP")
    row("label embeddings, from the cache", cached, cached + fast_init,
        f"truthloop adds {fast_init:.2f} s to stack them on the GPU")
    RESULTS["labels"] = {"first": first, "cached": cached, "fast_init": fast_init}

    images = varied_images(images_count)
    from truthloop.ml.fastcaption import FastCaptioner

    def captioner(graphs):
        return FastCaptioner(ci.caption_model, ci.caption_processor, ci.device, ci.dtype,
                             cuda_graphs=graphs)

    eager_captioner, graphed_captioner = captioner(False), captioner(True)
    max_tokens = ci.config.caption_max_length
    caption_time, caption = timed(lambda: ci.generate_caption(images[0]))
    eager_caption_time, _ = timed(lambda: eager_captioner.caption(images[0], max_tokens))
    sync()
    start = time.perf_counter()
    graphed_captioner.caption(images[0], max_tokens)  # first call: eager
    sync()
    first_graph_call = time.perf_counter() - start
    start = time.perf_counter()
    graphed_captioner.caption(images[1], max_tokens)  # second: capture, then replay
    sync()
    capture_call = time.perf_counter() - start
    graphed_caption_time, _ = timed(lambda: graphed_captioner.caption(images[0], max_tokens),
                                    repeat=5)
    captions = [ci.generate_caption(image) for image in images]
    same_eager = sum(eager_captioner.caption(image, max_tokens) == cap
                     for image, cap in zip(images[:20], captions))
    graph_failures = {n: g.failures for n, g in graphed_captioner._graphs.items() if g.failures}
    same_graphed = sum(graphed_captioner.caption(image, max_tokens) == cap
                       for image, cap in zip(images[:20], captions))
    fallback = eager_captioner.reason or graphed_captioner.reason
    row("BLIP-large caption, fast path eager (max_new_tokens=32)", caption_time,
        eager_caption_time, f"{caption_time / eager_caption_time:.1f}x faster; same caption on "
        f"{same_eager}/{len(images[:20])}" + (f"; FELL BACK: {fallback}" if fallback else ""))
    row("BLIP-large caption, CUDA graph", caption_time, graphed_caption_time,
        f"{caption_time / graphed_caption_time:.1f}x faster; same caption on "
        f"{same_graphed}/{len(images[:20])}; 1st call {first_graph_call:.3f} s, "
        f"2nd (capture) {capture_call:.3f} s; capture failures {graph_failures or 'none'}")
    RESULTS["caption"] = {"seed": caption_time, "fast_eager": eager_caption_time,
                          "fast_graphed": graphed_caption_time, "agree_eager": same_eager,
                          "agree_graphed": same_graphed, "first_call": first_graph_call,
                          "capture_call": capture_call, "fallback": fallback}

    # Interrogation, ranking only (the caption is given to both, as the timings above split it).
    # truthloop's default (graphs, subset re-check) and, for the record, the plain fast path.
    plain_fast = FastInterrogator(ci, cuda_graphs=False, recheck="full")
    agree, agree_plain, seed_times, fast_times, plain_times = 0, 0, [], [], []
    disagreements, expected_all = [], []
    for index, (image, cap) in enumerate(zip(images, captions)):
        sync()
        start = time.perf_counter()
        expected = ci.interrogate(image, caption=cap)
        sync()
        seed_times.append(time.perf_counter() - start)
        expected_all.append(expected)
        sync()
        start = time.perf_counter()
        got = fast.interrogate(image, caption=cap)
        sync()
        fast_times.append(time.perf_counter() - start)
        if got == expected:
            agree += 1
        else:
            disagreements.append((expected, got))
        if index < 10:
            sync()
            start = time.perf_counter()
            agree_plain += plain_fast.interrogate(image, caption=cap) == expected
            sync()
            plain_times.append(time.perf_counter() - start)
    seed_best, fast_best = statistics.median(seed_times[1:]), statistics.median(fast_times[1:])
    plain_best = statistics.median(plain_times[1:])
    row("interrogate best (ranking; median of images)", seed_best, fast_best,
        f"{seed_best / fast_best:.1f}x faster; same string on {agree}/{len(images)} images; "
        f"stats {fast.stats}, recheck now {fast.recheck}")
    row(f"interrogate best, no graphs + full re-check ({len(plain_times)} images)", seed_best,
        plain_best, f"{seed_best / plain_best:.1f}x faster; same string on {agree_plain}/"
        f"{len(plain_times)}; "
        f"stats {plain_fast.stats}")
    RESULTS["best"] = {"seed": seed_best, "fast": fast_best, "agree": agree,
                       "images": len(images), "disagreements": disagreements[:3],
                       "stats": dict(fast.stats), "recheck": fast.recheck,
                       "plain_fast": plain_best, "plain_agree": agree_plain,
                       "plain_stats": dict(plain_fast.stats),
                       "seed_times": seed_times, "fast_times": fast_times}
    if profile_best:
        probe_recheck_pads(fast, images[:6], captions[:6])
        profile_interrogate(fast, images[1:6], captions[1:6])
    compare_fast_and_classic(ci, fast, images, captions)

    # Stable Diffusion, eager: the plain call vs truthloop's Painter (same kernels: bit-equal).
    prompt = captions[0]
    pipe = models.pipe

    def plain():
        # The seed stack: plain diffusers, its UNet launched eagerly (our graph wrapper, once
        # installed on this shared UNet, is switched off for it).
        with our_graphs_off(pipe):
            generator = torch.Generator(DEVICE).manual_seed(42)
            return pipe(prompt, negative_prompt=SEED_NEGATIVE_PROMPT,
                        generator=generator).images[0]

    eager_painter = Painter(pipe, GenerateConfig(), DEVICE, cuda_graphs=False)
    eager_image = eager_painter.paint(prompt, lambda s, t: None)
    plain_image = plain()  # warm-up
    painter = Painter(pipe, GenerateConfig(), DEVICE, cuda_graphs=True)
    reset_peak()
    sync()
    start = time.perf_counter()
    painted = painter.paint(prompt, lambda s, t: None)  # step 1 eager, step 2 captures
    sync()
    first_graphed = time.perf_counter() - start
    graph_peak = peak_gib()
    plain_times, paint_times, eager_times = [], [], []
    for _ in range(3):  # interleaved, so a busy neighbour or clock change hits all alike
        plain_times.append(timed(plain, repeat=1, warmup=0)[0])
        paint_times.append(timed(lambda: painter.paint(prompt, lambda s, t: None),
                                 repeat=1, warmup=0)[0])
        with our_graphs_off(pipe):  # the same UNet, launched eagerly
            eager_times.append(timed(lambda: eager_painter.paint(prompt, lambda s, t: None),
                                     repeat=1, warmup=0)[0])
    plain_time, paint_time = statistics.median(plain_times), statistics.median(paint_times)
    eager_time = statistics.median(eager_times)
    same = image_hash(plain_image) == image_hash(painted)
    same_eager = image_hash(plain_image) == image_hash(eager_image)
    finite = np.isfinite(np.asarray(painted, dtype=np.float32)).all()
    failures = painter.graphed_unet.graphed.failures if painter.graphed_unet else "none installed"
    row("SD2 768, 50 steps, Painter eager (no graphs)", plain_time, eager_time,
        f"{ratio(eager_time, plain_time)}; images bit-equal: {same_eager}")
    row("SD2 768, 50 steps, Painter with UNet CUDA graph", plain_time, paint_time,
        f"{ratio(paint_time, plain_time)}; images bit-equal to plain: {same}; first image "
        f"(eager step + capture) {first_graphed:.3f} s; peak {graph_peak:.2f} GiB; "
        f"capture failures {failures or 'none'}")
    if not same:
        max_diff, mean_diff = pixel_diff(plain_image, painted)
        row("  graph vs plain pixel difference", note=f"max {max_diff}/255, mean {mean_diff:.4f}")
    RESULTS["sd_eager"] = {"seed": plain_time, "ours": paint_time, "eager": eager_time,
                           "bit_equal": same, "eager_bit_equal": same_eager,
                           "first_graphed": first_graphed, "finite": bool(finite),
                           "failures": str(failures)}
    again = painter.paint(prompt, lambda s, t: None)
    RESULTS["determinism_in_process"] = image_hash(again) == image_hash(painted)
    RESULTS["eager_hash"] = image_hash(painted)
    (work / "eager_prompt.txt").write_text(prompt)
    painted.save(work / "eager.png")

    # Whole iterations of the article loop from one start image, shared generator, both stacks.
    def seed_loop(n):
        generator = torch.Generator(DEVICE).manual_seed(42)
        image, prompts, times = images[2], [], []
        for _ in range(n):
            sync()
            start = time.perf_counter()
            p = ci.interrogate(image)
            with our_graphs_off(pipe):
                image = pipe(p, negative_prompt=SEED_NEGATIVE_PROMPT,
                             generator=generator).images[0]
            sync()
            times.append(time.perf_counter() - start)
            prompts.append(p)
        return prompts, times, image

    def our_loop(n, painter_):
        from truthloop.ml.interrogate import Captioner, ClipEmbedder

        # truthloop's loop also takes CLIP features of each new image for its drift columns
        # (work the seed script does not do); it is timed here as part of the iteration.
        embedder = ClipEmbedder(ci, fast)

        captioner = Captioner.__new__(Captioner)  # reuse the FastInterrogator built above
        captioner.ci, captioner.config, captioner.fast = ci, CaptionConfig(chunk_size=400), fast
        captioner.cuda_graphs = True
        image, prompts, times = images[2], [], []
        for _ in range(n):
            sync()
            start = time.perf_counter()
            p = captioner.caption(image)
            image = painter_.paint(p, lambda s, t: None)
            embedder.features(image)
            sync()
            times.append(time.perf_counter() - start)
            prompts.append(p)
        return prompts, times, image

    reset_peak()
    seed_prompts, seed_times, seed_last = seed_loop(iterations)
    seed_peak = peak_gib()
    reset_peak()
    shared = Painter(pipe, GenerateConfig(seed_mode="shared"), DEVICE, cuda_graphs=True)
    our_prompts, our_times, our_last = our_loop(iterations, shared)
    our_peak = peak_gib()
    seed_iter = statistics.median(seed_times[1:])
    our_iter = statistics.median(our_times[1:])
    row(f"whole iteration, article preset ({iterations} its, median of 2..n)", seed_iter,
        our_iter, f"{ratio(our_iter, seed_iter)}; prompts equal: {seed_prompts == our_prompts}; "
        f"last image bit-equal: {image_hash(seed_last) == image_hash(our_last)}")
    # Both loops walk the same trajectory (same prompts), so iteration k is the same work in
    # both. Iterations 1 and 2 carry truthloop's one-off costs (eager first calls, captures).
    seed_steady, our_steady = sum(seed_times[2:]), sum(our_times[2:])
    if seed_steady:
        row(f"whole iterations 3..{iterations} (after every capture), total", seed_steady,
            our_steady, ratio(our_steady, seed_steady))
    row("each iteration", " ".join(f"{t:.2f}" for t in seed_times),
        " ".join(f"{t:.2f}" for t in our_times),
        " ".join(ratio(o, s) for o, s in zip(our_times, seed_times)))
    row("peak GPU memory (allocated)", f"{seed_peak:.2f} GiB", f"{our_peak:.2f} GiB")
    row("first iteration (graph captures included)", seed_times[0], our_times[0],
        ratio(our_times[0], seed_times[0]))
    RESULTS["iteration_eager"] = {"seed": seed_iter, "ours": our_iter,
                                  "seed_steady_total": seed_steady,
                                  "our_steady_total": our_steady,
                                  "seed_times": seed_times, "our_times": our_times,
                                  "prompts_equal": seed_prompts == our_prompts,
                                  "seed_peak_gib": seed_peak, "our_peak_gib": our_peak}

    if compile_too:
        eager_time, eager_image = timed(lambda: painter.paint(prompt, lambda s, t: None))
        sync()
        start = time.perf_counter()
        compiled_painter = Painter(pipe, GenerateConfig(compile=True), DEVICE, cuda_graphs=True)
        compiled_painter.paint(prompt, lambda s, t: None)  # compiles
        sync()
        first_call = time.perf_counter() - start
        start = time.perf_counter()
        compiled_painter.paint(prompt, lambda s, t: None)  # step 1 compiled, then capture
        sync()
        second_call = time.perf_counter() - start
        compiled_time, compiled_image = timed(
            lambda: compiled_painter.paint(prompt, lambda s, t: None))
        max_diff, mean_diff = pixel_diff(eager_image, compiled_image)
        row("SD2 768 50 steps, --compile (+ CUDA graph)", plain_time, compiled_time,
            f"{ratio(compiled_time, plain_time)}; vs eager pixels differ max {max_diff}/255, "
            f"mean {mean_diff:.3f}")
        saved = plain_time - compiled_time
        startup = first_call + second_call - 2 * compiled_time
        break_even = startup / saved if saved > 0 else float("inf")
        row("first two --compile images (cold compile, capture)", None, first_call + second_call,
            f"1st {first_call:.1f} s, 2nd {second_call:.2f} s; vs plain diffusers, break-even "
            f"after {break_even:.0f} images")
        same_twice = image_hash(compiled_painter.paint(prompt, lambda s, t: None)) == \
            image_hash(compiled_image)
        compiled_shared = Painter(pipe, GenerateConfig(seed_mode="shared", compile=True), DEVICE,
                                  cuda_graphs=True)
        c_prompts, c_times, _ = our_loop(iterations, compiled_shared)
        c_iter = statistics.median(c_times[1:])
        agree_prefix = next((i for i, (a, b) in enumerate(zip(c_prompts, seed_prompts)) if a != b),
                            len(c_prompts))
        row(f"whole iteration, article preset + --compile ({iterations} its)", seed_iter, c_iter,
            f"{ratio(c_iter, seed_iter)}; prompts equal to seed stack for the first "
            f"{agree_prefix}/{len(c_prompts)}")
        RESULTS["compile"] = {"eager_graphed": eager_time, "compiled": compiled_time,
                              "first_call": first_call, "second_call": second_call,
                              "max_pixel_diff": max_diff, "mean_pixel_diff": mean_diff,
                              "break_even_images": break_even, "same_twice": same_twice,
                              "iteration": c_iter, "iteration_times": c_times,
                              "prompts_equal_prefix": agree_prefix,
                              "compiled_hash": image_hash(compiled_image)}

    if skip_extras:
        return
    # --low-vram: diffusers model CPU offload for the pipeline.
    from truthloop.ml.models import load_pipeline

    del painter, shared
    models.pipe = pipe = None
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    low, _ = load_pipeline(paths["sd"], DEVICE, DTYPE, low_vram=True)
    low_painter = Painter(low, GenerateConfig(), DEVICE)
    reset_peak()
    low_time, low_image = timed(lambda: low_painter.paint(prompt, lambda s, t: None), repeat=1)
    low_peak = peak_gib()
    row("--low-vram SD2 768 50 steps (offload)", None, low_time,
        f"peak {low_peak:.2f} GiB (BLIP+CLIP resident); same image as eager: "
        f"{image_hash(low_image) == RESULTS['eager_hash']}")
    RESULTS["low_vram"] = {"time": low_time, "peak_gib": low_peak}


def part_compile(paths, work: Path, iterations: int):
    from truthloop.ml.generate import Painter, compile_pipeline

    models, _ = load_stack(paths)
    pipe = models.pipe
    prompt = (work / "eager_prompt.txt").read_text() if (work / "eager_prompt.txt").exists() \
        else "a photo"
    eager_painter = Painter(pipe, GenerateConfig(), DEVICE)
    eager_time, eager_image = timed(lambda: eager_painter.paint(prompt, lambda s, t: None))
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
    sync()
    start = time.perf_counter()
    compile_pipeline(pipe)
    first_image = eager_painter.paint(prompt, lambda s, t: None)
    sync()
    first_call = time.perf_counter() - start
    compiled_time, compiled_image = timed(lambda: eager_painter.paint(prompt, lambda s, t: None))
    max_diff, mean_diff = pixel_diff(eager_image, compiled_image)
    row("SD2 768 50 steps: eager vs torch.compile", eager_time, compiled_time,
        f"{ratio(compiled_time, eager_time)}; pixels differ max {max_diff}, mean {mean_diff:.3f}")
    row("first compiled image (compile + run)", None, first_call,
        f"cache {'warm' if os.environ.get('BENCH_CACHE_WARM') else 'cold'}")
    saved = eager_time - compiled_time
    extra = first_call - compiled_time - 0.0
    break_even = extra / saved if saved > 0 else float("inf")
    row("break-even (images)", None, None, f"{break_even:.0f} images")
    same_twice = image_hash(eager_painter.paint(prompt, lambda s, t: None)) == \
        image_hash(compiled_image)
    RESULTS["compile"] = {"eager": eager_time, "compiled": compiled_time,
                          "first_call": first_call, "max_pixel_diff": max_diff,
                          "mean_pixel_diff": mean_diff, "break_even_images": break_even,
                          "same_twice": same_twice, "inductor_cache": cache,
                          "compiled_hash": image_hash(compiled_image)}


def child_hash(paths, prompt: str, compile_: bool) -> dict:
    """In a fresh process: one image, its hash and how long the first one took (cache warm?)."""
    from truthloop.ml.generate import Painter

    models, _ = load_stack(paths)
    painter = Painter(models.pipe, GenerateConfig(compile=compile_), DEVICE)
    sync()
    start = time.perf_counter()
    image = painter.paint(prompt, lambda s, t: None)
    sync()
    return {"hash": image_hash(image), "first": time.perf_counter() - start}


def probe_caption_memory(backends) -> dict:
    """Wrap the caption stage's GPU calls so that each records how far it lifts the peak above
    what was allocated when it started (innermost calls measured; outer ones include them)."""
    import truthloop.ml.fastcaption as fastcaption

    lifts: dict = {}

    def wrap(name, fn):
        def measured(*args, **kwargs):
            if DEVICE != "cuda":
                return fn(*args, **kwargs)
            sync()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            value = fn(*args, **kwargs)
            sync()
            lift = (torch.cuda.max_memory_allocated() - before) / 2**30
            lifts[name] = max(lifts.get(name, 0.0), lift)
            return value
        return measured

    fast = backends.captioner.fast
    for name in ("_prefix_pass", "_suffix_pass", "_text_similarity", "_subset_similarity",
                 "_image_features", "_text_similarity_eager", "_survivors"):
        setattr(fast, name, wrap(name, getattr(fast, name)))
    fastcaption.fast_generate_caption = wrap("blip caption", fastcaption.fast_generate_caption)
    return lifts


def part_lowvram(paths, iterations: int):
    """--low-vram as a run loads it (load_backends, the run's defaults): time per iteration,
    peak GPU memory, and the same prompts and last image as the default settings."""
    import gc

    from truthloop.ml.backends import load_backends
    from truthloop.config import RunConfig

    outcome = {}
    # low-vram first, in a process with nothing else loaded; then the default; then the
    # default with the chain's text passes at half the rows (a memory probe).
    lifts = {}
    for variant in ("low", "default", "probe"):
        low_vram = variant == "low"
        config = RunConfig(start_prompt="a photo")
        config.models.generator_model, config.models.caption_model, config.models.clip_model = \
            paths["sd"], paths["blip"], paths["clip"]
        config.models.low_vram = low_vram
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        reset_peak()
        backends = load_backends(config, lambda event: None)
        if variant == "probe":
            lifts = probe_caption_memory(backends)
        load_peak = peak_gib()
        reset_peak()
        prompt, prompts, times = config.start_prompt, [], []
        stage_peaks = {"paint": 0.0, "caption": 0.0, "features": 0.0}

        def stage(name, fn):
            reset_peak()
            value = fn()
            stage_peaks[name] = max(stage_peaks[name], peak_gib())
            return value

        for _ in range(iterations):
            sync()
            start = time.perf_counter()
            image = stage("paint", lambda: backends.painter.paint(prompt, lambda s, t: None))
            prompt = stage("caption", lambda: backends.captioner.caption(image))
            stage("features", lambda: backends.embedder.features(image))
            sync()
            times.append(time.perf_counter() - start)
            prompts.append(prompt)
        resident = torch.cuda.memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
        outcome[variant] = {"times": times, "prompts": prompts, "hash": image_hash(image),
                             "peak_gib": max(stage_peaks.values()), "stage_peaks": stage_peaks,
                             "load_peak_gib": load_peak,
                             "resident_gib": resident, "graphs": backends.captioner.cuda_graphs}
        del backends, image
    low, default = outcome["low"], outcome["default"]
    for name, result in (("--low-vram", low), ("default settings", default)):
        row(f"{name}, as a run loads it ({iterations} its; median of 2..n)", None,
            statistics.median(result["times"][1:]),
            f"peak {result['peak_gib']:.2f} GiB while iterating, {result['load_peak_gib']:.2f} "
            f"GiB while loading, {result['resident_gib']:.2f} GiB allocated after; by stage "
            + ", ".join(f"{k} {v:.2f}" for k, v in result["stage_peaks"].items())
            + f"; CUDA graphs "
            f"{'on' if result['graphs'] else 'off'}; each "
            + " ".join(f"{t:.2f}" for t in result["times"]))
    row("default, caption stage: peak lift by call (GiB over what was allocated)", None, None,
        ", ".join(f"{k} {v:.2f}" for k, v in sorted(lifts.items(), key=lambda kv: -kv[1])))
    RESULTS["caption_lifts"] = lifts
    row("--low-vram vs default: same prompts, same last image", None, None,
        f"prompts equal: {low['prompts'] == default['prompts']}; last image equal: "
        f"{low['hash'] == default['hash']}")
    RESULTS["low_vram_run"] = outcome


def part_preview(paths, iterations: int, tiny: bool = False):
    """The TUI's live preview (the latent as RGB every `preview_every` steps, handed to a
    watcher) against none, as a run loads it (load_backends, the run's defaults): whole
    iterations (draw, caption, CLIP features) alternating off / on, so drift hits both alike.
    The preview must not change the image."""
    from truthloop.config import RunConfig
    from truthloop.ml.backends import load_backends
    from truthloop.ml.latent_preview import latent_rgb

    config = RunConfig(start_prompt="a photo")
    config.models.generator_model, config.models.caption_model, config.models.clip_model = \
        paths["sd"], paths["blip"], paths["clip"]
    if tiny:  # a CPU smoke test: fewer steps, the fast caption mode
        config.generate.steps, config.caption.mode = 10, "fast"
    backends = load_backends(config, lambda event: None)
    painter = backends.painter
    shown = []

    def watcher(step, width, height, rgb):  # what the TUI's message carries, made into a picture
        shown.append(Image.frombytes("RGB", (width, height), rgb))

    def iteration(prompt):
        sync()
        start = time.perf_counter()
        image = painter.paint(prompt, lambda s, t: None)
        caption = backends.captioner.caption(image)
        backends.embedder.features(image)
        sync()
        return time.perf_counter() - start, image, caption

    times = {"off": [], "on": []}
    hashes = {"off": [], "on": []}
    prompt = "a photo"
    iteration(prompt)  # warm-up: CUDA graphs are captured at the second call of each shape
    iteration(prompt)
    for number in range(iterations):
        for variant in (("off", "on") if number % 2 == 0 else ("on", "off")):
            painter.preview = watcher if variant == "on" else None
            seconds, image, _ = iteration(prompt)
            times[variant].append(seconds)
            hashes[variant].append(image_hash(image))
    painter.preview = None
    latents = torch.randn(1, 4, (config.generate.height or 768) // 8,
                          (config.generate.width or 768) // 8, device=DEVICE,
                          dtype=torch.float16 if DEVICE == "cuda" else torch.float32)
    one, _ = timed(lambda: latent_rgb(latents), repeat=20)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    previews = len(shown) // max(1, iterations)
    row(f"an iteration, no preview (median of {iterations})", None, off,
        "each " + " ".join(f"{t:.3f}" for t in times["off"]))
    row(f"an iteration, live preview every {painter.preview_every} steps ({previews} pictures)",
        None, on, "each " + " ".join(f"{t:.3f}" for t in times["on"]))
    row("live preview's cost", None, None,
        f"{(on / off - 1) * 100:+.2f}% of an iteration (budget: 5%); one latent->RGB "
        f"{one * 1000:.2f} ms; same images: {hashes['off'] == hashes['on']}")
    RESULTS["preview"] = {"off": times["off"], "on": times["on"], "median_off": off,
                          "median_on": on, "overhead": on / off - 1, "latent_rgb_s": one,
                          "previews_per_iteration": previews,
                          "every": painter.preview_every, "steps": config.generate.steps,
                          "same_images": hashes["off"] == hashes["on"]}


def print_table(title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("what", "seed stack", "truthloop", "ratio / note"):
        table.add_column(column, overflow="fold")
    for values in ROWS:
        table.add_row(*values)
    Console(width=160).print(table)


def main() -> None:
    import signal

    # A timeout's SIGTERM still prints the table and writes the JSON (see the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("base", "best", "compile", "lowvram", "preview",
                                           "child"),
                        default="base")
    parser.add_argument("--work", default=str(ROOT / ".bench"))
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--prompt", default="a photo")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints (CPU smoke test)")
    parser.add_argument("--profile-best", action="store_true",
                        help="cProfile truthloop's best mode and probe the near-tie re-check")
    parser.add_argument("--skip-extras", action="store_true",
                        help="skip --low-vram and the cross-process checks (a shorter run)")
    args = parser.parse_args()
    quiet_libraries()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.tiny:  # a CPU smoke test of this script with the tiny checkpoints
        from truthloop.ml.tiny import build_tiny_models

        tiny = build_tiny_models()
        paths = {"sd": tiny.generator_model, "blip": tiny.caption_model, "clip": tiny.clip_model}
    else:
        paths = build_all(work / "models", log=lambda m: print(m, flush=True))
    if args.part == "child":
        print("CHILD " + json.dumps(child_hash(paths, args.prompt, args.compile)))
        return
    print(f"checkpoints ready in {time.perf_counter() - start:.1f}s", flush=True)
    machine = (f"{torch.cuda.get_device_name(0) if DEVICE == 'cuda' else platform.processor() or 'cpu'}, torch {torch.__version__}, "
               f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    RESULTS["machine"] = machine
    titles = {"best": "interrogation: truthloop vs clip-interrogator",
              "preview": "truthloop's live preview while denoising",
              "lowvram": "truthloop --low-vram"}
    title = f"{titles.get(args.part, 'truthloop vs seed stack')} — {machine}"
    try:  # what was measured before a failure still gets printed and written
        if args.part == "best":
            part_best(paths, work, args.images, profile_best=args.profile_best)
        elif args.part == "lowvram":
            part_lowvram(paths, args.iterations)
        elif args.part == "preview":
            part_preview(paths, args.iterations, tiny=args.tiny)
        elif args.part == "base":
            part_base(paths, work, args.images, args.iterations, compile_too=args.compile,
                      skip_extras=args.skip_extras, profile_best=args.profile_best)
            if not args.skip_extras:
                cross_process_checks(work, args.tiny, args.compile)
        else:
            part_compile(paths, work, args.iterations)
            prompt = (work / "eager_prompt.txt").read_text() \
                if (work / "eager_prompt.txt").exists() else "a photo"
            other = run_child(work, prompt, "--compile")
            row("compiled, another process (warm inductor cache)", None, other["first"],
                f"first image incl. compile; same image: "
                f"{other['hash'] == RESULTS['compile']['compiled_hash']}")
            RESULTS["compile"]["other_process"] = other
    finally:
        print_table(title)
        if args.json:
            Path(args.json).write_text(json.dumps(RESULTS, indent=2, default=str))


def run_child(work: Path, prompt: str, *flags: str) -> dict:
    """`--part child` in a fresh process: the hash of its first image and how long it took."""
    child = subprocess.run([sys.executable, __file__, "--part", "child", "--work", str(work),
                            "--prompt", prompt, *flags], capture_output=True, text=True)
    line = [x for x in child.stdout.splitlines() if x.startswith("CHILD ")]
    return json.loads(line[0][6:]) if line else {"hash": child.stderr[-300:], "first": -1.0}


def cross_process_checks(work: Path, tiny: bool, compile_too: bool) -> None:
    """The same prompt and seed in another process: the same image (eager, and compiled)."""
    prompt = (work / "eager_prompt.txt").read_text()
    other = run_child(work, prompt, *(["--tiny"] if tiny else []))
    same = other["hash"] == RESULTS["eager_hash"]
    row("same prompt+seed, another process (eager)", None, None, f"same image: {same}")
    RESULTS["determinism_across_processes"] = same
    row("same prompt+seed, same process (eager)", None, None,
        f"same image: {RESULTS['determinism_in_process']}")
    if compile_too:
        other = run_child(work, prompt, "--compile")
        same = other["hash"] == RESULTS["compile"]["compiled_hash"]
        row("--compile in another process (warm inductor cache)", None, other["first"],
            f"first image incl. compile; same image as this process: {same}")
        RESULTS["compile"]["other_process"] = other


if __name__ == "__main__":
    main()
