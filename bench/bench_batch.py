"""Many trajectories on one GPU (issue 14): trajectory-iterations per GPU-second of the lockstep
engine at several batch sizes, side by side with the single-run default, in one process on one
random-weight stack (bench/fullsize.py), all through the engine a sweep uses.

    python bench/bench_batch.py --sizes 1,4,8,16 --trajectories 16 --iterations 4
    python bench/bench_batch.py --sizes 16 --compile-sizes 16 --fast dpm++:25
    python bench/bench_batch.py --sizes "" --compile-sizes 16 --fast dpm++:25 \
        --iterations 5 --reference-iterations 3 --skip 3
    python bench/bench_batch.py --tiny --sizes 1,2 --trajectories 3 --iterations 3   # CPU smoke

Every variant runs the same trajectories (start prompts, one seed each, the article preset's
settings: best mode, chunk size 400, shared generator, SD2 768 at 50 steps) into run directories
under --work, each exactly as a sweep writes them. The reference is `exact` at batch 1, which is
`truthloop run`'s code; every other variant's prompts are compared with it trajectory by
trajectory (how many stay identical, and where the first difference falls), and its first image
(drawn from the same start prompt and seed) pixel by pixel. Throughput counts images drawn after
the first two drawing batches (CUDA graph captures, compiles) over the wall time from there.
Captions at batch B are also checked stage by stage: BLIP at batch B against BLIP alone, and the
whole caption, on the reference's own images.

Variants: the single-run default (exact, batch 1); batch B for each of --sizes (padded lockstep,
CUDA graphs); --fast SCHED:STEPS options (another scheduler at fewer steps) at batch 1 exact and
at the largest size; the seed stack's iteration (clip-interrogator + plain diffusers) for the
single-run ratios; then, last (compiling changes the shared UNet for good), --compile-sizes with
torch.compile, and the --fast options compiled at the largest of those.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_iteration import (  # noqa: E402 (sets CUBLAS_WORKSPACE_CONFIG before torch)
    DEVICE, our_graphs_off, peak_gib, pixel_diff, reset_peak, sync,
)
import torch  # noqa: E402

from truthloop.config import SEED_NEGATIVE_PROMPT, RunConfig, apply_preset  # noqa: E402
from truthloop.lockstep import Job, Lockstep, throughput  # noqa: E402
from truthloop.loop import Backends  # noqa: E402
from truthloop.ml.backends import load_backends, quiet_libraries  # noqa: E402
from truthloop.ml.batched import BatchedBackends  # noqa: E402
from truthloop.ml.generate import Painter  # noqa: E402
from truthloop.store import read_run  # noqa: E402

SUBJECTS = ["a cat", "a lighthouse", "a bowl of fruit", "a city street at night", "a mountain lake",
            "an old man reading", "a red bicycle", "a forest path", "a portrait of a woman",
            "a sailing boat", "a bridge in fog", "a dog on a beach", "a steam train",
            "a desert canyon", "a cup of coffee", "a snowy village", "a robot", "a market stall",
            "a castle", "a field of flowers", "a jazz band", "a waterfall", "an owl", "a kitchen",
            "a skyscraper", "a violin", "a tiger", "a garden party", "a harbour", "a spaceship",
            "a library", "a volcano"]

RESULTS: dict = {"variants": {}}
ROWS: list[tuple] = []


class Stack:
    """The models loaded once (as a run loads them); a variant gets its own painter on them."""

    def __init__(self, base: RunConfig):
        self.base = base
        start = time.perf_counter()
        self.backends = load_backends(base, lambda event: None)
        self.load_seconds = time.perf_counter() - start
        self.pipe = self.backends.painter.pipe
        self.default_scheduler = self.pipe.scheduler
        self.compiled = False

    def factory(self, exact: bool, rank_threads: int | None = None):
        def build(config: RunConfig, emit):
            self._set_scheduler(config.generate.scheduler)
            generate = config.generate
            if generate.compile and self.compiled:
                # Compiled once (the UNet's compiled forward stays installed under its graph
                # wrapper); compiling the VAE decoder again would only wrap it twice.
                generate = RunConfig.from_dict(config.to_dict()).generate
                generate.compile = False
            painter = Painter(self.pipe, generate, self.backends.device,
                              cuda_graphs=config.models.cuda_graphs)
            self.compiled = self.compiled or config.generate.compile
            b = self.backends
            backends = Backends(captioner=b.captioner, painter=painter, embedder=b.embedder,
                                device=b.device, details=b.details, loaded=b.loaded)
            return BatchedBackends(backends, config, exact=exact, rank_threads=rank_threads)
        return build

    def _set_scheduler(self, name: str) -> None:
        if name == "default":
            self.pipe.scheduler = self.default_scheduler
            return
        import diffusers

        from truthloop.config import SCHEDULER_CLASSES

        self.pipe.scheduler = getattr(diffusers, SCHEDULER_CLASSES[name]).from_config(
            self.default_scheduler.config)


def trajectory_configs(base: RunConfig, count: int, iterations: int) -> list[RunConfig]:
    configs = []
    for number in range(count):
        config = RunConfig.from_dict(base.to_dict())
        config.start_prompt = f"{SUBJECTS[number % len(SUBJECTS)]}, photograph"
        config.generate.seed = number
        config.loop.max_iters = iterations
        configs.append(config)
    return configs


def run_variant(stack: Stack, work: Path, label: str, size: int, exact: bool, configs,
                skip: int, rank_threads: int | None = None) -> dict:
    import gc
    import shutil

    out = work / "runs" / label
    shutil.rmtree(out, ignore_errors=True)
    # The UNet graphs of earlier variants' batch sizes would stay in this variant's peak; a
    # worker holds only its own (they are captured again in the untimed first drawing).
    graphed = stack.pipe.unet.__dict__.get("_truthloop_graphed")
    if graphed is not None:
        graphed.graphed._graphs.clear()
        graphed.graphed._seen.clear()
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    reset_peak()
    engine = Lockstep(stack.factory(exact, rank_threads), size, exact=exact)
    sync()
    start = time.perf_counter()
    outcomes = engine.run([Job(out / f"{n:03d}", config, key=n) for n, config in enumerate(configs)])
    sync()
    wall = time.perf_counter() - start
    speed = throughput(engine, skip_paints=skip)
    problems = sorted({o.get("message", "") for o in outcomes if o["status"] == "error"})
    if problems:
        print(f"  {label}: trajectories failed: {problems}", flush=True)
    runs = [read_run(out / f"{n:03d}") if (out / f"{n:03d}").is_dir() else None
            for n in range(len(configs))]
    result = {
        "size": size, "exact": exact, "trajectories": len(configs),
        "rank_threads": None if exact else engine.models.rank_threads,
        "wall_s": wall, "images": engine.images,
        "throughput": speed, "peak_gib": peak_gib(),
        "statuses": [o["status"] for o in outcomes], "errors": problems,
        "prompts": [[r.fed_prompt for r in view.records] if view else [] for view in runs],
        "first_images": [str(view.path / view.records[0].image)
                         if view and view.records and view.records[0].image else None
                         for view in runs],
        "batch_calls": _calls(engine.models.batch_sizes),
        "generate": {k: getattr(configs[0].generate, k) for k in ("steps", "scheduler", "compile")},
    }
    RESULTS["variants"][label] = result
    per = speed["per_second"]
    print(f"  {label}: served per image: " + ", ".join(
        f"{kind} {seconds:.3f} s" for kind, seconds in served_per_image(speed).items()), flush=True)
    print(f"  {label}: {per and f'{per:.3f}'} trajectory-iterations/s "
          f"({speed['images']} images in {speed['seconds']:.1f} s after warm-up; wall "
          f"{wall:.1f} s; peak {result['peak_gib']:.2f} GiB; {_count(result['statuses'])})",
          flush=True)
    return result


def served_per_image(speed: dict) -> dict[str, float]:
    """Seconds each kind of batch was served, per image drawn in the timed window."""
    served = speed.get("served_seconds") or {}
    images = speed["images"] or 1
    return {kind: served.get(kind, 0.0) / images for kind in ("paint", "caption", "features")}


def _calls(sizes: list[tuple[str, int]]) -> dict:
    counts: dict = {}
    for kind, rows in sizes:
        counts.setdefault(kind, {}).setdefault(rows, 0)
        counts[kind][rows] += 1
    return counts


def _count(statuses: list[str]) -> str:
    out: dict = {}
    for status in statuses:
        out[status] = out.get(status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(out.items()))


def compare(reference: dict, other: dict) -> dict:
    """Per trajectory: identical prompts?, the first iteration whose prompt differs, and the
    first image's pixel difference (same start prompt and seed: only the arithmetic differs)."""
    from PIL import Image

    same, first_diff, diffs = 0, [], []
    # A variant may run more iterations (or more trajectories) than the reference: only what
    # both ran is compared.
    pairs = [(ref, got[:len(ref)]) for ref, got in zip(reference["prompts"], other["prompts"])]
    for ref, got in pairs:
        if ref == got:
            same += 1
        else:
            first_diff.append(next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b),
                                   min(len(ref), len(got))))
    for a, b in zip(reference["first_images"], other["first_images"]):
        if a and b:
            with Image.open(a) as x, Image.open(b) as y:
                diffs.append(pixel_diff(x.convert("RGB"), y.convert("RGB")))
    compared = sum(max(len(p) - 1, 0) for p in reference["prompts"])  # captioned iterations
    differing = sum(
        sum(1 for i, (a, b) in enumerate(zip(ref, got)) if i and a != b) + abs(len(ref) - len(got))
        for ref, got in pairs)
    return {"identical_trajectories": same, "trajectories": len(reference["prompts"]),
            "first_difference_at": sorted(first_diff), "captioned_iterations": compared,
            "differing_prompts": differing,
            "first_image_max_diff": max((d[0] for d in diffs), default=None),
            "first_image_mean_diff": statistics.fmean(d[1] for d in diffs) if diffs else None,
            "first_images_bit_equal": sum(d[0] == 0 for d in diffs)}


def stage_checks(stack: Stack, reference: dict, sizes: list[int]) -> None:
    """Captions of the reference's own images: BLIP at batch B vs alone, and the whole caption
    (BLIP at batch B, then the ranking per image) vs the single run's caption."""
    from PIL import Image

    from truthloop.ml.fastcaption import fast_generate_caption

    images = []
    for first in reference["first_images"]:
        if first:
            with Image.open(first) as image:
                images.append(image.convert("RGB"))
    ci = stack.backends.captioner.ci
    alone_blip = [fast_generate_caption(ci, image) for image in images]
    alone_full = [stack.backends.captioner.caption(image) for image in images]
    batched = BatchedBackends(stack.backends, stack.base)
    checks = {}
    for size in sorted(set(sizes)):
        if size < 2 or size > len(images):
            continue
        blip, full = [], []
        for start in range(0, len(images) - size + 1, size):
            chunk = images[start:start + size]
            blip += batched.blip().captions(chunk)
            full += batched.caption(chunk)
        n = len(blip)
        checks[size] = {"images": n,
                        "blip_same": sum(a == b for a, b in zip(blip, alone_blip)),
                        "caption_same": sum(a == b for a, b in zip(full, alone_full))}
        print(f"  captions at batch {size}: BLIP same as alone on {checks[size]['blip_same']}/{n}, "
              f"whole caption on {checks[size]['caption_same']}/{n}", flush=True)
    RESULTS["caption_checks"] = checks


def seed_stack_iteration(stack: Stack, start_image_path: str, iterations: int = 3) -> float:
    """The article script's iteration (clip-interrogator 0.6.0 best at chunk size 400 and a plain
    diffusers call, shared generator) on the same models: the single-run ratios' denominator."""
    from PIL import Image

    from bench.bench_iteration import seed_interrogator
    from truthloop.ml.interrogate import label_cache_dir

    ci = stack.backends.captioner.ci

    class Models:
        pass

    models = Models()
    models.caption_model, models.caption_processor = ci.caption_model, ci.caption_processor
    models.clip_model, models.clip_preprocess = ci.clip_model, ci.clip_preprocess
    models.clip_name = stack.backends.details["clip_name"]
    seed_ci = seed_interrogator(models, label_cache_dir())
    stack._set_scheduler("default")
    pipe = stack.pipe
    generator = torch.Generator("cuda" if DEVICE == "cuda" else "cpu").manual_seed(42)
    with Image.open(start_image_path) as image:
        image = image.convert("RGB")
    times = []
    for _ in range(iterations):
        sync()
        start = time.perf_counter()
        prompt = seed_ci.interrogate(image)
        with our_graphs_off(pipe):
            image = pipe(prompt, negative_prompt=SEED_NEGATIVE_PROMPT, generator=generator,
                         num_inference_steps=stack.base.generate.steps,
                         width=stack.base.generate.width,
                         height=stack.base.generate.height).images[0]
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:] or times)
    RESULTS["seed_stack"] = {"iteration_s": seconds, "times": times}
    print(f"  seed stack: {seconds:.3f} s per iteration ({' '.join(f'{t:.2f}' for t in times)})",
          flush=True)
    return seconds


def print_table(title: str, order: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    variants = RESULTS["variants"]
    ref = variants.get("single default")
    ref_speed = ref and ref["throughput"]["per_second"]
    seed = RESULTS.get("seed_stack", {}).get("iteration_s")
    table = Table(title=title)
    for column in ("variant", "s / traj-it", "traj-it / GPU-s", "× single default",
                   "vs seed stack", "served s / image: draw, caption, features", "peak GiB",
                   "prompts vs single default", "first image"):
        table.add_column(column, overflow="fold")
    for label in order:
        v = variants.get(label)
        if v is None:
            continue
        per = v["throughput"]["per_second"]
        c = v.get("vs_single_default") or {}
        prompts = (f"{c['identical_trajectories']}/{c['trajectories']} identical; "
                   f"{c['differing_prompts']}/{c['captioned_iterations']} prompts differ"
                   + (f"; first at {c['first_difference_at']}" if c["first_difference_at"] else "")
                   ) if c else "(reference)"
        image = (f"max {c['first_image_max_diff']}/255, mean {c['first_image_mean_diff']:.2f}; "
                 f"{c['first_images_bit_equal']} bit-equal"
                 if c and c["first_image_max_diff"] is not None else "")
        breakdown = ", ".join(f"{seconds:.3f}"
                              for seconds in served_per_image(v["throughput"]).values())
        table.add_row(label, f"{1 / per:.3f}" if per else "-", f"{per:.3f}" if per else "-",
                      f"{per / ref_speed:.2f}×" if per and ref_speed else "-",
                      f"{(1 / per) / seed:.2f}×" if per and seed and v["size"] == 1 else "",
                      breakdown, f"{v['peak_gib']:.2f}", prompts, image)
    Console(width=200).print(table)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=str(ROOT / ".bench"))
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints (CPU smoke test)")
    parser.add_argument("--sizes", default="1,4,8,16",
                        help="batch sizes to measure (eager + CUDA graphs); 1 is lockstep, not "
                             "exact (the exact batch 1 is always run, as the reference)")
    parser.add_argument("--compile-sizes", default="",
                        help="batch sizes to measure with torch.compile (run last)")
    parser.add_argument("--compile-single", action="store_true",
                        help="also the single run with --compile (exact, batch 1)")
    parser.add_argument("--fast", default="",
                        help="faster arithmetic to measure, SCHED:STEPS[,...], e.g. dpm++:25")
    parser.add_argument("--one-rank-thread", action="store_true",
                        help="also the largest compiled batch with the captions' ranking in one "
                             "thread (the default ranks in 2 threads on a GPU)")
    parser.add_argument("--trajectories", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=4, help="images per trajectory")
    parser.add_argument("--reference-iterations", type=int,
                        help="images per trajectory of the single-run reference (default: "
                             "--iterations); prompts are compared over the iterations both ran")
    parser.add_argument("--skip", type=int, default=2,
                        help="drawing batches not timed (captures, compiles)")
    parser.add_argument("--no-seed-stack", dest="seed_stack", action="store_false")
    parser.add_argument("--no-stage-checks", dest="stage_checks", action="store_false")
    args = parser.parse_args()
    quiet_libraries()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    compile_sizes = [int(s) for s in args.compile_sizes.split(",") if s.strip()]
    fast = [(s.split(":")[0], int(s.split(":")[1])) for s in args.fast.split(",") if s.strip()]

    base = RunConfig(start_prompt="-")
    apply_preset(base, "article")
    if args.tiny:
        base.models.models, base.models.device = "tiny", "cpu"
        base.generate.steps = 10
    else:
        from bench.fullsize import build_all

        paths = build_all(work / "models", log=lambda m: print(m, flush=True))
        base.models.generator_model, base.models.caption_model, base.models.clip_model = \
            paths["sd"], paths["blip"], paths["clip"]
    machine = (f"{torch.cuda.get_device_name(0) if DEVICE == 'cuda' else 'cpu'}, torch "
               f"{torch.__version__}, {time.strftime('%Y-%m-%d')}")
    RESULTS.update(machine=machine, args=vars(args))
    stack = Stack(base)
    print(f"models loaded in {stack.load_seconds:.1f} s ({machine})", flush=True)
    order: list[str] = []

    def variant(label, size, exact, scheduler="default", steps=None, compile_=False,
                rank_threads=None):
        if exact:
            iterations = (args.reference_iterations or args.iterations) \
                if label == "single default" else args.iterations
            configs = trajectory_configs(base, args.trajectories, iterations)
        else:
            configs = trajectory_configs(base, max(args.trajectories, size), args.iterations)
        cs = []
        for config in configs:
            config = RunConfig.from_dict(config.to_dict())
            config.generate.scheduler = scheduler
            config.generate.steps = steps or config.generate.steps
            config.generate.compile = compile_
            cs.append(config)
        order.append(label)
        result = run_variant(stack, work, label, size, exact, cs, args.skip, rank_threads)
        if label != "single default":
            result["vs_single_default"] = compare(RESULTS["variants"]["single default"], result)
        return result

    try:
        reference = variant("single default", 1, True)
        for size in sizes:
            variant(f"batch {size}", size, False)
        if args.stage_checks:
            stage_checks(stack, reference, sizes)
        for scheduler, steps in fast if sizes else []:  # eager: only beside eager batches
            variant(f"single {scheduler} {steps} steps", 1, True, scheduler, steps)
            variant(f"batch {max(sizes)} {scheduler} {steps} steps", max(sizes), False,
                    scheduler, steps)
        if args.seed_stack and reference["first_images"][0]:
            seed_stack_iteration(stack, reference["first_images"][0])
        # torch.compile changes the shared UNet for good: compiled variants come last.
        if args.compile_single:
            variant("single --compile", 1, True, compile_=True)
        for size in compile_sizes:
            variant(f"batch {size} --compile", size, False, compile_=True)
        if compile_sizes and args.one_rank_thread:
            variant(f"batch {max(compile_sizes)} --compile, 1 rank thread", max(compile_sizes),
                    False, compile_=True, rank_threads=1)
        if compile_sizes:
            for scheduler, steps in fast:
                variant(f"batch {max(compile_sizes)} --compile {scheduler} {steps} steps",
                        max(compile_sizes), False, scheduler, steps, compile_=True)
    finally:
        print_table(f"trajectories in lockstep: {args.trajectories} trajectories × "
                    f"{args.iterations} images — {machine}", order)
        if args.json:
            Path(args.json).write_text(json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()
