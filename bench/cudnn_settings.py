"""Which cuDNN settings keep SD2 768 eager images repeatable, and what each costs (GPU).

    python bench/cudnn_settings.py      # prints seconds per 50-step image and image hashes
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.fullsize import build_all  # noqa: E402
from truthloop.ml.backends import quiet_libraries  # noqa: E402
from truthloop.config import SEED_NEGATIVE_PROMPT  # noqa: E402
from truthloop.ml.models import load_pipeline  # noqa: E402


def main() -> None:
    quiet_libraries()
    paths = build_all(ROOT / ".bench" / "models")
    pipe, _ = load_pipeline(paths["sd"], "cuda", torch.float16)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for deterministic, benchmark in ((True, False), (False, False), (False, True), (True, False)):
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = benchmark
        times, hashes = [], []
        for _ in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            image = pipe("a photo of a golf course", negative_prompt=SEED_NEGATIVE_PROMPT,
                         generator=torch.Generator("cuda").manual_seed(42)).images[0]
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            hashes.append(hashlib.sha256(image.tobytes()).hexdigest()[:12])
        print(f"deterministic={deterministic!s:5} benchmark={benchmark!s:5} "
              f"median {statistics.median(times[1:]):.3f} s  hashes {sorted(set(hashes))}",
              flush=True)


if __name__ == "__main__":
    main()
