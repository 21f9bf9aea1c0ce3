"""The captioner families' decoding on a GPU (issue 29): seconds per caption through the plain
`generate` (a dynamic cache, eager steps), the fast one (a static KV cache, the decode steps
replayed from CUDA graphs, and for the plain greedy families truthloop's greedy loop in place of
generate's: ml/families/fastdecode.py), the fast one with generate's own loop ("gen-loop", where
the greedy loop applies), optionally compiled, and batched (`FamilyCaptioner.caption_batch`,
batch 8 / 16 / 32); whether each fast caption is the plain one, and how many of a batch's
captions differ from their single ones.

Full-size architectures with random weights (each family module's `full_size`, as
bench/bench_families.py builds them), run through the loop's own FamilyCaptioner. Random weights
never stop early: every caption is `caption_max_length` tokens (77 for the vision-language
families), the longest a caption can be. Images are noise at --image-size (SDXL's 1024 by
default: Qwen3-VL's token count follows the image size; the others resize).

    python3 bench/bench_captioners.py [--only llava-1.5,qwen3-vl,janus-pro] [--repeats 3]
        [--batches 8,16,32] [--compile] [--profile] [--json out.json]
    python3 bench/bench_captioners.py --tiny     # the tiny checkpoints on the CPU: a dry run
                                                 # of the machinery (its seconds mean nothing)
On the lent GPU box: bench/run_on_gpu.sh captioners [options].
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_generators' profile helpers

FAMILIES = ("llava-1.5", "qwen3-vl", "florence-2", "blip", "janus-pro")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() \
        else None


def _caption_config(name: str):
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig(start_prompt="a photograph")
    config.models.captioner = name
    apply_pair_defaults(config)
    return config.caption


def _images(count: int, side: int) -> list:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(29)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
            for _ in range(count)]


def _model(name: str, tiny: bool):
    """The family's model and processor: full size on the GPU, or the tiny checkpoint."""
    from truthloop.ml.families import captioner_module

    if tiny:
        from truthloop.ml.families.captioning import load_captioner
        from truthloop.ml.tiny import tiny_family_model

        captioner, _ = load_captioner(name, tiny_family_model("captioner", name), "cpu",
                                      _caption_config(name))
        return captioner.model, captioner.processor
    module = captioner_module(name)
    model, processor = module.full_size("cuda", module.dtype("cuda"))
    return model.eval(), processor


def _singles(captioner, images: list) -> tuple[float, list[float], list[str]]:
    """The first caption's seconds, the others' seconds, and every caption."""
    times, captions = [], []
    for image in images:
        start = time.perf_counter()
        captions.append(captioner.caption(image))
        _sync()
        times.append(time.perf_counter() - start)
    return times[0], times[1:], captions


def _mode(name: str, label: str, captioner, images: list, reference: list[str] | None) -> dict:
    _sync()
    if _cuda():
        import torch

        torch.cuda.reset_peak_memory_stats()
    first, times, captions = _singles(captioner, images)
    row = {"family": name, "mode": label, "decoding": dict(captioner.decoding),
           "first_s": round(first, 3), "s_per_caption": round(statistics.median(times), 4),
           "all_s": [round(t, 4) for t in times], "words": len(captions[-1].split()),
           "peak_gib": _peak_gib(), "captions": captions}
    steps = getattr(captioner.fast, "steps", None)
    if steps is not None:
        row["graphs"] = {"captures": steps.captures, "replays": steps.replays,
                         "eager_steps": steps.eager_steps,
                         "failures": [str(why) for why in steps.failures.values()]}
    loop = getattr(captioner.fast, "loop", None)
    if loop is not None:
        row["loop"] = {"calls": loop.calls, "decode_steps": loop.decode_steps,
                       "fallbacks": list(loop.fallbacks)}
    if reference is not None:
        row["same_as_plain"] = sum(a == b for a, b in zip(captions, reference))
        row["compared"] = len(reference)
    print(f"  {label:9} first {first:7.3f} s, then {row['s_per_caption']:.4f} s a caption"
          + (f"; same as plain {row['same_as_plain']}/{row['compared']}"
             if reference is not None else "")
          + (f"; graphs {row['graphs']}" if "graphs" in row else "")
          + (f"; greedy loop {row['loop']}" if "loop" in row else ""), flush=True)
    return row


def _batched(name: str, captioner, images: list, singles: list[str], size: int,
             repeats: int) -> dict:
    """One batch of `size` images: a first call (captures its graphs), then `repeats` timed."""
    batch = images[:size]
    if _cuda():
        import torch

        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    captions = captioner.caption_batch(batch)
    _sync()
    first = time.perf_counter() - start
    times, changed = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        again = captioner.caption_batch(batch)
        _sync()
        times.append(time.perf_counter() - start)
        # Counted, not asserted: the same batch must give the same captions every call (on an
        # H100 a first call's eager step once made them differ), and the table says so.
        changed = max(changed, sum(a != b for a, b in zip(again, captions)))
    seconds = statistics.median(times) if times else first
    differ = [index for index, (a, b) in enumerate(zip(captions, singles)) if a != b]
    row = {"family": name, "mode": f"batch {size}", "batch": size, "first_s": round(first, 3),
           "s_per_batch": round(seconds, 4), "s_per_caption": round(seconds / size, 4),
           "captions_per_s": round(size / seconds, 2), "differ_from_single": len(differ),
           "differing": differ, "changed_between_calls": changed, "peak_gib": _peak_gib()}
    print(f"  batch {size:3}: first {first:7.3f} s, then {seconds:.3f} s "
          f"({row['s_per_caption']:.4f} s a caption, {row['captions_per_s']} a second); "
          f"{len(differ)}/{size} differ from their single caption"
          + (f"; {changed}/{size} CHANGED between two calls of the same batch" if changed else ""),
          flush=True)
    return row


def _profile(name: str, captioner, image) -> dict:
    """One fast caption (after the timed ones) under torch.profiler: how much of its wall time
    the GPU spent in kernels, how many graph replays and kernel launches the host issued, and how
    often it waited for the device; plus, timed apart, the image processor's host work.
    Where LLaVA-1.5's 10 ms a token went against ~4 ms of weight reads is what it is for."""
    from torch.profiler import ProfilerActivity, profile

    from bench_generators import tally

    start = time.perf_counter()
    getattr(captioner.processor, "image_processor", captioner.processor)(
        images=image.convert("RGB"), return_tensors="pt")
    processor_s = time.perf_counter() - start
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if _cuda() else [])
    steps = getattr(captioner.fast, "steps", None)
    replays_before = steps.replays if steps is not None else 0
    _sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        captioner.caption(image)
        _sync()
    found = tally(prof, time.perf_counter() - start, top=8)
    row = {"family": name, "mode": "profile", **found, "processor_s": round(processor_s, 4),
           "decode_replays": (steps.replays - replays_before) if steps is not None else None,
           "host_waits": {k: v for k, v in found["host_waits"].items() if v}}
    print(f"  profile: wall {row['wall_s']} s, GPU kernels {row['gpu_kernel_s']} s "
          f"({row['gpu_busy_share']}), processor {row['processor_s']} s, "
          f"{row['graph_launches']} graph launches, {row['kernel_launches']} kernel launches, waits "
          f"{row['host_waits']}; CUDA runtime calls {row['runtime_calls']}", flush=True)
    return row


def bench_family(name: str, args: argparse.Namespace, rows: list[dict]) -> None:
    """The family's rows, appended to `rows` as each is measured (a later failure keeps them)."""
    from truthloop.ml.families.captioning import FamilyCaptioner

    _free()
    config = _caption_config(name)
    start = time.perf_counter()
    model, processor = _model(name, args.tiny)
    _sync()
    print(f"# {name}: built in {time.perf_counter() - start:.1f} s, {model.dtype}, "
          f"{config.caption_max_length} tokens a caption, instruction {config.instruction!r}",
          flush=True)
    singles_count = 1 + args.repeats
    batches = args.batches
    images = _images(max([singles_count, *batches]), args.image_size)

    def captioner(**options):
        return FamilyCaptioner(name, model, processor, config, **options)

    plain = _mode(name, "plain", captioner(fast=False), images[:singles_count], None)
    rows.append(plain)
    fast_captioner = captioner(cuda_graphs=not args.no_graphs)
    fast = _mode(name, "fast", fast_captioner, images[:singles_count], plain["captions"])
    rows.append(fast)
    if args.profile:
        rows.append(_profile(name, fast_captioner, images[0]))
    if batches:
        # Each batched image's single caption (the fast path's), to count what batching changes.
        singles = fast["captions"] + [fast_captioner.caption(image)
                                      for image in images[singles_count:max(batches)]]
        for size in batches:
            rows.append(_batched(name, fast_captioner, images, singles, size, args.repeats))
    if fast_captioner.fast.describe().get("loop") == "truthloop's greedy loop":
        # The same fast path with generate's own loop: what truthloop's loop saves.
        rows.append(_mode(name, "gen-loop", captioner(cuda_graphs=not args.no_graphs,
                                                      greedy_loop=False),
                          images[:singles_count], plain["captions"]))
    if args.compile:
        rows.append(_mode(name, "compiled", captioner(compile=True), images[:singles_count],
                          plain["captions"]))
    del fast_captioner, model, processor
    _free()


def table(rows: list[dict], batches: list[int]) -> str:
    """One line a family: seconds a caption plain / fast / fast with generate's loop / compiled,
    the speed-up, how many fast captions are the plain ones, and each batch's seconds a caption
    and differing captions."""
    head = ["family", "plain s", "fast s", "x", "same", "gen-loop s", "same", "compiled s",
            "same"]
    head += [f"b{size} s/cap (differ)" for size in batches]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for family in dict.fromkeys(row["family"] for row in rows):
        mine = {row["mode"]: row for row in rows if row["family"] == family}
        plain, fast, compiled = mine.get("plain"), mine.get("fast"), mine.get("compiled")
        generate = mine.get("gen-loop")
        cells = [family, f"{plain['s_per_caption']:.4f}" if plain else "not measured",
                 f"{fast['s_per_caption']:.4f}" if fast else "not measured",
                 f"{plain['s_per_caption'] / fast['s_per_caption']:.1f}x"
                 if plain and fast else "",
                 f"{fast['same_as_plain']}/{fast['compared']}" if fast else "",
                 f"{generate['s_per_caption']:.4f}" if generate else "not measured",
                 f"{generate['same_as_plain']}/{generate['compared']}" if generate else "",
                 f"{compiled['s_per_caption']:.4f}" if compiled else "not measured",
                 f"{compiled['same_as_plain']}/{compiled['compared']}" if compiled else ""]
        for size in batches:
            batch = mine.get(f"batch {size}")
            changed = batch.get("changed_between_calls") if batch else 0
            cells.append(f"{batch['s_per_caption']:.4f} ({batch['differ_from_single']}/{size}"
                         + (f"; {changed} changed between calls" if changed else "") + ")"
                         if batch else "not measured")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated families (default: all of them)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed captions (and batches) after the first (default 3)")
    parser.add_argument("--batches", default="8,16,32",
                        help="batch sizes, comma-separated; 0 for none (default 8,16,32)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the noise images (default 1024; 64 with --tiny)")
    parser.add_argument("--compile", action="store_true",
                        help="also the compiled decode step (inductor, then graphed)")
    parser.add_argument("--no-graphs", action="store_true",
                        help="the fast path without CUDA graphs (static cache, eager steps)")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny checkpoints on the CPU: a dry run")
    parser.add_argument("--profile", action="store_true",
                        help="a profile row: one fast caption under torch.profiler")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    # "0" (or nothing) for no batched rows
    args.batches = [int(size) for size in args.batches.split(",")
                    if size.strip() and int(size) > 0]
    if args.image_size is None:
        args.image_size = 64 if args.tiny else 1024
    names = args.only.split(",") if args.only else list(FAMILIES)
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r} (choose from {', '.join(FAMILIES)})")
    if not args.tiny and not _cuda():
        parser.error("needs a CUDA GPU (or --tiny for the CPU dry run)")
    if args.compile and args.tiny:
        parser.error("--compile is a CUDA path: the CPU dry run has no compiled decode step")
    from truthloop.ml.backends import quiet_libraries
    from truthloop.ml.models import set_determinism

    quiet_libraries()
    set_determinism()
    import torch

    device = torch.cuda.get_device_name() if _cuda() and not args.tiny else "cpu (tiny)"
    print(f"# captioners on {device}, torch {torch.__version__}; repeats {args.repeats}, "
          f"batches {args.batches}, images {args.image_size}x{args.image_size}", flush=True)
    rows: list[dict] = []
    for name in names:
        try:
            bench_family(name, args, rows)
        except Exception as error:  # noqa: BLE001 - one family's failure must not hide the rest
            print(f"  {name} failed: {type(error).__name__}: {error}", flush=True)
            rows.append({"family": name, "mode": "error", "error": f"{type(error).__name__}: "
                                                                   f"{error}"})
            _free()
    print()
    print(table([row for row in rows if row["mode"] != "error"], args.batches))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__,
                                               "rows": rows}, indent=1))
    return 0 if all(row["mode"] != "error" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
