#!/usr/bin/env bash
# A batched sweep of another pair than the seed's (default SDXL + LLaVA-1.5, the Hintze et al.
# set-up) at full size (random weights) on the lent GPU box, for docs/model-families.md
# ("Batched sweeps": trajectory-iterations per GPU-hour and the projection to 10,000; issue 29).
# The real command a study runs: `truthloop sweep --batch N`, its models loaded from disk as real
# checkpoints are. Usage, from the repository root:
#   bench/family_sweep_on_gpu.sh setup [GEN CAP]          # wheels, full-size checkpoints
#   bench/family_sweep_on_gpu.sh run NAME BATCH TRAJ ITERS [GEN CAP]
#       e.g. run b32 32 32 5: 32 trajectories (8 prompts x 4 seeds) x 5 iterations, --batch 32
#            run b1 1 4 3:    the same pair one trajectory at a time (the single-run rate)
#   TINY=1 bench/family_sweep_on_gpu.sh run NAME BATCH TRAJ ITERS   # the CPU dry run (tiny models)
#   EXTRA_SWEEP_OPTIONS=--compile ... run ...   # options added to the sweep's command line
#   RESUME=1 ... run ...   # continue the sweep left by an earlier call on this (warm) machine: its
#                          # throughput counts this call's images alone, after this call's first wave
# The box lacks ray, diffusers, open_clip...: .whl/ holds them all (the slim Ray wheel,
# ../shared/tools/slim_ray_wheel.py, and bench/slim_transformers_wheel.py's transformers fit one
# call's 64 MiB); setup installs it into /tmp/site, kept while the machine stays warm (a .whl-ray/
# carried apart, as before those slim wheels, is installed too).
set -euo pipefail
out=${OUT:-/tmp}
site=/tmp/site  # as bench/run_on_gpu.sh's: kept while the machine stays warm
models=${FULLSIZE:-/tmp/fullsize}
# TORCHINDUCTOR_CACHE_DIR: bench/run_on_gpu.sh's, so --compile finds what a bench call compiled.
export PYTHONPATH=$site:$PWD TRUTHLOOP_CACHE=${TRUTHLOOP_CACHE:-/tmp/tlcache} HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
if [ "$1" = setup ]; then
    # The box's peft (which diffusers imports when it is there) imports model classes that the slim
    # transformers wheel (bench/slim_transformers_wheel.py) leaves out; truthloop uses no peft.
    python3 -m pip uninstall -y -q peft 2>/dev/null || true
    generator=${2:-sdxl} captioner=${3:-llava-1.5}
    for dir in .whl .whl-ray; do
        if ls "$dir"/*.whl >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$site" "$dir"/*.whl
        fi
    done
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 - "$models" "$generator" "$captioner" <<'EOF'
import sys, time
from pathlib import Path
sys.path.insert(0, "bench")
from fullsize import _build_vit_l14, build_family
from truthloop.ml.tiny import _write_clip_tokenizer
root, generator, captioner = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if not (root / "vit-l-14" / "COMPLETE").exists():
    start = time.perf_counter()
    _write_clip_tokenizer(root / "clip-tokenizer")
    _build_vit_l14(root / "vit-l-14", root / "clip-tokenizer")
    (root / "vit-l-14" / "COMPLETE").write_text("ok\n")
    print(f"built vit-l-14 in {time.perf_counter() - start:.1f}s")
build_family(root, "generator", generator)
build_family(root, "captioner", captioner)
EOF
    exit 0
fi
[ "$1" = run ] || { echo "usage: $0 setup [GEN CAP] | run NAME BATCH TRAJ ITERS [GEN CAP]" >&2; exit 2; }
name=$2 batch=$3 trajectories=$4 iterations=$5 generator=${6:-sdxl} captioner=${7:-llava-1.5}
seeds=$(( (trajectories + 7) / 8 ))
prompts=/tmp/family-sweep-prompts.txt
printf '%s\n' "a man looking at his phone" "a golf course at dawn" "a bowl of fruit on a table" \
    "a red bicycle by a wall" "a lighthouse in a storm" "a cat asleep on a sofa" \
    "a crowded market street" "an astronaut on a horse" | head -n "$trajectories" > "$prompts"
if [ -n "${TINY:-}" ]; then
    models_options=(--models tiny --device cpu --steps 2 --width 64 --height 64)
else
    models_options=(--generator-model "$models/$generator" --caption-model "$models/$captioner"
                    --clip-model "ViT-L-14/$models/vit-l-14/open_clip_model.safetensors")
fi
sweep_dir=/tmp/family-sweeps/$name
[ -n "${RESUME:-}" ] || rm -rf "$sweep_dir"
start=$(date +%s.%N)
# SWEEP_TIMEOUT=S stops the sweep after S seconds (a lent machine's call has a limit); the
# throughput below is then taken from what it wrote by then.
timeout -s INT -k 30 "${SWEEP_TIMEOUT:-0}" python3 -m truthloop.cli sweep "$sweep_dir" \
    --prompts "$prompts" --seeds "0-$((seeds - 1))" \
    --generator "$generator" --captioner "$captioner" "${models_options[@]}" \
    --max-iters "$iterations" --workers 1 --no-atlas ${EXTRA_SWEEP_OPTIONS:-} \
    $( [ "$batch" -gt 1 ] && echo "--batch $batch" ) 2>&1 | tee "$out/$name.log" \
    || echo "sweep exited ${PIPESTATUS[0]}"
end=$(date +%s.%N)
python3 - "$name" "$batch" "$start" "$end" "$out" "$sweep_dir" "$generator" "$captioner" <<'EOF'
"""Throughput from the run directories: the images drawn after the first wave (a batch's first
images come out together once the models are loaded), over the span from the first image to the
last, and the projection of the Hintze et al. set-up (10,000 trajectory-iterations) from it."""
import json, statistics, sys
from pathlib import Path

name, batch, start, end, out, sweep_dir, generator, captioner = sys.argv[1:9]
batch, start, end = int(batch), float(start), float(end)
runs = sorted(Path(sweep_dir, "runs").iterdir())
mtimes, states, records, earlier, drawing, stages = [], {}, 0, 0, 0, {}
waves: dict[int, list[float]] = {}  # an image's index -> when each run's image of it was written
for run in runs:  # a sweep stopped by SWEEP_TIMEOUT may have left runs without records
    summary = run / "summary.json"
    status = json.loads(summary.read_text())["status"] if summary.exists() else "not started"
    states[status] = states.get(status, 0) + 1
    # A resumed sweep (RESUME=1): images an earlier call drew are counted apart, not timed.
    stamps = {int(p.stem): p.stat().st_mtime for p in (run / "images").glob("*.png")}
    times = list(stamps.values())
    for index, t in stamps.items():
        if t >= start:
            waves.setdefault(index, []).append(t)
    mtimes += [t for t in times if t >= start]
    earlier += sum(t < start for t in times)
    drawing += any(t >= start for t in times)
    log = run / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    records += len(lines)
    for line in lines[1:]:  # a record's own timings (a batch's share: its wait for the batch)
        for part, seconds in json.loads(line).get("timings", {}).items():
            stages.setdefault(part, []).append(seconds)
mtimes.sort()
first_wave = min(batch, drawing)  # the runs this call drew for
after_first = len(mtimes) - first_wave
span = mtimes[-1] - mtimes[first_wave - 1] if after_first > 0 else 0.0
per_iteration = span / after_first if after_first > 0 else float("nan")
result = {
    "pair": f"{generator} + {captioner}", "batch": batch, "trajectories": len(runs),
    "states": states, "records": records, "images": len(mtimes), "images_before_this_call": earlier,
    "command_wall_s": round(end - start, 1),
    "first_wave_to_last_image_s": round(span, 1),
    "s_per_trajectory_iteration": round(per_iteration, 3),
    "trajectory_iterations_per_gpu_hour": round(3600 / per_iteration, 1),
    "hintze_10000_gpu_hours": round(10000 * per_iteration / 3600, 2),
    # Each wave (the images of one index, drawn in one batch when every trajectory is in step):
    # its images, and the seconds from the previous wave's last image to its own last. The
    # second wave's span holds the first batched caption (a compiled decode step compiles then).
    "waves": [{"index": index, "images": len(times),
               "s_since_previous": round(max(times) - max(waves[index - 1]), 1)
               if index - 1 in waves else None}
              for index, times in sorted(waves.items())],
    # medians over the records after each trajectory's first: where a record's seconds went
    "record_median_s": {part: round(statistics.median(values), 3)
                        for part, values in sorted(stages.items())},
}
# The steady rate: after the first two waves (loading, first drawing, first caption: every compile
# and graph capture), the images of the later waves over their span, as the sweep's own end line
# reckons it (truthloop.sweep.command.settled_rate). A long sweep pays the warm-up once, so this
# is what a 10,000-iteration study is projected from.
from truthloop.sweep.command import settled_rate

rate = settled_rate(mtimes, 2 * batch) if batch > 1 else None
if rate is not None:
    steady = 3600 / rate
    result.update(steady_images=len(mtimes) - 2 * batch,
                  steady_s_per_trajectory_iteration=round(steady, 3),
                  steady_trajectory_iterations_per_gpu_hour=round(3600 / steady, 1),
                  steady_hintze_10000_gpu_hours=round(10000 * steady / 3600, 2))
print(json.dumps(result, indent=2))
Path(out, f"{name}.json").write_text(json.dumps(result, indent=2))
# The run directories stay on the box: the first failed run's traceback (its error.log) comes back.
failed = next((run / "error.log" for run in runs if (run / "error.log").exists()), None)
if failed is not None:
    Path(out, f"{name}-error.log").write_text(f"{failed}\n{failed.read_text()}")
    print(f"{failed}:\n" + "\n".join(failed.read_text().splitlines()[-15:]))
EOF
