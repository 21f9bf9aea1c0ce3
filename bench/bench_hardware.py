"""Closer to the hardware's limit (issue 24): the compiled single run against the seed stack, FP8
drawing in lockstep batches, and the UNet's share of the card's dense fp16 peak. Full-size
random-weight models (bench/fullsize.py); one part per call, each sized for one 10-minute call on
a fresh box (each torch.compile there costs 50-150 s):

    python bench/bench_hardware.py --part peak        # UNet at batch 16/32: eager, compiled, graphs, FP8, ...
    python bench/bench_hardware.py --part fp8         # --batch 16 + FP8 vs the single-run default
    python bench/bench_hardware.py --part iteration   # seed stack vs truthloop --compile, PNG save apart
    python bench/bench_hardware.py --part flops       # FLOPs of the UNet step and VAE decode (meta device)
    python bench/bench_hardware.py --part all --tiny  # CPU dry run of every part, tiny models (~3 min)

Every part prints its rows as they are measured (a timeout still leaves numbers), then a table,
and writes the numbers as JSON (--json). A part stops starting new work once --budget-s seconds
have gone (a compile is estimated at --compile-estimate-s), so the table is printed before the
call's time limit. What each part measures: docs/hardware-limit.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.bench_batch as bench_batch  # noqa: E402 (sets CUBLAS_WORKSPACE_CONFIG before torch)
from bench.bench_batch import Stack, compare, run_variant, trajectory_configs  # noqa: E402
from bench.bench_iteration import (  # noqa: E402
    DEVICE, DTYPE, image_hash, our_graphs_off, peak_gib, reset_peak, seed_interrogator, sync,
    varied_images,
)
import torch  # noqa: E402

from truthloop.config import SEED_NEGATIVE_PROMPT, RunConfig, apply_preset  # noqa: E402
from truthloop.ml.backends import quiet_libraries  # noqa: E402

RESULTS: dict = {}
TABLES: list["Report"] = []
STARTED = time.perf_counter()

# Dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets.
DENSE_FP16_PEAK = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0,
                   "GH200": 989.0, "A100": 312.0, "L40S": 362.0}


class Report:
    """One table: rows printed as they come (flushed), the whole table again at the end."""

    def __init__(self, title: str, columns: list[str]):
        self.title, self.columns, self.rows = title, columns, []
        TABLES.append(self)

    def add(self, *values, note: str | None = None) -> None:
        """Cells from the left; `note`: the last column's."""
        cells = ["" if v is None else str(v) for v in values]
        cells += [""] * (len(self.columns) - len(cells))
        if note is not None:
            cells[-1] = note
        self.rows.append(cells)
        print("  " + " | ".join(f"{c}={v}" for c, v in zip(self.columns, cells) if v),
              flush=True)

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=self.title)
        for column in self.columns:
            table.add_column(column, overflow="fold")
        for cells in self.rows:
            table.add_row(*cells)
        Console(width=200).print(table)


class Budget:
    """Seconds left of this call; work that would not fit is skipped (said in the table)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - STARTED)

    def allows(self, estimate: float, what: str) -> bool:
        if self.left() >= estimate:
            return True
        print(f"  skipped {what}: ~{estimate:.0f} s needed, {self.left():.0f} s of --budget-s "
              f"left", flush=True)
        RESULTS.setdefault("skipped", []).append(what)
        return False


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def machine() -> str:
    import platform

    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else (platform.processor() or "cpu")
    return f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def dense_fp16_peak(override: float | None) -> float | None:
    if override:
        return override
    if DEVICE != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    for key, value in DENSE_FP16_PEAK.items():  # the more specific names first
        if key in name:
            return value
    return None


def model_paths(args) -> dict[str, str]:
    """The checkpoints: tiny ones (--tiny), else the full-size random-weight ones on disk."""
    if args.tiny:
        from truthloop.ml.tiny import build_tiny_models

        tiny = build_tiny_models()
        return {"sd": tiny.generator_model, "blip": tiny.caption_model, "clip": tiny.clip_model}
    from bench.fullsize import build_all

    start = time.perf_counter()
    paths = build_all(Path(args.work) / "models", log=log)
    log(f"full-size checkpoints ready in {time.perf_counter() - start:.1f} s")
    return paths


def sd_only_path(args) -> str:
    """SD2's checkpoint alone (the peak part needs no BLIP or CLIP): built if missing."""
    if args.tiny:
        return model_paths(args)["sd"]
    root = Path(args.work) / "models"
    if (root / "COMPLETE").exists() or (root / "sd2" / "unet" / "config.json").exists():
        return str(root / "sd2")
    from bench.fullsize import _build_sd2
    from truthloop.ml.tiny import _write_clip_tokenizer

    start = time.perf_counter()
    torch.manual_seed(0)
    _write_clip_tokenizer(root / "clip-tokenizer")
    _build_sd2(root / "sd2", root / "clip-tokenizer")
    log(f"built the full-size SD2 checkpoint in {time.perf_counter() - start:.1f} s")
    return str(root / "sd2")


def article_config(args, paths: dict[str, str]) -> RunConfig:
    base = RunConfig(start_prompt="-")
    apply_preset(base, "article")
    if args.tiny:
        base.models.models, base.models.device = "tiny", "cpu"
        base.generate.steps = 10
    else:
        base.models.generator_model, base.models.caption_model, base.models.clip_model = \
            paths["sd"], paths["blip"], paths["clip"]
    return base


# -- FP8 --------------------------------------------------------------------------------------
def to_fp8(unet, granularity: str, tiny: bool) -> dict:
    """truthloop.ml.fp8's conversion. A CPU dry run (--tiny) stands torchao's GPU check aside so
    its float8 arithmetic runs through torch's CPU `_scaled_mm`: the code path, not the speed."""
    from truthloop.ml import fp8

    if DEVICE == "cpu" and tiny:
        import torchao.quantization.quant_api as quant_api

        quant_api._check_hardware_support = lambda granularities: None
        if "_truthloop_fp8" not in unet.__dict__:
            fp8._quantize_linears(unet, granularity)
        return unet.__dict__["_truthloop_fp8"].to_dict()
    return fp8.convert_unet_to_fp8(unet, granularity).to_dict()


def load_unet(sd_path: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet",
                                                torch_dtype=DTYPE).to(DEVICE).eval()


# -- FLOPs ------------------------------------------------------------------------------------
def count_flops(sd_path: str, steps: int = 50) -> dict:
    """FLOPs of one UNet call at CFG batch 2 (one image) and 4, and of one VAE decode, counted by
    torch.utils.flop_counter on the checkpoint's own configs built on the meta device (no memory,
    no weights). Matmuls, convolutions and attention; norms and elementwise work are not FLOPs
    it counts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    unet_config = UNet2DConditionModel.load_config(sd_path, subfolder="unet")
    vae_config = AutoencoderKL.load_config(sd_path, subfolder="vae")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config).to(torch.float16)
        vae = AutoencoderKL.from_config(vae_config).to(torch.float16)
    side = unet.config.sample_size
    out = {"latent": side, "by_op": {}}
    for rows in (2, 4):
        with torch.device("meta"):
            sample = torch.randn(rows, unet.config.in_channels, side, side, dtype=torch.float16)
            timestep = torch.tensor(981)
            text = torch.randn(rows, 77, unet.config.cross_attention_dim, dtype=torch.float16)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(sample, timestep, encoder_hidden_states=text)
        out[f"unet_rows_{rows}"] = counter.get_total_flops()
        if rows == 2:
            out["by_op"] = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    with torch.device("meta"):
        latents = torch.randn(1, vae.config.latent_channels, side, side, dtype=torch.float16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vae.decode(latents)
    out["vae_decode"] = counter.get_total_flops()
    out["unet_per_row"] = out["unet_rows_4"] - out["unet_rows_2"]
    out["steps"] = steps
    out["per_image"] = steps * out["unet_rows_2"] + out["vae_decode"]
    return out


def part_flops(args, budget: Budget) -> dict:
    sd = sd_only_path(args)
    flops = count_flops(sd, args.steps)
    RESULTS["flops"] = flops
    report = Report(f"FLOPs (torch.utils.flop_counter, meta device) — {machine()}",
                    ["what", "TFLOP", "note"])
    t = lambda f: f"{f / 1e12:.3f}"  # noqa: E731
    linear = flops["unet_rows_4"] / flops["unet_rows_2"]
    report.add("UNet call, CFG batch 2 (one image)", t(flops["unet_rows_2"]),
               "by op: " + ", ".join(f"{k.split('.')[-1]} {v / 1e12:.3f}" for k, v in
                                     sorted(flops["by_op"].items(), key=lambda kv: -kv[1])))
    report.add("UNet call, CFG batch 4 (two images)", t(flops["unet_rows_4"]),
               f"{linear:.4f}x batch 2 (linear in the batch)")
    report.add("VAE decode, one image", t(flops["vae_decode"]))
    report.add(f"one image: {flops['steps']} steps with CFG + VAE decode", t(flops["per_image"]),
               f"latents {flops['latent']}x{flops['latent']} (the issue says ~221 TFLOP)")
    return flops


# -- peak -------------------------------------------------------------------------------------
# name -> (UNet kind, compiled, CUDA graph, attention backend)
PEAK_VARIANTS = {
    "eager": ("fp16", False, False, None),
    "eager-graph": ("fp16", False, True, None),
    "eager-cudnn": ("fp16", False, False, "cudnn"),
    "compiled": ("fp16", True, False, None),
    "compiled-graph": ("fp16", True, True, None),
    "fp8-eager": ("fp8-row", False, False, None),
    "fp8-compiled": ("fp8-row", True, False, None),
    "fp8-compiled-graph": ("fp8-row", True, True, None),
    "cl-compiled": ("channels-last", True, False, None),
    "cl-compiled-graph": ("channels-last", True, True, None),
    "fp8t-compiled-graph": ("fp8-tensor", True, True, None),
    "tuned-compiled-graph": ("tuned", True, True, None),
    "autotune-compiled-graph": ("autotune", True, True, None),
    "tuned-cd-compiled-graph": ("tuned-cd", True, True, None),
}
# UNet kinds compiled with inductor options of their own (the inductor backend only).
# "tuned": diffusers' recipe for a compiled SD UNet (its "accelerate inference of text-to-image
# diffusion models" tutorial, since removed from diffusers' docs): channels-last weights, fused
# q/k/v projections, 1x1 convolutions as matmuls, no epilogue fusion; "tuned-cd" adds its
# coordinate-descent tuning of the generated kernels.
# "autotune": inductor's max-autotune (Triton GEMM and convolution templates against cuBLAS and
# cuDNN, the fastest kept per shape), on today's UNet; its own graphs come from our wrapper.
COMPILE_OPTIONS = {
    "tuned": {"conv_1x1_as_mm": True, "epilogue_fusion": False},
    # The guide's coordinate_descent_tuning too: its compile of the SD2-768 UNet at batch 16 ran
    # past 530 s on an H100 (2026-12-06) and never finished in a call.
    "tuned-cd": {"conv_1x1_as_mm": True, "epilogue_fusion": False,
                 "coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True},
    "autotune": {"max_autotune": True, "triton.cudagraphs": False},
}
CHANNELS_LAST = {"channels-last", "tuned", "tuned-cd"}
PEAK_LABELS = {
    "eager": "eager (fp16, SDPA flash)",
    "eager-graph": "eager + CUDA graph (truthloop's default)",
    "eager-cudnn": "eager, cuDNN attention",
    "compiled": "torch.compile",
    "compiled-graph": "torch.compile + CUDA graph (--batch today)",
    "fp8-eager": "FP8 row-wise, eager",
    "fp8-compiled": "FP8 row-wise, torch.compile",
    "fp8-compiled-graph": "FP8 row-wise, torch.compile + CUDA graph",
    "cl-compiled": "channels-last, torch.compile",
    "cl-compiled-graph": "channels-last, torch.compile + CUDA graph",
    "fp8t-compiled-graph": "FP8 per-tensor, torch.compile + CUDA graph",
    "tuned-compiled-graph": "channels-last, fused qkv, 1x1 conv as mm + graph",
    "autotune-compiled-graph": "torch.compile max-autotune + CUDA graph",
    "tuned-cd-compiled-graph": "tuned + coordinate-descent tuning + graph",
}
CORE = ["eager", "eager-graph", "compiled", "compiled-graph", "fp8-compiled",
        "fp8-compiled-graph", "fp8-eager", "eager-cudnn"]
# max-autotune and coordinate-descent tuning run only when named in --variants: their compiles
# can outlast a 10-minute call (the budget counts a compile as --compile-estimate-s).
EXTRAS = ["cl-compiled", "cl-compiled-graph", "fp8t-compiled-graph", "tuned-compiled-graph"]


class PeakBench:
    """The UNet alone, called as the pipeline calls it (sample, timestep, text), at batch 2B."""

    def __init__(self, args, sd_path: str, flops: dict, peak: float | None):
        self.args, self.flops, self.peak = args, flops, peak
        self.sd_path = sd_path
        self.unets = {"fp16": load_unet(sd_path)}
        self.compiled: dict = {}  # UNet kind -> its torch.compile'd forward
        self.compiled_shapes: set = set()  # (kind, rows) already compiled
        self.fp8: dict = {}
        self.vae_seconds: dict = {}
        self.compile_seconds: list[float] = []
        config = self.unets["fp16"].config
        self.side, self.channels, self.cross = (config.sample_size, config.in_channels,
                                                config.cross_attention_dim)

    def unet(self, kind: str):
        if kind not in self.unets:
            base = self.unets["fp16"]
            unet = copy.deepcopy(base)
            if kind in CHANNELS_LAST:
                unet.to(memory_format=torch.channels_last)
            if kind.startswith("tuned"):
                unet.fuse_qkv_projections()
            if kind.startswith("fp8"):
                self.fp8[kind] = to_fp8(unet, kind.split("-")[1], self.args.tiny)
                log(f"{kind}: {self.fp8[kind]}")
            self.unets[kind] = unet
        return self.unets[kind]

    def forward(self, kind: str, compiled: bool):
        unet = self.unet(kind)
        if not compiled:
            return unet.forward
        if kind not in self.compiled:
            # As truthloop's compile_pipeline compiles it: the UNet's forward, bound.
            options = COMPILE_OPTIONS.get(kind) if self.args.compile_backend == "inductor" \
                else None
            self.compiled[kind] = torch.compile(unet.__class__.forward.__get__(unet),
                                                backend=self.args.compile_backend,
                                                options=options)
        return self.compiled[kind]

    def inputs(self, rows: int, channels_last: bool):
        generator = torch.Generator(DEVICE).manual_seed(0)
        sample = torch.randn(rows, self.channels, self.side, self.side, generator=generator,
                             device=DEVICE, dtype=DTYPE)
        if channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        # A 0-d int64 timestep, as the pipeline passes one of scheduler.timesteps.
        timestep = torch.tensor(981, device=DEVICE)
        text = torch.randn(rows, 77, self.cross, generator=generator, device=DEVICE, dtype=DTYPE)
        return sample, timestep, text

    def caller(self, name: str, graphs: bool = True):
        """The variant's UNet call; graphs=False: the same without its CUDA graph (to profile)."""
        from truthloop.ml.cudagraph import CudaGraphed

        kind, compiled, graphed, attention = PEAK_VARIANTS[name]
        graphed = graphed and graphs
        forward = self.forward(kind, compiled)

        def call(sample, timestep, text):
            return forward(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

        if attention == "cudnn":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            if DEVICE != "cuda":
                raise RuntimeError("cuDNN attention needs a CUDA GPU")

            plain = call

            def call(sample, timestep, text):  # noqa: F811
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return plain(sample, timestep, text)
        if graphed:
            return CudaGraphed(call, name=name)
        return call

    def estimate(self, name: str, size: int) -> float:
        kind, compiled, _, _ = PEAK_VARIANTS[name]
        if compiled and (kind, 2 * size) not in self.compiled_shapes:
            seen = max(self.compile_seconds, default=0.0)
            return max(self.args.compile_estimate_s, 1.2 * seen) + 15
        return 15.0

    def measure(self, name: str, size: int) -> dict:
        kind, compiled, graphed, attention = PEAK_VARIANTS[name]
        rows = 2 * size
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        reset_peak()
        call = self.caller(name)
        sample, timestep, text = self.inputs(rows, kind in CHANNELS_LAST)
        with torch.inference_mode():
            sync()
            start = time.perf_counter()
            call(sample, timestep, text)  # compiles (compiled), runs eagerly (graphed)
            sync()
            first = time.perf_counter() - start
            if compiled and (kind, rows) not in self.compiled_shapes:
                self.compiled_shapes.add((kind, rows))
                self.compile_seconds.append(first)
            for _ in range(2):  # a graph captures at its second call
                call(sample, timestep, text)
            sync()
            start = time.perf_counter()
            for _ in range(self.args.calls):
                out = call(sample, timestep, text)
            sync()
            seconds = (time.perf_counter() - start) / self.args.calls
        failures = getattr(call, "failures", None)
        flop = self.flops["unet_rows_2"] / 2 * rows
        result = {"variant": name, "label": PEAK_LABELS[name], "size": size, "rows": rows,
                  "call_s": seconds, "first_call_s": first, "peak_gib": peak_gib(),
                  "tflops": flop / seconds / 1e12, "unet_s_per_image": self.args.steps * seconds /
                  size, "finite": bool(torch.isfinite(out).all()),
                  "graph_failures": {str(k): v for k, v in failures.items()} if failures else None,
                  "replays": getattr(call, "replays", None)}
        del call, out
        return result

    def vae(self, compiled: bool) -> float | None:
        """One VAE decode at batch 1 (a lockstep batch decodes image by image)."""
        key = "compiled" if compiled else "eager"
        if key in self.vae_seconds:
            return self.vae_seconds[key]
        from diffusers import AutoencoderKL

        vae = getattr(self, "_vae", None)
        if vae is None:
            vae = self._vae = AutoencoderKL.from_pretrained(
                self.sd_path, subfolder="vae", torch_dtype=DTYPE).to(DEVICE).eval()
        if compiled:
            vae.decoder.compile(backend=self.args.compile_backend)
        latents = torch.randn(1, vae.config.latent_channels, self.side, self.side, device=DEVICE,
                              dtype=DTYPE)
        with torch.inference_mode():
            sync()
            start = time.perf_counter()
            vae.decode(latents / vae.config.scaling_factor, return_dict=False)
            sync()
            first = time.perf_counter() - start
            times = []
            for _ in range(3):
                sync()
                start = time.perf_counter()
                vae.decode(latents / vae.config.scaling_factor, return_dict=False)
                sync()
                times.append(time.perf_counter() - start)
        self.vae_seconds[key] = statistics.median(times)
        log(f"VAE decode ({key}): {self.vae_seconds[key] * 1000:.1f} ms; first call "
            f"{first:.1f} s")
        return self.vae_seconds[key]


KERNEL_KINDS = (  # (kind, substrings of a lowercased kernel name); the first match wins
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("conv layout", ("nchwtonhwc", "nhwctonchw")),
    ("conv", ("conv", "fprop", "implicit_gemm", "winograd", "dgrad")),
    # float8 GEMMs too (their names carry e4m3): before the FP8 scaling's casts
    ("gemm", ("gemm", "nvjet", "cutlass", "matmul", "scaled_mm", "xmma", "wgmma", "triton_tem",
              "aten::addmm", "aten::mm", "aten::bmm", "aten::linear")),
    ("norm", ("norm", "welford")),  # a norm fused with an activation's amax counts here
    ("fp8 scaling", ("amax", "float8", "e4m3", "quantize")),
    ("copies", ("memcpy", "memset", "aten::copy_")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "elementwise/other"


def profile_kernels(call, inputs, calls: int = 2) -> dict:
    """GPU time by kernel over `calls` calls (torch.profiler), grouped by kind. On a CPU (dry
    run), the aten ops' own CPU time instead."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with torch.inference_mode():
        call(*inputs)
        sync()
        with profile(activities=activities) as prof:
            for _ in range(calls):
                call(*inputs)
            sync()
    by_name: dict[str, float] = {}
    if DEVICE == "cuda":
        for event in prof.events():  # the kernels (and copies) themselves, as the GPU ran them
            if event.device_type == DeviceType.CUDA:
                by_name[event.name] = by_name.get(event.name, 0.0) + \
                    event.time_range.elapsed_us()
        if not by_name:  # another profiler build: the averages' own device time
            for event in prof.key_averages():
                if not event.key.startswith("aten::") and event.self_device_time_total > 0:
                    by_name[event.key] = event.self_device_time_total
    else:
        for event in prof.key_averages():
            if event.key.startswith("aten::"):
                by_name[event.key] = by_name.get(event.key, 0.0) + event.self_cpu_time_total
    total = sum(by_name.values()) or 1.0
    kinds: dict[str, float] = {}
    for name, micros in by_name.items():
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + micros
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:12]
    return {"ms_per_call": total / calls / 1000,
            "share": {k: v / total for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": [{"name": n[:140], "kind": kernel_kind(n), "ms_per_call": v / calls / 1000,
                     "share": v / total} for n, v in top]}


def part_peak(args, budget: Budget) -> None:
    import torch._dynamo

    # One static graph per batch size, as a sweep's padded batches get (batched.py does this).
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    sd = sd_only_path(args)
    flops = count_flops(sd, args.steps)
    RESULTS["flops"] = flops
    peak = dense_fp16_peak(args.peak_tflops)
    RESULTS["dense_fp16_peak_tflops"] = peak
    log(f"UNet call at CFG batch 2: {flops['unet_rows_2'] / 1e12:.3f} TFLOP; VAE decode "
        f"{flops['vae_decode'] / 1e12:.3f}; one image ({args.steps} steps + decode) "
        f"{flops['per_image'] / 1e12:.1f} TFLOP; dense fp16 peak {peak} TFLOP/s")
    RESULTS["fp8_attention"] = _fp8_attention()
    log(f"FP8 attention: {RESULTS['fp8_attention']}")
    bench = PeakBench(args, sd, flops, peak)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants \
        else CORE + (EXTRAS if args.extras else [])
    unknown = [v for v in chosen if v not in PEAK_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {list(PEAK_VARIANTS)}")
    # Named variants run in the order given; by default the core ones, and the extras last.
    core = chosen if args.variants else [v for v in chosen if v in CORE]
    extras = [v for v in chosen if v not in core]
    jobs = [(sizes[0], v) for v in core] + [("profile", sizes[0])] \
        + [(s, v) for s in sizes[1:] for v in core] + [(s, v) for s in sizes for v in extras]
    report = Report(
        f"the SD2-768 UNet at batch B (CFG: 2B rows), {args.steps} steps — {machine()}",
        ["variant", "B", "ms / UNet call", "TFLOP/s", "% dense fp16 peak", "s / image (UNet)",
         "s / image (drawing)", "drawing % peak", "1st call s", "peak GiB", "note"])
    RESULTS["peak"] = []

    def cells(result: dict) -> list:
        """A measured variant's row, its drawing columns with the VAE decode known by now."""
        compiled = PEAK_VARIANTS[result["variant"]][1]
        vae = bench.vae_seconds.get("compiled" if compiled else "eager",
                                    bench.vae_seconds.get("eager"))
        if vae is not None:
            result["drawing_s_per_image"] = result["unet_s_per_image"] + vae
            result["drawing_tflops"] = flops["per_image"] / result["drawing_s_per_image"] / 1e12
            result["vae_decode_s"] = vae
        drawing = result.get("drawing_s_per_image")
        notes = []
        if result["graph_failures"]:
            notes.append(f"graph capture FAILED: {result['graph_failures']}")
        if not result["finite"]:
            notes.append("non-finite output (random weights)")
        kind = PEAK_VARIANTS[result["variant"]][0]
        if kind.startswith("fp8"):
            notes.append(f"{bench.fp8[kind]['layers']} layers in float8")
        return [PEAK_LABELS[result["variant"]], result["size"], f"{result['call_s'] * 1000:.1f}",
                f"{result['tflops']:.0f}",
                f"{100 * result['tflops'] / peak:.1f}%" if peak else "-",
                f"{result['unet_s_per_image']:.3f}", f"{drawing:.3f}" if drawing else "-",
                f"{100 * result['drawing_tflops'] / peak:.1f}%" if peak and drawing else "-",
                f"{result['first_call_s']:.1f}", f"{result['peak_gib']:.1f}", "; ".join(notes)]

    if budget.allows(20, "the VAE decode (eager)"):
        _guarded(lambda: bench.vae(compiled=False), "VAE decode eager")
    try:
        for size, name in jobs:
            if size == "profile":
                profile_part(args, bench, name, budget)
                if any(PEAK_VARIANTS[v][1] for v in chosen) and budget.allows(
                        max(args.compile_estimate_s / 3, 30), "the VAE decode (compiled)"):
                    _guarded(lambda: bench.vae(compiled=True), "VAE decode compiled")
                continue
            if not budget.allows(bench.estimate(name, size), f"{name} at batch {size}"):
                RESULTS["peak"].append({"variant": name, "size": size, "skipped": "time budget"})
                report.add(PEAK_LABELS[name], size, note="skipped: time budget")
                continue
            log(f"{name} at batch {size} ...")
            try:
                result = bench.measure(name, size)
            except Exception as error:  # noqa: BLE001 - one variant's failure must not end it
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                RESULTS["peak"].append({"variant": name, "size": size, "error": message})
                report.add(PEAK_LABELS[name], size, note=f"FAILED {message}")
                continue
            RESULTS["peak"].append(result)
            report.add(*cells(result))
    finally:
        # The drawing columns again, with the compiled VAE decode measured after the first rows.
        report.rows = [cells(r) if "call_s" in r else
                       [PEAK_LABELS[r["variant"]], str(r["size"])] + [""] * 8 +
                       [f"FAILED {r['error']}" if "error" in r else f"skipped: {r['skipped']}"]
                       for r in RESULTS["peak"]]
        report.rows = [[str(c) for c in row] for row in report.rows]
        RESULTS["vae_decode_s"] = bench.vae_seconds
        RESULTS["fp8_layers"] = bench.fp8


def profile_part(args, bench: PeakBench, size: int, budget: Budget) -> None:
    """Where the UNet's time goes at batch `size`: kernels by kind, for the variants measured."""
    names = [v.strip() for v in args.profile.split(",") if v.strip()]
    report = Report(f"kernel time by kind, UNet at batch {size} (CFG: {2 * size} rows), "
                    f"torch.profiler — {machine()}",
                    ["variant", "GPU ms / call", "attention", "gemm", "conv", "conv layout",
                     "norm", "fp8 scaling", "elementwise/other", "copies", "top kernels"])
    RESULTS["profile"] = {}
    for name in names:
        kind, compiled, _, _ = PEAK_VARIANTS[name]
        if compiled and (kind, 2 * size) not in bench.compiled_shapes:
            continue  # not measured (skipped or failed): no compile just for the profile
        if not budget.allows(20, f"profile of {name}"):
            continue
        try:
            profile = profile_kernels(bench.caller(name, graphs=False),
                                      bench.inputs(2 * size, kind in CHANNELS_LAST))
        except Exception as error:  # noqa: BLE001
            report.add(PEAK_LABELS[name], f"FAILED {type(error).__name__}: {error}"[:200])
            continue
        RESULTS["profile"][name] = profile
        share = profile["share"]
        report.add(PEAK_LABELS[name], f"{profile['ms_per_call']:.1f}",
                   *[f"{100 * share.get(k, 0.0):.1f}%" for k in
                     ("attention", "gemm", "conv", "conv layout", "norm", "fp8 scaling",
                      "elementwise/other", "copies")],
                   "; ".join(f"{t['kind']} {100 * t['share']:.1f}% {t['name'][:60]}"
                             for t in profile["top"][:5]))


def _guarded(fn, what: str):
    try:
        return fn()
    except Exception as error:  # noqa: BLE001
        log(f"{what} FAILED: {type(error).__name__}: {error}")
        return None


def _has_torchao() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


# -- fp8: lockstep batches ---------------------------------------------------------------------
class HardwareStack(Stack):
    """bench_batch's Stack with a choice of UNet: the loaded fp16 one, or a float8 copy (loaded
    again from the checkpoint and converted before it is compiled or graphed)."""

    def __init__(self, base: RunConfig, sd_path: str, tiny: bool):
        super().__init__(base)
        self.sd_path, self.tiny = sd_path, tiny
        self.unets = {"fp16": self.pipe.unet}
        self.fp8: dict = {}
        self.vae_compiled = False

    def use_unet(self, kind: str) -> None:
        if kind not in self.unets:
            unet = load_unet(self.sd_path)
            self.fp8[kind] = to_fp8(unet, kind.split("-")[1], self.tiny)
            log(f"{kind}: {self.fp8[kind]}")
            self.unets[kind] = unet
        self.pipe.unet = self.unets[kind]
        for unet in self.unets.values():  # only the variant's own graphs in its peak memory
            graphed = unet.__dict__.get("_truthloop_graphed")
            if graphed is not None:
                graphed.graphed._graphs.clear()
                graphed.graphed._seen.clear()

    def factory(self, exact: bool, rank_threads: int | None = None):
        from truthloop.loop import Backends
        from truthloop.ml.batched import BatchedBackends
        from truthloop.ml.generate import Painter

        def build(config: RunConfig, emit):
            self._set_scheduler(config.generate.scheduler)
            unet = self.pipe.unet
            generate = RunConfig.from_dict(config.to_dict()).generate
            graphed = unet.__dict__.get("_truthloop_graphed")
            unet_compiled = graphed is not None and graphed.compiled
            compile_unet_only = generate.compile and not unet_compiled and self.vae_compiled
            if unet_compiled or compile_unet_only:
                # compile_pipeline would compile the VAE decoder a second time
                generate.compile = False
            painter = Painter(self.pipe, generate, self.backends.device,
                              cuda_graphs=config.models.cuda_graphs)
            if compile_unet_only and painter.graphed_unet is not None:
                painter.graphed_unet.use_forward(torch.compile(
                    unet.__class__.forward.__get__(unet)), compiled=True)
            if config.generate.compile and self.backends.device == "cuda":
                self.vae_compiled = True
            b = self.backends
            backends = Backends(captioner=b.captioner, painter=painter, embedder=b.embedder,
                                device=b.device, details=b.details, loaded=b.loaded)
            return BatchedBackends(backends, config, exact=exact, rank_threads=rank_threads)
        return build


def part_fp8(args, budget: Budget) -> None:
    paths = model_paths(args)
    base = article_config(args, paths)
    stack = HardwareStack(base, paths["sd"], args.tiny)
    log(f"models loaded in {stack.load_seconds:.1f} s ({machine()})")
    RESULTS["fp8_attention"] = _fp8_attention()
    log(f"FP8 attention: {RESULTS['fp8_attention']}")
    bench_batch.RESULTS.update(machine=machine(), args=vars(args))
    RESULTS["batch"] = bench_batch.RESULTS
    order: list[str] = []
    size = args.batch
    granularities = [g.strip() for g in args.fp8_granularity.split(",") if g.strip()]

    compiled_walls: list[float] = []  # wall time of each compiled variant so far

    def variant(label, size_, exact, compile_=False, unet="fp16"):
        iterations = args.reference_iterations if label == "single default" \
            else args.iterations
        count = args.trajectories if exact else max(args.trajectories, size_)
        need = count * iterations * (1.6 if exact else 0.9)
        if compile_:  # a compile (the first also compiles the VAE decoder), then the images
            need = 1.1 * compiled_walls[-1] if compiled_walls else args.compile_estimate_s + need
        if not budget.allows(need, label):
            return None
        configs = []
        for config in trajectory_configs(base, count, iterations):
            config.generate.compile = compile_
            configs.append(config)
        stack.use_unet(unet)
        order.append(label)
        log(f"{label} ...")
        try:
            result = run_variant(stack, Path(args.work), label, size_, exact, configs, args.skip)
        except Exception as error:  # noqa: BLE001 - the next variants still run
            log(f"{label} FAILED: {type(error).__name__}: {error}")
            return None
        if compile_ and not exact:
            compiled_walls.append(result["wall_s"])
        if label != "single default":
            result["vs_single_default"] = compare(bench_batch.RESULTS["variants"]["single default"],
                                                  result)
            c = result["vs_single_default"]
            log(f"{label}: {c['identical_trajectories']}/{c['trajectories']} trajectories "
                f"identical, {c['differing_prompts']}/{c['captioned_iterations']} prompts differ; "
                f"first images max {c['first_image_max_diff']}/255")
        if unet != "fp16":
            result["fp8"] = stack.fp8[unet]
        return result

    try:
        reference = variant("single default", 1, True)
        if reference is None:
            return
        for granularity in granularities:
            variant(f"batch {size} --compile + FP8 ({granularity})", size, False, True,
                    f"fp8-{granularity}")
        if args.fp16_batch:
            variant(f"batch {size} --compile", size, False, True, "fp16")
        if args.fp8_single:
            variant(f"single --compile + FP8 ({granularities[0]})", 1, True, True,
                    f"fp8-{granularities[0]}")
    finally:
        bench_batch.print_table(
            f"--batch {size} + FP8 vs the single-run default: {args.trajectories} trajectories × "
            f"{args.iterations} images (reference {args.reference_iterations}) — {machine()}",
            order)


def _fp8_attention() -> str:
    if not _has_torchao():
        return "torchao missing"
    from truthloop.ml.fp8 import fp8_attention_status

    return fp8_attention_status()


# -- iteration: seed stack vs truthloop --compile ----------------------------------------------
def seed_loop(stack: Stack, start_image, iterations: int) -> dict:
    """The article script's loop on the same models: clip-interrogator 0.6.0 best at chunk size
    400, a plain diffusers call with one shared generator seeded 42, the UNet launched eagerly."""
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
    pipe, g = stack.pipe, stack.base.generate
    generator = torch.Generator("cuda" if DEVICE == "cuda" else "cpu").manual_seed(g.seed)
    image, prompts, times = start_image, [], []
    for _ in range(iterations):
        sync()
        start = time.perf_counter()
        prompt = seed_ci.interrogate(image)
        with our_graphs_off(pipe):
            image = pipe(prompt, negative_prompt=SEED_NEGATIVE_PROMPT, generator=generator,
                         num_inference_steps=g.steps, width=g.width, height=g.height).images[0]
        sync()
        times.append(time.perf_counter() - start)
        prompts.append(prompt)
        log(f"seed stack: {times[-1]:.2f} s  {prompt[:70]!r}")
    return {"prompts": prompts, "times": times, "last_hash": image_hash(image)}


def truthloop_run(stack: Stack, base: RunConfig, start_path: Path, start_image, label: str,
                  compile_: bool, iterations: int, work: Path) -> dict:
    """`truthloop run START.png --preset article` (with --compile or not) as the CLI runs it: the
    real loop and run directory, the models already loaded. Per iteration: the wall time between
    the loop's IterationDone events and the loop's own stage timings (save = the PNG write)."""
    import shutil

    from truthloop import events as ev
    from truthloop.loop import Backends, TruthLoop
    from truthloop.ml.generate import Painter

    config = RunConfig.from_dict(base.to_dict())
    config.start_prompt, config.input_image = None, str(start_path)
    config.generate.compile = compile_
    config.loop.max_iters = iterations
    config.loop.confirm_iters = 10 ** 6  # a repeat must not end the run before max_iters
    stack._set_scheduler("default")
    made: dict = {}

    def factory(config: RunConfig, emit) -> Backends:
        painter = Painter(stack.pipe, config.generate, stack.backends.device,
                          cuda_graphs=config.models.cuda_graphs)
        made["painter"] = painter
        b = stack.backends
        return Backends(captioner=b.captioner, painter=painter, embedder=b.embedder,
                        device=b.device, details=b.details, loaded=b.loaded)

    stamps: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, ev.IterationDone):
            sync()
            stamps.append(time.perf_counter())
            record = event.record
            since = stamps[-1] - (stamps[-2] if len(stamps) > 1 else begun)
            log(f"{label} it {record.index}: {since:.2f} s {dict(record.timings or {})}")
        elif isinstance(event, ev.Ready):
            stamps.clear()

    run_dir = work / "runs" / f"iteration-{label.replace(' ', '-').strip('-')}"
    shutil.rmtree(run_dir, ignore_errors=True)
    loop = TruthLoop(config, run_dir, factory, on_event=on_event, input_image=start_image)
    begun = time.perf_counter()
    loop.run()
    walls = [stamps[0] - begun] + [b - a for a, b in zip(stamps, stamps[1:])] if stamps else []
    records = loop.records
    return {"label": label, "walls": walls,
            "timings": [dict(r.timings or {}) for r in records],
            "prompts": [r.fed_prompt for r in records], "painter": made.get("painter"),
            "run_dir": str(run_dir)}


def paint_breakdown(stack: Stack, painter, prompt: str) -> dict:
    """Where one compiled drawing's time goes: the UNet's steps (as graphed/compiled in the
    run), the VAE decode, the prompt encoding, and the rest (scheduler, hooks, image to PIL);
    and the PNG encode of the image (the save's bulk)."""
    from truthloop.store import png_bytes

    pipe, g = stack.pipe, painter.config
    steps = g.steps
    side = pipe.unet.config.sample_size if g.height is None else g.height // 8
    rows = 2 if g.guidance > 1 else 1
    generator = torch.Generator(DEVICE).manual_seed(0)
    sample = torch.randn(rows, pipe.unet.config.in_channels, side, side, generator=generator,
                         device=DEVICE, dtype=pipe.unet.dtype)
    text = torch.randn(rows, 77, pipe.unet.config.cross_attention_dim, generator=generator,
                       device=DEVICE, dtype=pipe.unet.dtype)
    timestep = torch.tensor(981, device=DEVICE)
    latents = torch.randn(1, pipe.vae.config.latent_channels, side, side, device=DEVICE,
                          dtype=pipe.vae.dtype)

    def median_of(fn, repeat=3):
        fn()
        times = []
        for _ in range(repeat):
            sync()
            start = time.perf_counter()
            value = fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times), value

    with torch.inference_mode():
        paint, image = median_of(lambda: painter.paint(prompt, lambda s, t: None))
        unet, _ = median_of(lambda: [pipe.unet(sample, timestep, encoder_hidden_states=text)
                                     for _ in range(steps)])
        vae, _ = median_of(lambda: pipe.vae.decode(latents / pipe.vae.config.scaling_factor,
                                                   return_dict=False))
        encode, _ = median_of(lambda: pipe.encode_prompt(
            prompt, pipe._execution_device, 1, rows == 2, g.negative_prompt or None))
    png, data = median_of(lambda: png_bytes(image))
    return {"paint": paint, "unet_steps": unet, "vae_decode": vae, "encode_prompt": encode,
            "rest": paint - unet - vae - encode, "png_encode": png, "png_bytes": len(data)}


def part_iteration(args, budget: Budget) -> None:
    paths = model_paths(args)
    base = article_config(args, paths)
    stack = Stack(base)
    log(f"models loaded in {stack.load_seconds:.1f} s ({machine()})")
    work = Path(args.work)
    start_path = work / "iteration-start.png"
    start_image = varied_images(3)[2]
    start_image.save(start_path)
    report = Report(f"one iteration at the article preset (best mode, chunk size 400, "
                    f"{base.generate.steps} steps, shared generator) — {machine()}",
                    ["what", "s / iteration", "× seed stack", "without the PNG save",
                     "× seed stack (no save)", "prompts vs seed stack", "note"])
    stages = Report(f"where an iteration's time goes (medians of iterations {args.skip}..) — "
                    f"{machine()}", ["run", "caption", "generate", "similarity", "save (PNG)",
                                     "loop total", "wall"])
    seed = None
    if budget.allows(args.seed_iterations * (3 if args.tiny else 9), "the seed stack"):
        seed = seed_loop(stack, start_image, args.seed_iterations)
        seed["iteration_s"] = statistics.median(seed["times"][1:] or seed["times"])
        RESULTS["seed_stack"] = seed
        report.add("seed stack (clip-interrogator + plain diffusers)",
                   f"{seed['iteration_s']:.3f}", "1.00×", note="each " + " ".join(
                       f"{t:.2f}" for t in seed["times"]))
    runs = [("default", False, 20 + args.iterations * 3)]
    if not args.no_compile:
        runs.append(("--compile", True, args.compile_estimate_s * 1.5 + args.iterations * 3))
    for label, compile_, estimate in runs:
        if not budget.allows(estimate, f"truthloop {label}"):
            report.add(f"truthloop {label}", note="skipped: time budget")
            continue
        try:
            run = truthloop_run(stack, base, start_path, start_image, label, compile_,
                                args.iterations, work)
        except Exception as error:  # noqa: BLE001
            report.add(f"truthloop {label}", note=f"FAILED {type(error).__name__}: {error}"[:240])
            continue
        painter = run.pop("painter")
        steady = slice(args.skip, None) if len(run["walls"]) > args.skip else slice(1, None)
        wall = statistics.median(run["walls"][steady] or run["walls"])
        saves = [t.get("save", 0.0) for t in run["timings"]]
        no_save = statistics.median([w - s for w, s in zip(run["walls"], saves)][steady]
                                    or run["walls"])
        run.update(iteration_s=wall, iteration_without_save_s=no_save)
        prompts_note = ""
        if seed:
            both = min(len(seed["prompts"]), len(run["prompts"]))
            equal = seed["prompts"][:both] == run["prompts"][:both]
            first = next((i for i in range(both) if seed["prompts"][i] != run["prompts"][i]),
                         None)
            run.update(prompts_equal=equal, prompts_compared=both, first_difference=first)
            prompts_note = (f"equal over {both}" if equal
                            else f"differ from iteration {first} (of {both})")
        ratio = (lambda s: f"{s / seed['iteration_s']:.3f}×") if seed else (lambda s: "-")
        report.add(f"truthloop {label}", f"{wall:.3f}", ratio(wall), f"{no_save:.3f}",
                   ratio(no_save), prompts_note,
                   f"first iteration {run['walls'][0]:.1f} s; each " +
                   " ".join(f"{w:.2f}" for w in run["walls"]))
        medians = {k: statistics.median([t.get(k, 0.0) for t in run["timings"]][steady]
                                        or [0.0])
                   for k in ("caption", "generate", "similarity", "save", "total")}
        run["stage_medians"] = medians
        stages.add(f"truthloop {label}", *[f"{medians[k]:.3f}" for k in
                                          ("caption", "generate", "similarity", "save", "total")],
                   f"{wall:.3f}")
        RESULTS.setdefault("truthloop", {})[label] = run
        if painter is not None and budget.allows(15, f"the drawing breakdown ({label})"):
            breakdown = _guarded(lambda: paint_breakdown(stack, painter, run["prompts"][-1]),
                                 "drawing breakdown")
            if breakdown:
                run["paint_breakdown"] = breakdown
                stages.add(f"  {label}: one drawing alone",
                           f"UNet {base.generate.steps} steps {breakdown['unet_steps']:.3f}",
                           f"VAE decode {breakdown['vae_decode']:.3f}",
                           f"prompt encode {breakdown['encode_prompt']:.3f}",
                           f"PNG encode {breakdown['png_encode']:.3f}",
                           f"rest {breakdown['rest']:.3f}", f"paint {breakdown['paint']:.3f}")


# Options left out take these: the full-size defaults, or a CPU dry run's small ones (--tiny).
DEFAULTS = {
    "full": dict(sizes="16,32", calls=10, compile_backend="inductor", batch=16, trajectories=16,
                 reference_iterations=3, seed_iterations=4),
    "tiny": dict(sizes="2,3", calls=2, compile_backend="aot_eager", batch=3, trajectories=3,
                 reference_iterations=2, seed_iterations=3),
    "fp8": dict(iterations=4, skip=2), "tiny fp8": dict(iterations=3, skip=1),
    "iteration": dict(iterations=6, skip=3), "tiny iteration": dict(iterations=5, skip=2),
    "peak": {}, "tiny peak": {}, "flops": {}, "tiny flops": {},
}


def main() -> None:
    import signal

    # A timeout's SIGTERM still prints the tables and writes the JSON (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("peak", "fp8", "iteration", "flops", "all"),
                        default="peak")
    parser.add_argument("--work", default=str(ROOT / ".bench"))
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny checkpoints on the CPU (a dry run of the code, not a speed)")
    parser.add_argument("--budget-s", type=float, default=520.0,
                        help="start no new work that would end after this many seconds")
    parser.add_argument("--compile-estimate-s", type=float, default=150.0,
                        help="what one cold torch.compile of the UNet is assumed to take")
    parser.add_argument("--compile-backend",
                        help="torch.compile backend of the peak part (inductor; --tiny: aot_eager)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps an image takes")
    # peak
    parser.add_argument("--sizes", help="peak: images per batch (16,32)")
    parser.add_argument("--variants", default="",
                        help=f"peak: comma list of {', '.join(PEAK_VARIANTS)} (default: "
                             f"{', '.join(CORE)}; --extras adds {', '.join(EXTRAS)})")
    parser.add_argument("--extras", action="store_true", help="peak: also channels-last and "
                                                              "per-tensor FP8 (more compiles)")
    parser.add_argument("--calls", type=int, help="peak: timed UNet calls each (10)")
    parser.add_argument("--profile", default="eager,compiled,fp8-compiled",
                        help="peak: variants profiled at the first size")
    parser.add_argument("--peak-tflops", type=float,
                        help="the card's dense fp16 peak (default: from its name)")
    # fp8
    parser.add_argument("--batch", type=int, help="fp8: the lockstep batch size (16)")
    parser.add_argument("--trajectories", type=int, help="fp8: trajectories (16)")
    parser.add_argument("--iterations", type=int,
                        help="images per trajectory (fp8: 4) / per truthloop run (iteration: 6)")
    parser.add_argument("--reference-iterations", type=int,
                        help="fp8: images per trajectory of the single-run default (3)")
    parser.add_argument("--skip", type=int,
                        help="fp8: drawing batches not timed (2); iteration: iterations not in "
                             "the median (3)")
    parser.add_argument("--fp8-granularity", default="row", help="fp8: row, tensor or row,tensor")
    parser.add_argument("--no-fp16-batch", dest="fp16_batch", action="store_false",
                        help="fp8: leave out the compiled fp16 batch (the --batch default today)")
    parser.add_argument("--fp8-single", action="store_true",
                        help="fp8: also a single run (exact batch 1) compiled with FP8")
    # iteration
    parser.add_argument("--seed-iterations", type=int, help="iteration: the seed stack's (4)")
    parser.add_argument("--no-compile", action="store_true",
                        help="iteration: leave out the --compile run")
    args = parser.parse_args()
    quiet_libraries()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    RESULTS.update(machine=machine(), args=vars(args))
    budget = Budget(args.budget_s)
    parts = ["flops", "peak", "fp8", "iteration"] if args.part == "all" else [args.part]
    try:
        for part in parts:
            log(f"part {part}")
            part_args = argparse.Namespace(**vars(args))
            defaults = dict(DEFAULTS["tiny" if args.tiny else "full"])
            defaults.update(DEFAULTS[("tiny " if args.tiny else "") + part])
            for name, value in defaults.items():
                if getattr(part_args, name) is None:
                    setattr(part_args, name, value)
            RESULTS.setdefault("part_args", {})[part] = vars(part_args)
            {"flops": part_flops, "peak": part_peak, "fp8": part_fp8,
             "iteration": part_iteration}[part](part_args, budget)
    finally:
        for table in TABLES:
            table.print()
        RESULTS["elapsed_s"] = time.perf_counter() - STARTED
        if args.json:
            Path(args.json).write_text(json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()
