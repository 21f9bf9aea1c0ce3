"""The generator families at batch 1, and where SDXL's time goes (issue 29, items 1 and 2).

For each family (full-size architecture, random weights, its defaults; or `--tiny`: the tiny
checkpoints on the CPU, a dry run of every row), in one process, one image after another:

- `plain`: the library's own pipeline call, as a model card writes it (no callback);
- `loop eager`: the loop's FamilyPainter as a run called it until now (a stop/preview callback
  after every step);
- `loop graphs`: the same with the denoiser's steps replayed from CUDA graphs (the new default on
  a GPU; the same kernels, so the same pixels: the table says whether they were);
- `loop compiled`: `--compile`, the denoiser and the VAE decoder torch.compile'd, the denoiser's
  steps replayed from graphs (first_s includes the compile; the note gives how far its pixels
  moved from `loop eager`'s). GPU only: on the CPU (`--tiny`) the row says it was skipped;
- `loop compiled, fused` (`--fused`): the same with fused QKV projections and channels-last
  (painting.fuse_layout), to see whether they pay; on the CPU, `loop eager, fused`;
- `batched N, graphs` and `batched N, compiled` (`--batch N`): what `sweep --batch N` draws,
  one pipeline call for N trajectories (BatchedFamilyPainter: N prompts, N seeds) through the
  graphed, then the compiled, painter; s/image is the call's seconds over N, the note how far
  the first row's pixels are from its single image (`loop graphs` / `loop compiled`: the same
  prompt and seed);
- `plain, cudnn autotune`: the plain call without the determinism settings a run makes (cuDNN's
  benchmark mode on, its deterministic mode off), to see what they cost.

A family that draws token by token (janus-pro: transformers' image mode) has two rows: `plain`,
the documented call under torch.manual_seed(seed), and `loop`, the loop's TokenPainter (the run's
random stream, a stop check after every image token); the note says whether their pixels agree.

Then, for SDXL: the stages of one eager image (prompt encoding, 50 UNet steps, the VAE decode in
fp32 as `force_upcast` makes it and, for comparison, in fp16), and a torch.profiler trace of one
eager loop image: GPU kernel time against wall time, kernel time by kind, and the host calls that
wait for the GPU (synchronizations, device-to-host copies) per step.

    python3 bench/bench_generators.py [--families sdxl,flux2-klein,z-image,janus-pro]
        [--repeats 2] [--fused] [--batch N] [--json F]
    python3 bench/bench_generators.py --tiny      # CPU dry run, tiny checkpoints, ~1 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "a photograph of an astronaut riding a horse on a beach at sunset"
DEVICE = "cpu"
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "aten::_local_scalar_dense", "aten::item")


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(call, repeats: int) -> tuple[float, list[float], object]:
    """(first call's seconds, the next `repeats` calls' seconds, the last result)."""
    start = time.perf_counter()
    result = call()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        sync()
        times.append(time.perf_counter() - start)
    return first, times, result


def rows_of(rows: list[dict], images: dict, family: str, repeats: int, **extra):
    """row(name, call, note=""): time `call` (its image kept in `images[name]`), add its row
    (the family, the path, first and median seconds, every time, the note, `extra`) to `rows`
    and print it."""
    import numpy as np

    def row(name: str, call, note: str = "") -> None:
        first, times, image = timed(call, repeats)
        images[name] = np.asarray(image)
        rows.append({"family": family, "path": name, "first_s": round(first, 3),
                     "s_per_image": round(statistics.median(times), 3),
                     "all_s": [round(t, 3) for t in times], "note": note, **extra})
        print(json.dumps(rows[-1]), flush=True)

    return row


def build(family: str, tiny: bool):
    from truthloop.ml.families import generator_module

    module = generator_module(family)
    if tiny:
        from truthloop.ml.families.painting import load_generator
        from truthloop.ml.tiny import tiny_family_model

        return load_generator(family, tiny_family_model("generator", family), DEVICE)[0]
    pipe = module.full_size(DEVICE, module.dtype(DEVICE))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def config_for(family: str, tiny: bool):
    import dataclasses

    from truthloop.config import RunConfig, apply_pair_defaults

    from truthloop.families import GENERATORS

    config = RunConfig(start_prompt=PROMPT)
    config.models.generator = family
    apply_pair_defaults(config)
    if tiny and not GENERATORS[family].autoregressive:  # (that one draws its checkpoint's size)
        return dataclasses.replace(config.generate, steps=2, width=64, height=64)
    return config.generate


def determinism(on: bool) -> None:
    import torch

    from truthloop.ml.models import set_determinism

    if on:
        set_determinism()
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False


def token_family_rows(family: str, args) -> tuple[list[dict], object, object]:
    """An autoregressive family (janus-pro): the documented call under torch.manual_seed, and
    the loop's TokenPainter, whose pixels should be the same."""
    import numpy as np
    import torch

    from truthloop.ml.families import generator_module
    from truthloop.ml.families.painting import TokenPainter, load_token_generator

    module = generator_module(family)
    if args.tiny:
        from truthloop.ml.tiny import tiny_family_model

        model, processor, _ = load_token_generator(
            family, tiny_family_model("generator", family), DEVICE)
    else:
        model, processor = module.full_size(DEVICE, module.dtype(DEVICE))
    config = config_for(family, args.tiny)
    painter = TokenPainter(model, processor, family, config, DEVICE)
    rows, images = [], {}
    row = rows_of(rows, images, family, args.repeats, image_tokens=module.image_tokens(model))

    determinism(True)

    def plain():
        torch.manual_seed(config.seed)
        with torch.inference_mode():
            return module.draw(model, processor, PROMPT, config.guidance)

    row("plain", plain, f"torch.manual_seed({config.seed}), guidance {config.guidance}")
    row("loop", lambda: painter.paint(PROMPT, lambda step, total: None))
    rows[-1]["note"] = f"same pixels as plain: {np.array_equal(images['loop'], images['plain'])}"
    return rows, model, painter


def family_rows(family: str, args) -> tuple[list[dict], object, object]:
    import torch

    from truthloop.families import GENERATORS
    from truthloop.ml.families.painting import FamilyPainter

    if GENERATORS[family].autoregressive:
        return token_family_rows(family, args)
    pipe = build(family, args.tiny)
    config = config_for(family, args.tiny)
    eager = FamilyPainter(pipe, family, config, DEVICE)
    rows, images = [], {}
    row = rows_of(rows, images, family, args.repeats)

    determinism(True)

    def plain():
        with torch.inference_mode():
            return pipe(**eager.call_arguments(PROMPT, eager._stream.generator())).images[0]

    paths = set(args.paths.split(","))
    if "plain" in paths:
        row("plain", plain)
    if "eager" in paths:
        row("loop eager", lambda: eager.paint(PROMPT, lambda step, total: None))
    if "graphs" in paths:
        graphs_rows(row, rows, images, pipe, family, config, args)
    if "compiled" in paths:
        compiled_row(row, rows, images, pipe, family, config, args.batch, args.repeats,
                     args.batch_only)
    if args.fused:
        fused_row(row, rows, images, pipe, family, config)
    if "autotune" in paths:
        determinism(False)
        row("plain, cudnn autotune", plain, "cudnn.benchmark on, deterministic off")
        determinism(True)
    return rows, pipe, eager


def graphs_rows(row, rows: list[dict], images: dict, pipe, family: str, config, args) -> None:
    """`loop graphs` (the default on a GPU), then `batched N, graphs` with `--batch N`; the
    pipeline put back as it was after."""
    from truthloop.ml.families.painting import FamilyPainter

    graphed = FamilyPainter(pipe, family, config, DEVICE, cuda_graphs=True)
    if not (args.batch and args.batch_only):
        row("loop graphs", lambda: graphed.paint(PROMPT, lambda step, total: None))
        rows[-1]["note"] = graphs_note(graphed, images)
    try:
        if args.batch:  # (on the CPU dry run: the batch through the eager painter)
            batched_row(rows, images, graphed, family, args.batch, args.repeats, "loop graphs")
    finally:
        if graphed.graphed is not None:
            ungraph(graphed)


def graphs_note(graphed, images: dict) -> str:
    """The `loop graphs` row's note: replays (the text encoders' too), whether its pixels are
    eager's, why a capture failed."""
    import numpy as np

    if graphed.graphed is None:
        return "no graphs on this device (the eager path)"
    same = (bool(np.array_equal(images["loop graphs"], images["loop eager"]))
            if "loop eager" in images else "not compared (no eager row)")
    failures = list(graphed.graphed.failures.values())
    failures += [why for encoder in graphed.graphed_encoders for why in encoder.failures.values()]
    encoded = sum(encoder.replays for encoder in graphed.graphed_encoders)
    return (f"{graphed.graphed.replays} replays"
            + (f", text encoders {encoded}" if graphed.graphed_encoders else "")
            + f"; same pixels as eager: {same}"
            + (f"; capture failed: {failures[0][:120]}" if failures else ""))


BATCH_PROMPTS = [PROMPT, "an old red tram on a wet street at night", "a bowl of lemons on a table",
                 "a lighthouse on a cliff in a storm", "a crowded market in the rain",
                 "a child flying a kite on a hill", "a cat asleep on a piano",
                 "a snowy forest road"]


def batched_row(rows: list[dict], images: dict, painter, family: str, size: int, repeats: int,
                single: str) -> None:
    """`batched N, ...`: one BatchedFamilyPainter call for `size` trajectories (prompts and
    seeds of their own; the first is `single`'s prompt and seed), through `painter` as a sweep's
    lockstep batch calls it; s/image = the call's seconds / N."""
    import dataclasses

    import numpy as np

    from truthloop.ml.families.batched import BatchedFamilyPainter
    from truthloop.ml.generate import RandomStream

    batched = BatchedFamilyPainter(painter)
    config = painter.config
    prompts = [BATCH_PROMPTS[i % len(BATCH_PROMPTS)] for i in range(size)]
    name = f"batched {size}, {single.split()[-1]}"

    def call():
        streams = [RandomStream(dataclasses.replace(config, seed=config.seed + i), DEVICE)
                   for i in range(size)]
        return batched.paint(prompts, [stream.generator() for stream in streams],
                             lambda step, total: None, pad_to=size)

    try:
        first, times, drawn = timed(call, repeats)
    except Exception as error:  # an out-of-memory batch must not hide the other rows
        rows.append({"family": family, "path": name, "error": f"{type(error).__name__}: "
                                                               f"{error}"[:300]})
        print(json.dumps(rows[-1]), flush=True)
        return
    images[name] = np.asarray(drawn[0])
    compared = f"row 0 vs {single}: not compared (no such row)"
    if single in images:
        moved = np.abs(images[name].astype(int) - images[single].astype(int))
        compared = f"row 0 vs {single}: max {moved.max()}/255, mean {moved.mean():.2f}"
    rows.append({"family": family, "path": name, "first_s": round(first, 3),
                 "s_per_image": round(statistics.median(times) / size, 3),
                 "all_s": [round(t, 3) for t in times], "batch": size,
                 "note": f"one call of {size}; {compared}"})
    print(json.dumps(rows[-1]), flush=True)


def compiled_row(row, rows: list[dict], images: dict, pipe, family: str, config,
                 batch: int = 0, repeats: int = 2, batch_only: bool = False) -> None:
    """`loop compiled` (--compile: compile + graphs) and, with a batch, `batched N, compiled`
    (compiled afresh: the sweep calls the denoiser at its padded batch alone, so its compile
    is static at that size, not the dynamic one a second shape would bring); then the pipeline
    put back as it was (the rows and the profile after it are eager)."""
    import dataclasses

    import torch

    from truthloop.ml.families.painting import FamilyPainter

    if DEVICE != "cuda":
        rows.append({"family": family, "path": "loop compiled",
                     "skipped": "torch.compile serves the CUDA path only (--compile draws "
                                "eagerly on a CPU)"})
        print(json.dumps(rows[-1]), flush=True)
        return
    painter = FamilyPainter(pipe, family, dataclasses.replace(config, compile=True), DEVICE,
                            cuda_graphs=True)
    try:
        if not batch_only:
            row("loop compiled", lambda: painter.paint(PROMPT, lambda step, total: None))
            failures = list(painter.graphed.failures.values())
            rows[-1]["note"] = (f"compile + graphs, {painter.graphed.replays} replays; "
                                + moved_from_eager(images, "loop compiled")
                                + (f"; capture failed: {failures[0][:120]}" if failures else ""))
        if batch:
            torch._dynamo.reset()
            batched_row(rows, images, painter, family, batch, repeats, "loop compiled")
    finally:
        uncompile(pipe, painter)


def moved_from_eager(images: dict, name: str) -> str:
    """How far row `name`'s pixels are from `loop eager`'s, in words."""
    import numpy as np

    if "loop eager" not in images:
        return "vs eager: not compared (no eager row)"
    moved = np.abs(images[name].astype(int) - images["loop eager"].astype(int))
    return f"vs eager: max {moved.max()}/255, mean {moved.mean():.2f}"


def ungraph(painter) -> None:
    """No graph wrappers left from a CUDA painter: the denoiser's and the text encoders'."""
    painter.graphed.uninstall()
    for encoder in painter.graphed_encoders:
        encoder.uninstall()


def uncompile(pipe, painter) -> None:
    """The pipeline as it was before a compiled painter: speed_up undone, and the text
    encoders' graph wrappers gone."""
    from truthloop.ml.families.painting import undo_speed_up

    undo_speed_up(pipe)
    for encoder in painter.graphed_encoders:
        encoder.uninstall()


def fused_row(row, rows: list[dict], images: dict, pipe, family: str, config) -> None:
    """`loop compiled, fused` (`--fused`): fused QKV projections and channels-last
    (painting.fuse_layout) under `--compile`, as diffusers' fast-diffusion tutorial does, to see
    whether they pay beside `loop compiled`; on the CPU the fused model drawn eagerly (the dry
    run). The pipeline is put back as it was after."""
    import dataclasses

    from truthloop.ml.families.painting import FamilyPainter, fuse_layout

    compiled = DEVICE == "cuda"
    done = fuse_layout(pipe)
    name = "loop compiled, fused" if compiled else "loop eager, fused"
    painter = FamilyPainter(pipe, family, dataclasses.replace(config, compile=compiled), DEVICE,
                            cuda_graphs=compiled)
    try:
        row(name, lambda: painter.paint(PROMPT, lambda step, total: None))
        rows[-1]["note"] = (f"{', '.join(done) or 'nothing to fuse'}; "
                            + moved_from_eager(images, name))
    finally:
        if painter.graphed is not None:
            uncompile(pipe, painter)
        fuse_layout(pipe, on=False)


def sdxl_stages(pipe, painter, args) -> list[dict]:
    """One eager SDXL image in its stages: the prompt, the denoising loop, the VAE decode."""
    import torch

    out = []

    def stage(name: str, call) -> object:
        first, times, result = timed(call, args.repeats)
        out.append({"stage": name, "s": round(statistics.median(times), 4)})
        print(json.dumps(out[-1]), flush=True)
        return result

    from truthloop.ml.generate import graph_text_encoders

    arguments = painter.call_arguments(PROMPT, None)
    with torch.inference_mode():
        def encode():
            return pipe.encode_prompt(PROMPT, device=DEVICE, num_images_per_prompt=1,
                                      do_classifier_free_guidance=True)

        eager = stage("prompt encoding (both text encoders, with guidance)", encode)
        if DEVICE == "cuda":  # what a CUDA painter installs (graph_text_encoders)
            wrappers = graph_text_encoders(pipe)
            try:
                encode()  # first sight: eager; the stage's first call captures, then replays
                graphed = stage("prompt encoding, text encoders graphed", encode)
            finally:
                for wrapper in wrappers:
                    wrapper.uninstall()
            out[-1]["same embeddings"] = all(
                torch.equal(a, b) for a, b in zip(eager, graphed) if a is not None)
            out[-1]["replays"] = [wrapper.replays for wrapper in wrappers]

        def latents():
            arguments["generator"] = painter._stream.generator()
            return pipe(**arguments, output_type="latent").images

        latent = stage("denoising loop, output_type=latent (incl. prompt encoding)", latents)
        vae = pipe.vae
        scaled = latent / vae.config.scaling_factor

        def decode(dtype):
            def call():
                vae.to(dtype)
                return vae.decode(scaled.to(dtype), return_dict=False)[0]
            return call

        stage("VAE decode in fp32 (force_upcast, as the pipeline does)", decode(torch.float32))
        stage(f"VAE decode in {pipe.unet.dtype}", decode(pipe.unet.dtype))
        vae.to(pipe.unet.dtype)
    return out


def profile_one(painter, steps: int) -> dict:
    """One loop image under torch.profiler: where the GPU's time went, and whether it waited."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    painter.paint(PROMPT, lambda step, total: None)
    sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        painter.paint(PROMPT, lambda step, total: None)
        sync()
    found = tally(prof, time.perf_counter() - start)
    found["launches_per_step"] = round(found["kernel_launches"] / steps, 1)
    found["host_waits_per_step"] = {k: round(v / steps, 2)
                                    for k, v in found["host_waits"].items() if v}
    return found


def tally(prof, wall: float, top: int = 10) -> dict:
    """What a torch.profiler trace over `wall` seconds says (bench_captioners' profile too): the
    GPU's kernel time, by kind and the longest kernels; the kernel and graph launches; the host's
    waits for the device (SYNC_CALLS); and how often, and how long, the host sat in each CUDA
    runtime call."""
    from torch.autograd import DeviceType

    from bench_hardware import kernel_kind

    kernels: dict[str, float] = {}
    host = {name: 0 for name in SYNC_CALLS}
    launches = graph_launches = 0
    runtime: dict[str, list] = {}
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.time_range.elapsed_us()
            continue
        if event.name in host:
            host[event.name] += 1
        if event.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"):
            launches += 1
        elif event.name == "cudaGraphLaunch":
            graph_launches += 1
        if event.name.startswith("cu"):
            calls = runtime.setdefault(event.name, [0, 0.0])
            calls[0] += 1
            calls[1] += event.time_range.elapsed_us() / 1e6
    busy = sum(kernels.values()) / 1e6
    kinds: dict[str, float] = {}
    for name, micros in kernels.items():
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + micros / 1e6
    longest = sorted(kernels.items(), key=lambda kv: -kv[1])[:top]
    return {"wall_s": round(wall, 3), "gpu_kernel_s": round(busy, 3),
            "gpu_busy_share": round(busy / wall, 3) if wall else None,
            "by_kind_s": {k: round(v, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "kernel_launches": launches, "graph_launches": graph_launches,
            "host_waits": host,
            "runtime_calls": {k: {"calls": n, "host_s": round(t, 4)} for k, (n, t) in
                              sorted(runtime.items(), key=lambda kv: -kv[1][1])[:8]},
            "top_kernels": [{"name": n[:110], "kind": kernel_kind(n), "s": round(v / 1e6, 4)}
                            for n, v in longest]}


def main() -> int:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="sdxl,flux2-klein,z-image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints on the CPU")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--fused", action="store_true",
                        help="a `loop compiled, fused` row: fused QKV and channels-last too")
    parser.add_argument("--paths", default="plain,eager,graphs,compiled,autotune",
                        help="which rows (a GPU call's time is short: e.g. graphs,compiled "
                             "--batch 32 for what a sweep draws); the notes compare with the "
                             "eager row when there is one")
    parser.add_argument("--no-stages", action="store_true", help="no SDXL stages")
    parser.add_argument("--batch-only", action="store_true",
                        help="with --batch: the batched rows without their batch-1 rows")
    parser.add_argument("--batch", type=int, default=0, metavar="N",
                        help="`batched N` rows: one pipeline call for N trajectories, as "
                             "`sweep --batch N` draws (graphed, and compiled on a GPU)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    from truthloop.ml.backends import quiet_libraries

    quiet_libraries()
    DEVICE = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if DEVICE == "cpu" and not args.tiny:
        print("no GPU here: pass --tiny for the CPU dry run", file=sys.stderr)
        return 2
    import diffusers

    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (tiny checkpoints)"
    result: dict = {"device": gpu, "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "date": time.strftime("%Y-%m-%d"), "rows": [], "sdxl_stages": [],
                    "profile": {}}
    print(f"# {gpu}; torch {torch.__version__}, diffusers {diffusers.__version__}", flush=True)
    for family in [f for f in args.families.split(",") if f]:
        try:
            rows, pipe, painter = family_rows(family, args)
            result["rows"] += rows
            if family == "sdxl" and not args.no_stages:
                result["sdxl_stages"] = sdxl_stages(pipe, painter, args)
            if not args.no_profile:
                steps = (painter.module.image_tokens(pipe) if hasattr(painter, "model")
                         else painter.config.steps)  # (an image token a step, for janus-pro)
                result["profile"][family] = profile_one(painter, steps)
                print(json.dumps({family: result["profile"][family]}), flush=True)
            del pipe, painter
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
        except Exception as error:  # one family failing must not hide the others' figures
            result["rows"].append({"family": family, "error": f"{type(error).__name__}: "
                                                              f"{error}"[:300]})
            print(json.dumps(result["rows"][-1]), flush=True)
    print()
    print(f"{'family':<12} {'path':<24} {'first s':>8} {'s/image':>8}  note")
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['family']:<12} {row.get('path', '')[:24]:<24} error: "
                  f"{row['error'][:90]}")
            continue
        if "skipped" in row:
            print(f"{row['family']:<12} {row['path']:<24} skipped: {row['skipped']}")
            continue
        print(f"{row['family']:<12} {row['path']:<24} {row['first_s']:>8.2f} "
              f"{row['s_per_image']:>8.3f}  {row['note']}")
    for stage in result["sdxl_stages"]:
        extra = {k: v for k, v in stage.items() if k not in ("stage", "s")}
        print(f"sdxl stage: {stage['stage']:<62} {stage['s']:>8.4f} s"
              + (f"  {extra}" if extra else ""))
    for family, prof in result["profile"].items():
        print(f"{family} profile: wall {prof['wall_s']} s, GPU kernels {prof['gpu_kernel_s']} s "
              f"(busy {prof['gpu_busy_share']}), {prof['launches_per_step']} launches/step, "
              f"host waits/step {prof['host_waits_per_step']}")
        print(f"   by kind: {prof['by_kind_s']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
