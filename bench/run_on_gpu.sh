#!/usr/bin/env bash
# Run a benchmark part (or the GPU-only tests) on the lent GPU box: its image lacks diffusers,
# open_clip, clip-interrogator and pytest, which travel as wheels in .whl/ (docs/benchmark.md).
# Usage: bench/run_on_gpu.sh base|compile|best|lowvram|batch|tui|families|generators|captioners|hardware [bench options] | bench/run_on_gpu.sh tests
set -euo pipefail
# The box's peft (which diffusers imports when it is there) imports model classes that the slim
# transformers wheel (bench/slim_transformers_wheel.py) leaves out; truthloop uses no peft.
python3 -m pip uninstall -y -q peft 2>/dev/null || true
# The wheels (.whl/: the slim transformers and Ray wheels and the rest the box lacks, one call's
# worth, docs/model-families.md) go to /tmp/site, which stays while the machine is warm: a call
# that follows at once (within the box's 30 s) finds them even without .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
elif [ ! -d /tmp/site/diffusers ]; then
    echo "no .whl/ carried and none installed in /tmp/site (a fresh machine): carry .whl" >&2; exit 2
fi
export PYTHONPATH=/tmp/site:$PWD TRUTHLOOP_CACHE=/tmp/tlcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# Inductor's cache outside the working tree (which each call lays down afresh), in /tmp, kept while
# the machine is warm and shared with family_sweep_on_gpu.sh: a sweep compiled after a bench call
# finds the same graphs (SDXL's UNet at the same padded batch) already compiled.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
out=${OUT:-/tmp}
if [ "$1" = tests ]; then
    TRUTHLOOP_TEST_CACHE=/tmp/tlcache python3 -m pytest -q -p no:cacheprovider -o addopts= \
        tests/test_cuda_graphs.py tests/test_fast_decode.py tests/test_family_compile.py "${@:2}" 2>&1 | tee "$out/tests.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "$1" = tui ]; then  # the terminal app in a pty beside headless runs (bench/bench_tui.py, issue 20)
    export PATH=/tmp/site/bin:$PATH  # py-spy's binary, from its wheel
    python3 bench/bench_tui.py --json "$out/tui.json" "${@:2}" 2>&1 | tee "$out/tui.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "$1" = families ]; then  # every model family at full size (bench/bench_families.py, issue 22)
    python3 bench/bench_families.py --json "$out/families.json" "${@:2}" 2>&1 | tee "$out/families.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "$1" = captioners ]; then  # the captioner families plain / fast / batched (bench/bench_captioners.py, issue 29)
    python3 bench/bench_captioners.py --json "$out/captioners.json" "${@:2}" 2>&1 | tee "$out/captioners.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "$1" = generators ]; then  # the generator families at batch 1 and SDXL's profile (bench/bench_generators.py, issue 29)
    python3 bench/bench_generators.py --json "$out/generators.json" "${@:2}" 2>&1 | tee "$out/generators.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "$1" = hardware ]; then  # FP8, the UNet's share of peak, the compiled iteration (bench/bench_hardware.py, issue 24)
    # torchao only here: installed, diffusers imports it in every process (+3.5 s, warnings).
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/fp8/*.whl
    if [ "${2:-}" = tests ]; then  # hardware tests: tests/test_fp8.py with torchao (its GPU test too)
        TRUTHLOOP_TEST_CACHE=/tmp/tlcache python3 -m pytest -q -rs -p no:cacheprovider -o addopts= \
            tests/test_fp8.py "${@:3}" 2>&1 | tee "$out/hardware-tests.log"
        exit "${PIPESTATUS[0]}"
    fi
    python3 bench/bench_hardware.py --json "$out/hardware.json" "${@:2}" 2>&1 | tee "$out/hardware.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "$1" = batch ]; then  # many trajectories in lockstep (bench/bench_batch.py, issue 14)
    python3 bench/bench_batch.py --json "$out/batch.json" "${@:2}" 2>&1 | tee "$out/batch.log"
    exit "${PIPESTATUS[0]}"
fi
python3 bench/bench_iteration.py --part "$1" --json "$out/$1.json" "${@:2}" 2>&1 | tee "$out/$1.log"
