"""The status line: state, iteration k of max, denoising progress, s/it, device and memory."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from truthloop.text import visible

STATE_STYLE = {
    "loading": ("◌ loading", "bold yellow"),
    "running": ("▶ running", "bold green"),
    "pausing": ("⏸ pausing…", "bold yellow"),
    "paused": ("⏸ paused", "bold yellow reverse"),
    "stepping": ("⏯ stepping", "bold yellow"),
    "stopping": ("■ stopping…", "bold magenta"),
    "stopped": ("■ stopped", "bold magenta"),
    "converged": ("✔ converged", "bold cyan reverse"),
    "max_iters": ("… max iterations", "bold magenta"),
    "error": ("✖ error", "bold white on red"),
    "interrupted": ("✖ interrupted", "bold magenta"),
    "unknown": ("? unknown", "bold"),
}


def bar(done: int, total: int, width: int = 16) -> str:
    if total <= 0:
        return "░" * width
    filled = max(0, min(width, round(width * done / total)))
    return "█" * filled + "░" * (width - filled)


@dataclass
class StatusInfo:
    state: str = "loading"
    mode: str = "live"  # live | view
    following: bool = False  # view mode: a writer still holds the run
    iteration: int | None = None  # index of the iteration in progress (or last done)
    done: int = 0  # iterations recorded
    max_iters: int | None = None
    step: int | None = None
    steps: int | None = None
    loading: str = ""
    loading_done: int | None = None
    loading_total: int | None = None
    sec_per_iter: float | None = None
    device: str = ""
    memory: str = ""
    run_dir: str = ""


class StatusBar(Static):
    """Two lines: what the run is doing now, and where it runs."""

    DEFAULT_CSS = "StatusBar { height: 2; padding: 0 1; background: $panel; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.info = StatusInfo()

    def watch_memory(self, interval: float = 2.0) -> None:
        """Show the process's memory now and every `interval` seconds (live runs)."""
        self.set(memory=memory_line())
        self.set_interval(interval, lambda: self.set(memory=memory_line()))

    def set(self, **fields) -> None:
        changed = False
        for name, value in fields.items():
            if getattr(self.info, name) != value:
                setattr(self.info, name, value)
                changed = True
        if changed:
            self.update(self.render_info())

    def render_info(self) -> Text:
        info = self.info
        label, style = STATE_STYLE.get(info.state, (info.state, "bold"))
        text = Text()
        if info.mode == "view":
            text.append(" VIEW ", "bold black on white")
            text.append(" ")
        text.append(f" {label} ", style)
        if info.mode == "view" and info.following:
            text.append(" following", "green")
        if info.state == "loading" and info.loading:
            text.append("  " + visible(info.loading))
            if info.loading_total:
                done = info.loading_done or 0
                text.append(f"  {bar(done, info.loading_total, 12)} {done}/{info.loading_total}")
        if info.iteration is not None:
            text.append(f"  iteration #{info.iteration}", "bold")
        if info.iteration is not None or info.done:
            of = f"/{info.max_iters}" if info.max_iters else ""
            text.append(f"  {info.done}{of} done")
        if info.step is not None and info.steps:
            text.append(f"  denoise {bar(info.step, info.steps, 12)} {info.step}/{info.steps}")
        text.append("\n")
        second = []
        if info.sec_per_iter is not None:
            second.append(f"{info.sec_per_iter:.2f} s/it")
        if info.device:
            second.append(f"device {visible(info.device)}")
        if info.memory:
            second.append(info.memory)
        if info.run_dir:
            second.append(visible(info.run_dir))
        text.append("  ·  ".join(second), "dim")
        return text


def memory_line() -> str:
    """Process RSS, and GPU memory when the engine already loaded torch with CUDA (never imports
    torch itself)."""
    parts = []
    try:
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"RSS {rss / 2**30:.1f} GiB" if rss >= 2**30 else f"RSS {rss / 2**20:.0f} MiB")
    except (OSError, ValueError, IndexError):
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            used = torch.cuda.memory_allocated() / 2**30
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            parts.append(f"GPU {used:.1f}/{total:.0f} GiB")
    except Exception:  # noqa: BLE001 - memory is a nicety; never let it break the status line
        pass
    return "  ".join(parts)
