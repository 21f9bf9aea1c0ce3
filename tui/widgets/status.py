"""The status line: state, iteration k of max, denoising progress, s/it, device and memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from truthloop.memory import memory_line
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

    def watch_memory(self, source: Callable[[], str] = memory_line,
                     interval: float = 2.0) -> None:
        """Show the engine's memory (`source()`: the engine process's last line, or this
        process's own when the engine runs in it) now and every `interval` seconds."""
        self.set(memory=source())
        self.set_interval(interval, lambda: self.set(memory=source()))

    def set(self, **fields) -> None:
        changed = False
        for name, value in fields.items():
            if getattr(self.info, name) != value:
                setattr(self.info, name, value)
                changed = True
        if changed:
            # Two lines whatever they say: no layout pass over the whole screen (the denoising
            # counter changes many times a second).
            self.update(self.render_info(), layout=False)

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
