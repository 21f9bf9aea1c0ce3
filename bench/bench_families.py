"""Each model family at full size on a GPU: seconds per image or caption at the family's
defaults, the first one's time, and peak GPU memory (issue 22).

Full-size architectures with random weights, built on the GPU from the configs each family's
module transcribes (`full_size`; FLOPs and memory do not depend on the weights), run through the
loop's own painter and captioner classes (ml/families/painting.py, captioning.py) exactly as a
run calls them. Random captioners never stop early: they write `caption_max_length` tokens, the
longest a caption can be. Then one iteration of the Hintze et al. pair (SDXL draws, LLaVA-1.5
describes), both loaded at once, as a run of that pair has them.

    python3 bench/bench_families.py [--json out.json] [--repeats 3] [--only sdxl,llava-1.5]
The sd + clip-interrogator pair's figures come from bench/bench_iteration.py, unchanged.

A pair's sweep throughput (issue 29), one trajectory at a time against lockstep batches:

    python3 bench/bench_families.py --batch sdxl+llava-1.5 --sizes 8,16,32 --trajectories 32 \
        --iterations 5 [--json out.json]
    python3 bench/bench_families.py --batch sdxl+blip --tiny --sizes 2,4 --trajectories 4 \
        --iterations 3                                   # the CPU dry run, tiny checkpoints

The pair's full-size checkpoints (random weights, bench/fullsize.py) are written to --work and
loaded once through load_backends, as a run loads real ones; every variant runs its trajectories
(start prompts, a seed each, the pair's defaults) through the engine a sweep uses (truthloop.
lockstep with ml.families.batched's models) into run directories under --work. "single" is
`exact` at batch 1, the single run's own code (the first --reference trajectories); each batch
size's prompts and images are compared with it, and the captions of its images at each batch size
with each alone. Throughput counts images drawn after the first --skip drawing batches (CUDA
graph captures) over the wall time from there.
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

PROMPT = "a photograph of an astronaut riding a horse on a beach at sunset"


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _config(generator: str = "sd", captioner: str = "clip-interrogator"):
    from truthloop.config import RunConfig, apply_pair_defaults

    config = RunConfig(start_prompt=PROMPT)
    config.models.generator, config.models.captioner = generator, captioner
    apply_pair_defaults(config)
    return config


def _timed(call, repeats: int) -> tuple[float, list[float], object]:
    start = time.perf_counter()
    result = call()
    _sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        _sync()
        times.append(time.perf_counter() - start)
    return first, times, result


def bench_generator(name: str, repeats: int) -> tuple[dict, object]:
    import torch

    from truthloop.families import GENERATORS
    from truthloop.ml.families import generator_module
    from truthloop.ml.families.painting import FamilyPainter

    _free()
    module = generator_module(name)
    config = _config(generator=name)
    start = time.perf_counter()
    built_model = module.full_size("cuda", module.dtype("cuda"))
    _sync()
    built = time.perf_counter() - start
    if GENERATORS[name].autoregressive:  # janus-pro: (model, processor), drawn token by token
        from truthloop.ml.families.painting import TokenPainter

        painter = TokenPainter(*built_model, name, config.generate, "cuda")
    else:
        painter = FamilyPainter(built_model, name, config.generate, "cuda")
    first, times, image = _timed(lambda: painter.paint(PROMPT, lambda step, total: None),
                                 repeats)
    row = {"family": name, "kind": "generator", "dtype": str(module.dtype("cuda")),
           "steps": config.generate.steps, "guidance": config.generate.guidance,
           "size": list(image.size), "built_s": round(built, 1), "first_s": round(first, 3),
           "s_per_image": round(statistics.median(times), 3), "all_s": [round(t, 3) for t in times],
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return row, painter


def bench_captioner(name: str, repeats: int, image) -> tuple[dict, object]:
    import torch

    from truthloop.ml.families import captioner_module
    from truthloop.ml.families.captioning import FamilyCaptioner

    _free()
    module = captioner_module(name)
    config = _config(captioner=name)
    start = time.perf_counter()
    model, processor = module.full_size("cuda", module.dtype("cuda"))
    model.eval()
    _sync()
    built = time.perf_counter() - start
    captioner = FamilyCaptioner(name, model, processor, config.caption)
    first, times, text = _timed(lambda: captioner.caption(image), repeats)
    row = {"family": name, "kind": "captioner", "dtype": str(module.dtype("cuda")),
           "max_new_tokens": config.caption.caption_max_length,
           "instruction": config.caption.instruction, "caption_words": len(str(text).split()),
           "built_s": round(built, 1), "first_s": round(first, 3),
           "s_per_caption": round(statistics.median(times), 3),
           "all_s": [round(t, 3) for t in times],
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return row, captioner


SUBJECTS = ["a cat", "a lighthouse", "a bowl of fruit", "a city street at night", "a mountain lake",
            "an old man reading", "a red bicycle", "a forest path"]


def pair_config(args: argparse.Namespace, generator: str, captioner: str):
    """The pair at its families' defaults, from full-size checkpoints on disk (or tiny ones)."""
    config = _config(generator, captioner)
    if args.tiny:
        config.models.models, config.models.device = "tiny", "cpu"
        # The machinery on a CPU: 2 steps at 64x64 (z-image draws 1024x1024 without a size).
        config.generate.steps = 2
        config.generate.width = config.generate.height = 64
        return config
    from bench.fullsize import build_all, build_family

    root = Path(args.work) / "models"
    log = lambda message: print(message, flush=True)  # noqa: E731
    paths = build_all(root, log=log)
    config.models.clip_model = paths["clip"]
    config.models.generator_model = paths["sd"] if generator == "sd" \
        else build_family(root, "generator", generator, log=log)
    config.models.caption_model = paths["blip"] if captioner in ("blip", "clip-interrogator") \
        else build_family(root, "captioner", captioner, log=log)
    return config


def bench_pair_batch(args: argparse.Namespace) -> dict:
    """Trajectory-iterations per device-hour of one pair, single against lockstep batches."""
    import shutil

    import torch

    from bench.bench_batch import served_per_image
    from truthloop.config import RunConfig
    from truthloop.lockstep import Job, Lockstep, throughput
    from truthloop.ml.backends import load_backends
    from truthloop.ml.families.batched import FamilyBatchModels

    generator, captioner = args.batch.split("+")
    base = pair_config(args, generator, captioner)
    cuda = torch.cuda.is_available() and not args.tiny
    start = time.perf_counter()
    backends = load_backends(base, lambda event: None)
    print(f"# {generator} + {captioner}: models loaded in {time.perf_counter() - start:.1f} s "
          f"on {backends.device}; {base.generate.steps} steps, guidance {base.generate.guidance}, "
          f"size {base.generate.width or 'default'}x{base.generate.height or 'default'}",
          flush=True)
    work = Path(args.work) / "runs" / f"{generator}+{captioner}"

    def configs(count: int) -> list[RunConfig]:
        out = []
        for number in range(count):
            config = RunConfig.from_dict(base.to_dict())
            config.start_prompt = f"{SUBJECTS[number % len(SUBJECTS)]}, photograph"
            config.generate.seed = number
            config.loop.max_iters = args.iterations
            out.append(config)
        return out

    def variant(label: str, size: int, count: int) -> dict:
        exact = label == "single"
        out = work / label.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        engine = Lockstep(lambda config, emit: FamilyBatchModels(backends, config, exact=exact),
                          size, exact=exact)
        begun = time.perf_counter()
        outcomes = engine.run([Job(out / f"{n:03d}", config, key=n)
                               for n, config in enumerate(configs(count))])
        if cuda:
            torch.cuda.synchronize()
        speed = throughput(engine, skip_paints=args.skip)
        runs = [read_run(out / f"{n:03d}") if (out / f"{n:03d}").is_dir() else None
                for n in range(count)]
        per = speed["per_second"]
        row = {"pair": f"{generator} + {captioner}", "variant": label, "size": size,
               "trajectories": count, "images": engine.images,
               "timed_images": speed["images"], "timed_s": round(speed["seconds"], 3),
               "wall_s": round(time.perf_counter() - begun, 2),
               "s_per_trajectory_iteration": round(1 / per, 4) if per else None,
               "trajectory_iterations_per_hour": round(per * 3600) if per else None,
               "served_s_per_image": {k: round(v, 4) for k, v in
                                      served_per_image(speed).items()},
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
               "statuses": sorted({o["status"] for o in outcomes}),
               "errors": sorted({o.get("message", "") for o in outcomes
                                 if o["status"] == "error"}),
               # Each trajectory's (prompt, image path) per iteration.
               "runs": [[(r.fed_prompt, str(view.path / r.image) if r.image else None)
                         for r in view.records] if view else [] for view in runs]}
        print(f"  {label}: {row['s_per_trajectory_iteration']} s per trajectory-iteration, "
              f"{row['trajectory_iterations_per_hour']} per hour ({speed['images']} images "
              f"timed in {speed['seconds']:.1f} s; {row['statuses']})", flush=True)
        return row

    from truthloop.store import read_run

    rows = [variant("single", 1, args.reference)]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        row = variant(f"batch {size}", size, max(args.trajectories, size))
        # Against the single run's own trajectories (the first --reference of each batch's).
        row["vs_single"] = agreement(rows[0], row, args.reference)
        rows.append(row)
    checks = caption_checks(backends, base, rows[0], sizes)
    single = rows[0]["trajectory_iterations_per_hour"]
    print()
    print(f"{'pair':<24} {'variant':<9} {'traj':>4} {'timed':>5} {'s/traj-it':>9} "
          f"{'traj-it/h':>9} {'x single':>8} {'Hintze h':>8} {'peak GiB':>8}  vs single")
    for row in rows:
        per_hour = row["trajectory_iterations_per_hour"]
        c = row.get("vs_single")
        same = (f"{c['identical']}/{c['trajectories']} trajectories' prompts identical; "
                f"images while prompts agree: {c['images_bit_equal']}/{c['images']} bit-equal, "
                f"max {c['max_levels']}/255 in {c['most_pixels']} px") if c else "(reference)"
        print(f"{row['pair']:<24} {row['variant']:<9} {row['trajectories']:>4} "
              f"{row['timed_images']:>5} {row['s_per_trajectory_iteration'] or '-':>9} "
              f"{per_hour or '-':>9} "
              f"{f'{per_hour / single:.2f}' if per_hour and single else '-':>8} "
              # Hintze et al.'s set-up: 100 prompts x 100 rounds = 10,000 iterations.
              f"{f'{10_000 / per_hour:.1f}' if per_hour else '-':>8} "
              f"{row['peak_gib'] if row['peak_gib'] is not None else '-':>8}  {same}")
    for size, check in checks.items():
        print(f"captions at batch {size} of the single run's images: {check['same']}/"
              f"{check['images']} the same as alone")
    return {"pair": args.batch, "device": backends.device, "tiny": args.tiny,
            "config": base.to_dict(), "rows": rows, "caption_checks": checks}


def agreement(single: dict, batched: dict, count: int) -> dict:
    """A batch's first `count` trajectories against their single runs: how many have identical
    prompts throughout, and, over every image both drew from the same prompt (up to where the
    prompts part), how many are bit-equal, the largest level and the most pixels that moved."""
    import numpy as np
    from PIL import Image

    identical, images, equal, levels, pixels = 0, 0, 0, 0, 0
    for ours, theirs in zip(single["runs"][:count], batched["runs"][:count]):
        identical += [prompt for prompt, _ in ours] == [prompt for prompt, _ in theirs]
        for (prompt, path), (other_prompt, other_path) in zip(ours, theirs):
            if prompt != other_prompt:
                break
            if path is None or other_path is None:
                continue
            with Image.open(path) as a, Image.open(other_path) as b:
                moved = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16)
                               - np.asarray(b.convert("RGB"), dtype=np.int16))
            images += 1
            equal += not moved.any()
            levels = max(levels, int(moved.max()))
            pixels = max(pixels, int((moved.max(axis=-1) > 0).sum()))
    return {"trajectories": min(count, len(single["runs"])), "identical": identical,
            "images": images, "images_bit_equal": equal, "max_levels": levels,
            "most_pixels": pixels}


def caption_checks(backends, base, single: dict, sizes: list[int]) -> dict:
    """The captions of the single run's images, in batches of each size, against each alone."""
    from PIL import Image

    from truthloop.ml.families.batched import FamilyBatchModels

    images = []
    for run in single["runs"]:
        for _, path in run:
            if path is not None:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
    alone = [backends.captioner.caption(image) for image in images]
    models = FamilyBatchModels(backends, base)
    checks = {}
    for size in sizes:
        if size < 2 or size > len(images):
            continue
        batched = []
        for start in range(0, len(images) - size + 1, size):
            batched += models.caption(images[start:start + size])
        checks[size] = {"images": len(batched),
                        "same": sum(a == b for a, b in zip(batched, alone))}
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated family names")
    parser.add_argument("--batch", metavar="GENERATOR+CAPTIONER",
                        help="measure this pair's sweep throughput, single against --sizes")
    parser.add_argument("--sizes", default="8,16,32", help="lockstep batch sizes (--batch)")
    parser.add_argument("--trajectories", type=int, default=32,
                        help="trajectories of each batch size (at least the size)")
    parser.add_argument("--reference", type=int, default=4,
                        help="trajectories of the single run (the batches' first ones)")
    parser.add_argument("--iterations", type=int, default=5, help="images per trajectory")
    parser.add_argument("--skip", type=int, default=2,
                        help="drawing batches not timed (CUDA graph captures)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny checkpoints on the CPU (the dry run of --batch)")
    parser.add_argument("--work", default=str(Path(__file__).resolve().parent.parent / ".bench"),
                        help="full-size checkpoints and run directories (--batch)")
    args = parser.parse_args()
    if args.batch:
        from truthloop.ml.backends import quiet_libraries
        from truthloop.ml.models import set_determinism

        set_determinism()
        quiet_libraries()
        result = bench_pair_batch(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        return 0

    import torch

    from truthloop.ml.backends import quiet_libraries
    from truthloop.ml.families import CAPTIONER_MODULES, GENERATOR_MODULES
    from truthloop.ml.models import set_determinism

    set_determinism()
    quiet_libraries()
    only = {name for name in args.only.split(",") if name}
    import diffusers
    import transformers

    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "transformers": transformers.__version__,
              "rows": []}
    print(f"# {result['gpu']}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}; random weights, full-size architectures",
          flush=True)
    from PIL import Image

    image = Image.new("RGB", (1024, 1024), (120, 90, 60))
    for name in GENERATOR_MODULES:
        if only and name not in only:
            continue
        try:
            row, _ = bench_generator(name, args.repeats)
        except Exception as error:  # one family failing must not hide the others' figures
            row = {"family": name, "kind": "generator",
                   "error": f"{type(error).__name__}: {error}"[:300]}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    for name in CAPTIONER_MODULES:
        if only and name not in only:
            continue
        try:
            row, _ = bench_captioner(name, args.repeats, image)
        except Exception as error:
            row = {"family": name, "kind": "captioner",
                   "error": f"{type(error).__name__}: {error}"[:300]}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if not only or {"sdxl", "llava-1.5"} <= only:
        # One iteration of the Hintze et al. pair, both models loaded (each family's own peak
        # above was measured alone): draw, then caption.
        _, painter = bench_generator("sdxl", 1)
        _, captioner = bench_captioner("llava-1.5", 1, image)
        torch.cuda.reset_peak_memory_stats()

        def iteration():
            return captioner.caption(painter.paint(PROMPT, lambda step, total: None))

        first, times, _ = _timed(iteration, args.repeats)
        pair = {"family": "sdxl + llava-1.5", "kind": "iteration", "first_s": round(first, 3),
                "s_per_iteration": round(statistics.median(times), 3),
                "all_s": [round(t, 3) for t in times],
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        result["rows"].append(pair)
        print(json.dumps(pair), flush=True)
    print()
    print(f"{'family':<18} {'kind':<10} {'first s':>8} {'s each':>8} {'peak GiB':>9}  settings")
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['family']:<18} {row['kind']:<10} error: {row['error'][:70]}")
            continue
        each = row.get("s_per_image") or row.get("s_per_caption") or row.get("s_per_iteration")
        settings = (f"{row['steps']} steps, guidance {row['guidance']}, "
                    f"{row['size'][0]}x{row['size'][1]}, {row['dtype']}"
                    if row["kind"] == "generator" else
                    f"{row['max_new_tokens']} new tokens, {row['dtype']}"
                    if row["kind"] == "captioner" else "draw + caption")
        print(f"{row['family']:<18} {row['kind']:<10} {row['first_s']:>8.2f} {each:>8.3f} "
              f"{row['peak_gib']:>9.2f}  {settings}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
