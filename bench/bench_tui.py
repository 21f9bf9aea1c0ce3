"""The terminal app against headless: the same `truthloop run` command, the app in a pseudo-terminal.

What a person at the keyboard of a GPU box gets (issue 20): for each configuration (terminal size,
preview mode, where the engine runs) it times a headless run and the real app in a pty (the real CLI,
its real screen, its own run directory), and reads each run's log.jsonl: the median iteration after
the first `--skip`, and its generate (denoising) and caption stages. Then, in the app, while it
denoises: `?` -> the help drawn, space -> "paused" drawn (and space again), `n` while paused ->
exactly one more record, `s` -> "stopped" drawn, `q` -> exit and the report printed. With
`--py-spy`, a few seconds of py-spy samples of the app's process (and the engine's), summed per
thread and function.

    # on the GPU box (bench/run_on_gpu.sh tui ...): full-size random weights
    python bench/bench_tui.py --fullsize /tmp/fullsize --configs 120x40:halfcell,80x24:halfcell
    # on a CPU, the tiny models
    python bench/bench_tui.py --tiny --iterations 8 --configs 120x40:halfcell
    python bench/bench_tui.py --tiny --pair sdxl,llava-1.5 --steps 4 --iterations 2 --skip 1 \
        --configs 120x40:halfcell                          # another pair (issue 29)

Prints a table and, with --json, writes every number. The app's CPU share is its process's CPU time
over the timed iterations' wall time (the engine's child process not included).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1bP.*?\x1b\\|"
                  r"\x1b[X^_].*?\x1b\\|\x1b.")


# -- the command ----------------------------------------------------------------------------------
def start_image(work: Path) -> Path:
    from PIL import Image

    path = work / "start.png"
    if not path.exists():
        Image.new("RGB", (768, 768), (90, 120, 160)).save(path)
    return path


def run_command(work: Path, models: list[str], iterations: int, run_dir: Path) -> list[str]:
    """`truthloop run START --out RUN_DIR ...` (no preview option: that is the app's)."""
    return [sys.executable, "-m", "truthloop.cli", "run", str(start_image(work)),
            "--max-iters", str(iterations), "--confirm-iters", "1000", "--out", str(run_dir),
            *models]


def model_options(args: argparse.Namespace) -> list[str]:
    if args.tiny:
        pair = args.pair.split(",") if args.pair else []
        return ["--models", "tiny", "--steps", str(args.steps or 40)] + (
            ["--generator", pair[0], "--captioner", pair[1], "--width", "64", "--height", "64"]
            if pair else ["--mode", "fast"])
    sys.path.insert(0, str(ROOT / "bench"))
    from fullsize import build_all

    paths = build_all(Path(args.fullsize))
    options = ["--sd-model", paths["sd"], "--caption-model", paths["blip"],
               "--clip-model", paths["clip"]]
    if args.pair:  # another pair's full-size checkpoints, loaded from disk like real ones
        from fullsize import build_family

        generator, captioner = args.pair.split(",")
        options = ["--generator", generator, "--captioner", captioner,
                   "--generator-model", build_family(Path(args.fullsize), "generator", generator),
                   "--caption-model", build_family(Path(args.fullsize), "captioner", captioner),
                   "--clip-model", paths["clip"]]
    return options + (["--steps", str(args.steps)] if args.steps else [])


def records(run_dir: Path) -> list[dict]:
    log = run_dir / "log.jsonl"
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return rows


def stage_medians(run_dir: Path, skip: int, count: int | None = None) -> dict:
    """Median seconds per iteration (and per stage) over records skip..skip+count."""
    rows = [r for r in records(run_dir)[skip:] if (r.get("timings") or {}).get("generate")]
    rows = rows[:count] if count else rows
    out = {"n": len(rows)}
    for stage in ("total", "generate", "caption"):
        values = [r["timings"][stage] for r in rows if stage in r["timings"]]
        out[stage] = round(statistics.median(values), 4) if values else None
        if stage == "total" and values:
            out["total_min"], out["total_max"] = round(min(values), 4), round(max(values), 4)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- headless ---------------------------------------------------------------------------------
def headless(command: list[str], log: Path, timeout: float) -> int:
    with open(log, "w") as out:
        proc = subprocess.run([*command, "--headless"], stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc.returncode


# -- the app in a pty -------------------------------------------------------------------------
class AppInPty:
    """The real CLI in a pseudo-terminal of `cols` x `rows`; what it draws is kept with times."""

    def __init__(self, command: list[str], cols: int, rows: int, env: dict | None = None,
                 transcript: Path | None = None) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        environment = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor",
                           **(env or {}))
        environment.pop("TMUX", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave,
                                     env=environment, start_new_session=True)
        os.close(slave)
        self.master = master
        self.chunks: list[tuple[float, str]] = []
        self.transcript = open(transcript, "w") if transcript else None

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.master], [], [], min(left, 0.01))
            if not ready:
                continue
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:
                time.sleep(min(left, 0.05))
                continue
            if not data:
                return
            text = data.decode("utf-8", "replace")
            self.chunks.append((time.monotonic(), text))
            if self.transcript:
                self.transcript.write(text)

    def text_since(self, since: float) -> str:
        return ANSI.sub("", "".join(c for t, c in self.chunks if t >= since))

    def wait_for(self, pattern: str, since: float, timeout: float) -> float | None:
        """Seconds from `since` to the chunk that completed `pattern` (on the screen's text)."""
        end = time.monotonic() + timeout
        first = next((i for i, (t, _) in enumerate(self.chunks) if t >= since), len(self.chunks))
        seen = first
        raw = ""
        while True:
            while seen < len(self.chunks):
                t, chunk = self.chunks[seen]
                seen += 1
                raw += chunk
                if re.search(pattern, ANSI.sub("", raw)):
                    return t - since
            if time.monotonic() >= end or self.proc.poll() is not None:
                return None
            self.pump(0.005)

    def key(self, keys: str) -> float:
        os.write(self.master, keys.encode())
        return time.monotonic()

    def wait_records(self, run_dir: Path, count: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            self.pump(0.1)
            if len(records(run_dir)) >= count:
                return True
        return len(records(run_dir)) >= count

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        if self.transcript:
            self.transcript.close()
        os.close(self.master)


def wait_denoising(app: AppInPty, timeout: float = 60) -> bool:
    """Until the status line shows a denoising step drawn from now on, in the first 60% of the
    image's steps (the issue asks for key latencies while the GPU draws: a key sent near the
    last step lands in the VAE decode or the next caption, which are not denoising)."""
    since = time.monotonic()
    end = since + timeout
    while time.monotonic() < end and app.proc.poll() is None:
        app.pump(0.005)
        for step, total in re.findall(r"denoise [█░]+ *(\d+)/(\d+)", app.text_since(since)):
            if int(step) <= 0.6 * int(total):
                return True
            since = time.monotonic()  # too late in this image: wait for the next one
    return False


def key_latencies(app: AppInPty, presses: int, key: str, shown: str, timeout: float,
                  settle: float) -> list:
    """ms from `key` to `shown` drawn, each pressed mid-denoising; the same key again undoes it
    (`?` closes the help, space resumes)."""
    latencies = []
    for _ in range(presses):
        if not wait_denoising(app):
            break
        sent = app.key(key)
        latency = app.wait_for(shown, sent, timeout)
        latencies.append(None if latency is None else round(latency * 1000, 1))
        app.pump(0.2)
        app.key(key)
        app.pump(settle)
    return latencies


def probe_keys(app: AppInPty, run_dir: Path, presses: int, timeout: float) -> dict:
    result: dict = {}
    result["help_open_ms"] = key_latencies(app, presses, "?", r"truthloop — keys", 10, 0.3)
    result["pause_shown_ms"] = key_latencies(app, presses, " ", r"⏸ paused", 30, 0.4)
    # n while paused: exactly one more record
    if wait_denoising(app):
        sent = app.key(" ")
        app.wait_for(r"⏸ paused", sent, 30)
        app.pump(0.5)
        before = len(records(run_dir))
        app.pump(2.0)
        result["records_while_paused"] = len(records(run_dir)) - before
        app.key("n")
        app.wait_records(run_dir, before + 1, timeout)
        app.pump(4.0)
        result["step_records"] = len(records(run_dir)) - before
        app.key(" ")  # resume
    # s while denoising: "stopped" drawn, and how long one denoising step takes now
    if wait_denoising(app):
        steps = [r["timings"]["generate"] for r in records(run_dir)[-3:]
                 if (r.get("timings") or {}).get("generate")]
        sent = app.key("s")
        latency = app.wait_for(r"■ stopped|STOPPED", sent, 60)
        result["stop_shown_ms"] = None if latency is None else round(latency * 1000, 1)
        result["step_s"] = round(statistics.median(steps) / app_steps(app), 4) if steps else None
    sent = app.key("q")
    app.pump(1.0)
    if app.proc.poll() is None:
        app.key("y")
    deadline = time.monotonic() + 120
    while app.proc.poll() is None and time.monotonic() < deadline:
        app.pump(0.2)
    app.pump(0.5)
    result["exit_code"] = app.proc.poll()
    result["report"] = app.text_since(sent)[-400:]
    result["report_printed"] = "run directory:" in result["report"]
    return result


def app_steps(app: AppInPty) -> int:
    found = re.findall(r"denoise [█░]+ *\d+/(\d+)", app.text_since(app.started))
    return int(found[-1]) if found else 50


def p95(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


# -- py-spy -----------------------------------------------------------------------------------
def py_spy(pid: int, seconds: float, out: Path) -> dict:
    """Sample `pid` for `seconds`; the share of samples per thread and the top functions of
    the busiest thread (self time at the leaf)."""
    spy = shutil.which("py-spy")
    if not spy:
        return {"error": "py-spy not installed"}
    raw = out.with_suffix(".txt")
    proc = subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                           "--rate", "100", "--format", "raw", "--threads", "--nonblocking",
                           "--output", str(raw)], capture_output=True, text=True)
    if proc.returncode != 0 or not raw.exists():
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    threads: dict[str, int] = {}
    leaves: dict[str, dict[str, int]] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        n = int(count)
        total += n
        threads[thread] = threads.get(thread, 0) + n
        leaf = re.sub(r" \(.*?:\d+\)", "", frames[-1]) if frames else "?"
        leaves.setdefault(thread, {})
        leaves[thread][leaf] = leaves[thread].get(leaf, 0) + n
    expected = seconds * 100
    summary = {"samples": total, "threads": {t: round(n / expected, 3) for t, n in
                                             sorted(threads.items(), key=lambda x: -x[1])}}
    summary["top"] = {t: [(f, round(n / expected, 3)) for f, n in
                          sorted(leaves[t].items(), key=lambda x: -x[1])[:8]]
                      for t in list(summary["threads"])[:3]}
    return summary


# -- one configuration ------------------------------------------------------------------------
def run_app(args, models, work: Path, cols: int, rows: int, preview: str, engine: str,
            label: str, keys: bool) -> dict:
    run_dir = work / f"app-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    total = args.skip + args.iterations
    command = run_command(work, models, total + (200 if keys else 1), run_dir)
    command += ["--preview", preview]
    env = {"TRUTHLOOP_ENGINE": engine}
    app = AppInPty(command, cols, rows, env, work / f"app-{label}.screen")
    result: dict = {"label": label, "size": f"{cols}x{rows}", "preview": preview,
                    "engine": engine, "live_preview": True}
    try:
        first = app.wait_for(r"\S", app.started, 120)
        result["first_frame_s"] = None if first is None else round(first, 2)
        if not app.wait_records(run_dir, args.skip, args.timeout):
            result["error"] = "no records; screen: " + app.text_since(app.started)[-300:]
            return result
        cpu0, t0 = cpu_seconds(app.proc.pid), time.monotonic()
        spy = None
        if args.py_spy and app.wait_records(run_dir, args.skip + 1, args.timeout):
            spy = {"app": py_spy(app.proc.pid, args.py_spy, work / f"spy-{label}-app")}
        ok = app.wait_records(run_dir, total, args.timeout)
        cpu1, t1 = cpu_seconds(app.proc.pid), time.monotonic()
        result["app_cpu_share"] = round((cpu1 - cpu0) / (t1 - t0), 3)
        result.update(stage_medians(run_dir, args.skip, args.iterations))
        if spy:
            result["py_spy"] = spy
        if not ok:
            result["error"] = "fewer records than asked"
        if keys:
            result["keys"] = probe_keys(app, run_dir, args.presses, args.timeout)
        else:
            app.key("s")
            app.wait_for(r"■ stopped|STOPPED", time.monotonic(), 60)
            app.key("q")
            app.pump(3)
    finally:
        app.close()
    return result


def run_headless(args, models, work: Path, label: str) -> dict:
    run_dir = work / f"headless-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = run_command(work, models, args.skip + args.iterations, run_dir)
    log = work / f"headless-{label}.log"
    code = headless(command, log, args.timeout)
    result = {"label": label, "exit_code": code, **stage_medians(run_dir, args.skip,
                                                                args.iterations)}
    if code != 0:  # why, in the result itself: the work folder stays behind on the GPU box
        result["error"] = log.read_text(errors="replace")[-1500:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny models (CPU)")
    parser.add_argument("--fullsize", default="/tmp/fullsize",
                        help="where bench/fullsize.py builds the full-size random weights")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--pair", default="", help="GENERATOR,CAPTIONER at full size (e.g. "
                        "sdxl,llava-1.5; default: the seed pair)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per run")
    parser.add_argument("--skip", type=int, default=3, help="first iterations not timed")
    parser.add_argument("--configs", default="120x40:halfcell,80x24:halfcell",
                        help="COLSxROWS:PREVIEW[:thread], comma-separated (thread: the engine in "
                             "the app's process, as before issue 20)")
    parser.add_argument("--keys", default="", help="labels (e.g. 120x40:halfcell) that also "
                        "probe the keys; 'all' for every app run")
    parser.add_argument("--presses", type=int, default=20)
    parser.add_argument("--headless-every", type=int, default=2,
                        help="a headless run before every N app runs (and one at the end)")
    parser.add_argument("--py-spy", type=float, default=0, help="seconds of py-spy per app run")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--work", default="/tmp/bench-tui")
    parser.add_argument("--json")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = model_options(args)
    configs = [c for c in args.configs.split(",") if c]
    results = {"machine": machine(), "args": vars(args), "headless": [], "app": []}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    for i, config in enumerate(configs):
        if i % args.headless_every == 0:
            results["headless"].append(run_headless(args, models, work, f"h{i}"))
            print("headless:", json.dumps(results["headless"][-1]), flush=True)
            save()
        size, preview, *rest = config.split(":")
        cols, rows = (int(v) for v in size.split("x"))
        engine = rest[0] if rest else "process"
        label = config.replace(":", "-")
        keys = args.keys == "all" or config in args.keys.split(",")
        results["app"].append(run_app(args, models, work, cols, rows, preview, engine, label,
                                      keys))
        print("app:", json.dumps(results["app"][-1]), flush=True)
        save()
    results["headless"].append(run_headless(args, models, work, "end"))
    print("headless:", json.dumps(results["headless"][-1]), flush=True)
    save()
    print_table(results)


def machine() -> dict:
    info = {"host": os.uname().nodename, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                     capture_output=True, text=True).stdout.strip()
    except OSError:
        info["gpu"] = None
    return info


def print_table(results: dict) -> None:
    heads = [h["total"] for h in results["headless"] if h.get("total")]
    base = statistics.median(heads) if heads else None
    print(f"\nmachine: {results['machine']}")
    print("headless runs, median iteration (s):", [h.get("total") for h in results["headless"]],
          "generate:", [h.get("generate") for h in results["headless"]])
    print(f"{'run':<28}{'iter s':>8}{'÷ headless':>12}{'generate':>10}{'caption':>9}"
          f"{'app CPU':>9}{'help p95':>10}{'pause p95':>10}{'stop ms':>9}{'n→':>4}{'exit':>5}")
    for r in results["app"]:
        keys = r.get("keys") or {}
        ratio = f"{r['total'] / base:.3f}×" if base and r.get("total") else "-"
        print(f"{r['label']:<28}{r.get('total') or '-':>8}{ratio:>12}{r.get('generate') or '-':>10}"
              f"{r.get('caption') or '-':>9}{r.get('app_cpu_share', '-'):>9}"
              f"{p95(keys.get('help_open_ms', [])) or '-':>10}"
              f"{p95(keys.get('pause_shown_ms', [])) or '-':>10}"
              f"{keys.get('stop_shown_ms') or '-':>9}{keys.get('step_records', '-'):>4}"
              f"{keys.get('exit_code', '-'):>5}")
        if r.get("error"):
            print("   error:", r["error"][:200])
    for h in results["headless"]:
        if h.get("error"):
            print(f"headless {h['label']} failed (exit {h['exit_code']}):\n{h['error']}")


if __name__ == "__main__":
    main()
