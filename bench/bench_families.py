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

    from truthloop.ml.families import generator_module
    from truthloop.ml.families.painting import FamilyPainter

    _free()
    module = generator_module(name)
    config = _config(generator=name)
    start = time.perf_counter()
    pipe = module.full_size("cuda", module.dtype("cuda"))
    _sync()
    built = time.perf_counter() - start
    painter = FamilyPainter(pipe, name, config.generate, "cuda")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated family names")
    args = parser.parse_args()

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
