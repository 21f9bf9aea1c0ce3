#!/usr/bin/env bash
# A sweep at full size (random weights) on the lent GPU box, for docs/sweep-scale.md.
# Its image lacks ray, diffusers, open_clip and clip-interrogator: they travel as wheels in .whl/
# (the slim Ray wheel: ../shared/tools/slim_ray_wheel.py). Usage, from the repository root:
#   bench/sweep_on_gpu.sh setup          # wheels, full-size checkpoints, label embeddings
#   bench/sweep_on_gpu.sh run GPUS NAME  # one sweep on GPUS GPUs; its summary in $OUT/NAME.json
#   bench/sweep_on_gpu.sh run GPUS NAME 16   # the same with --batch 16 (compiled) over 32
#                                            # trajectories: two batches on 1 GPU, one each on 2
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD TRUTHLOOP_CACHE=/tmp/tlcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
models=/tmp/fullsize
prompts=/tmp/sweep-prompts.txt
if [ "$1" = setup ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import ray; print('ray', ray.__version__)"
    python3 -c "
from pathlib import Path
import sys; sys.path.insert(0, 'bench')
from fullsize import build_all
print(build_all(Path('$models')))"
    set -- run 1 warm  # one short sweep: the label embeddings into the cache, once
fi
gpus=$2
name=$3
batch=${4:-}
# Batched: 32 trajectories (8 prompts x seeds 0-3), so 1 and 2 GPUs run the same sweep with
# every batch full.
seeds=0-1
[ -n "$batch" ] && seeds=0-3
printf '%s\n' "a man looking at his phone" "a golf course at dawn" "a bowl of fruit on a table" \
    "a red bicycle by a wall" "a lighthouse in a storm" "a cat asleep on a sofa" \
    "a crowded market street" "an astronaut on a horse" > "$prompts"
start=$(date +%s.%N)
python3 -m truthloop.cli sweep "/tmp/sweeps/$name" --prompts "$prompts" --seeds "$seeds" \
    --sd-model "$models/sd2" --caption-model "$models/blip-large" \
    --clip-model "ViT-L-14/$models/vit-l-14/open_clip_model.safetensors" \
    $( [ "$name" = warm ] && echo "--max-iters 1" || echo "--max-iters 12 --confirm-iters 6" ) \
    --gpus "$gpus" --workers "$gpus" $( [ "$name" = warm ] && echo --no-atlas ) \
    $( [ -n "$batch" ] && echo "--batch $batch" ) \
    2>&1 | tee "$out/$name.log"
end=$(date +%s.%N)
python3 - "$name" "$gpus" "$start" "$end" "$out" <<'EOF'
"""Throughput from the run directories: images drawn, and the span from the first image to the
last (model loading excluded); per-iteration times from log.jsonl."""
import json, os, statistics, sys
from pathlib import Path

name, gpus, start, end, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
runs = sorted(Path(f"/tmp/sweeps/{name}/runs").iterdir())
mtimes, totals, states = [], [], {}
for run in runs:
    summary = json.loads((run / "summary.json").read_text())
    states[summary["status"]] = states.get(summary["status"], 0) + 1
    mtimes += [p.stat().st_mtime for p in (run / "images").glob("*.png")]
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("image"):
            totals.append(record["timings"]["total"])
span = max(mtimes) - min(mtimes)
result = {
    "gpus": gpus, "trajectories": len(runs), "states": states, "images": len(mtimes),
    "command_wall_s": round(end - start, 1),
    "first_to_last_image_s": round(span, 1),
    "images_per_s": round((len(mtimes) - gpus) / span, 3),
    "images_per_s_per_gpu": round((len(mtimes) - gpus) / span / gpus, 3),
    "iteration_s_median": round(statistics.median(totals), 3),
    "iteration_s_p90": round(sorted(totals)[int(0.9 * len(totals))], 3),
}
print(json.dumps(result, indent=2))
Path(out, f"{name}.json").write_text(json.dumps(result, indent=2))
EOF
