"""A tiny sweep's study report, opened in a real headless Chromium and photographed.

    python scripts/report_screenshot.py --make-tiny               # run a tiny sweep, then shoot
    python scripts/report_screenshot.py --sweep SWEEP_DIR          # an existing sweep

--make-tiny runs a small sweep on the tiny random-weight models (truthloop/ml/tiny.py; CPU, no
network, no Ray: the sweep worker runs in this process): two start prompts, two seeds, a grid of
--clauses 1 and 2, text near-repeat convergence. It then writes the report (truthloop report's
own code), loads report.html in Chromium (`--headless`, Debian's `chromium` package) at 1280
pixels wide, crops the blank bottom and writes a small PNG (scaled to --width, 128 colours).

Chromium's --screenshot grabs the window, so the window is made taller than the page and the
white below the page is cropped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_tiny_sweep(sweep_dir: Path, max_iters: int) -> None:
    from truthloop.config import RunConfig
    from truthloop.store import atomic_write_json
    from truthloop.sweep.spec import make_spec, trajectories
    from truthloop.sweep.worker import TrajectoryWorker

    base = RunConfig()
    base.models.models = "tiny"
    base.caption.mode = "fast"
    base.generate.steps = 8
    base.loop.max_iters = max_iters
    base.loop.converge, base.loop.near_threshold, base.loop.near_window = "text", 0.9, 2
    spec = make_spec(base, [], ["a red barn at dusk, oil painting", "a lighthouse in the fog"],
                     [0, 1], {"clauses": [1, 2]})
    sweep_dir.mkdir(parents=True)
    atomic_write_json(sweep_dir / "sweep.json", spec)
    worker = TrajectoryWorker(spec.get("backend"))
    for trajectory in trajectories(spec):
        started = time.perf_counter()
        outcome = worker.run({"run_dir": str(trajectory.run_dir(sweep_dir)),
                              "config": trajectory.config})
        print(f"{trajectory.name}: {outcome['status']} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: `apt-get install -y chromium` (Debian)")


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 9000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                   "--hide-scrollbars", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", f"--screenshot={png}",
                   page.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.exists():
        raise SystemExit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")


def shrink(raw: Path, out: Path, width: int, colours: int = 128) -> tuple[int, int]:
    """Crop the white below the page, scale to `width`, `colours` colours."""
    from PIL import Image, ImageChops

    with Image.open(raw) as image:
        image = image.convert("RGB")
        blank = Image.new("RGB", image.size, (255, 255, 255))
        box = ImageChops.difference(image, blank).getbbox()
        if box:
            image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)),
                                 Image.LANCZOS)
        image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        return image.size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=Path(tempfile.gettempdir())
                        / "truthloop-report-demo" / "sweep")
    parser.add_argument("--make-tiny", action="store_true",
                        help="run a fresh tiny sweep into --sweep first (it must not exist)")
    parser.add_argument("--max-iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report-tiny.png")
    parser.add_argument("--width", type=int, default=800, help="the PNG's width in pixels")
    args = parser.parse_args()
    if args.make_tiny:
        if args.sweep.exists():
            raise SystemExit(f"{args.sweep} exists; remove it or leave out --make-tiny")
        make_tiny_sweep(args.sweep, args.max_iters)
    from truthloop.lookback.report import describe, write_report

    report, out = write_report(args.sweep)
    print("\n".join(describe(report)))
    raw = out / "screenshot-full.png"
    screenshot(out / "report.html", raw)
    size = shrink(raw, args.out, args.width)
    print(f"screenshot: {raw} (full size); {args.out} {size[0]}x{size[1]}, "
          f"{args.out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
