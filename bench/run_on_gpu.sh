#!/usr/bin/env bash
# Run a benchmark part on the lent GPU box: its image lacks diffusers/open_clip/clip-interrogator,
# which travel as wheels in .whl/ (see docs/benchmark.md). Usage: bench/run_on_gpu.sh base|compile
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRUTHLOOP_CACHE=/tmp/tlcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.bench/inductor}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
out=${OUT:-/tmp}
python3 bench/bench_iteration.py --part "$1" --json "$out/$1.json" "${@:2}" 2>&1 | tee "$out/$1.log"
