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
# A fixed-length chain (--generations) that ran all its generations ends as "max_iters".
CHAIN_DONE = ("✔ chain done", "bold cyan")


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
    iteration: int | None = None  # the iteration the loop began last (or the last done)
    done: int = 0  # iterations recorded
    max_iters: int | None = None
    chain: bool = False  # a fixed-length chain: max_iters is its length
    step: int | None = None
    steps: int | None = None
    loading: str = ""
    loading_done: int | None = None
    loading_total: int | None = None
    sec_per_iter: float | None = None
    device: str = ""
    device_detail: str = ""  # a longer `device` (why it is what it is), said where it fits
    memory: str = ""
    run_dir: str = ""
    pair: str = ""  # "generator + captioner", where not the seed pair


class StatusBar(Static):
    """Two lines: what the run is doing now, and where it runs."""

    DEFAULT_CSS = "StatusBar { height: 2; padding: 0 1; background: $panel; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.info = StatusInfo()

    def watch_memory(self, source: Callable[[], str] | None = None,
                     interval: float = 2.0) -> None:
        """Show the engine's memory (`source()`: the engine process's last line; by default
        this process's own, where the engine runs in it) now and every `interval` seconds."""
        source = source or memory_line
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

    def on_resize(self) -> None:
        self.update(self.render_info(), layout=False)  # the second line fits the new width

    def render_info(self) -> Text:
        info = self.info
        label, style = STATE_STYLE.get(info.state, (info.state, "bold"))
        if info.state == "max_iters" and info.chain:  # its length was the point, not a limit
            label, style = CHAIN_DONE
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
        shown = iteration_shown(info)
        if shown is not None:
            text.append(f"  iteration #{shown}", "bold")
        if info.iteration is not None or info.done:
            of = f"/{info.max_iters}" if info.max_iters else ""
            text.append(f"  {info.done}{of} done")
        if info.step is not None and info.steps:
            text.append(f"  denoise {bar(info.step, info.steps, 12)} {info.step}/{info.steps}")
        text.append("\n")
        text.append(self.second_line(info, self.content_size.width or 120), "dim")
        return text

    @staticmethod
    def second_line(info: StatusInfo, width: int) -> str:
        """Where the run is and what it runs on, inside `width`: the run directory first; on a
        narrow screen the wide separators and the word "device" go before it is shortened in
        the middle (its name, at the end, kept) to what the rest leaves it."""
        rest = [visible(info.pair)] if info.pair else []
        if info.sec_per_iter is not None:
            rest.append(f"{info.sec_per_iter:.2f} s/it")
        memory = info.memory
        where = short_path(visible(info.run_dir)) if info.run_dir else ""
        # The first way that leaves the run directory whole; else the first that leaves it
        # MIN_DIR. The device's longer form (why) only where the run directory stays whole.
        ways = [("  ·  ", "device ", visible(info.device_detail), True)] \
            if info.device_detail and info.device else []
        ways += [(separator, label, visible(info.device), False)
                 for separator, label in (("  ·  ", "device "), (" · ", "device "), (" · ", ""))]
        fits = []
        for separator, label, device, whole_only in ways:
            parts = rest + ([label + device] if device else []) + ([memory] if memory else [])
            others = separator.join(parts)
            room = width - len(others) - (len(separator) if others and where else 0)
            if not where or room >= len(where):
                break
            if not whole_only and room >= min(len(where), MIN_DIR):
                fits.append((separator, others, room))
        else:
            if fits:
                separator, others, room = fits[0]
        if where:
            where = middle(where, max(MIN_DIR, room))
            return separator.join([where] + ([others] if others else []))
        return others


MIN_DIR = 24  # the run directory keeps at least this much of the status line

FINAL_STATES = ("converged", "stopped", "max_iters", "error", "interrupted")


def iteration_shown(info: StatusInfo) -> int | None:
    """The iteration the status line names: the one in progress while the run goes on, the last
    one done once it is over. The loop's events run ahead of what is done: it begins iteration
    k+1 (captioning k's image) while k's PNG is still being written, and k is done only once its
    record is, so until then k is still in progress (its row and image say "drawing"). A view
    following a run another process writes has no events: the one in progress is the first not
    yet recorded."""
    if info.state in FINAL_STATES:
        return info.iteration
    if info.mode == "view" and info.following:
        return info.done
    if info.iteration is None:
        return None
    return min(info.iteration, info.done)


def short_path(path: str) -> str:
    """The run directory as the user knows it: under the current directory, relative to it
    (`runs/...`, as the run's own command names it; a fork's directory is made absolute), else
    under the home directory, `~/...`."""
    import os

    if os.path.isabs(path):
        try:
            here = os.getcwd()
        except OSError:  # the current directory was removed
            here = ""
        if here and path.startswith(here.rstrip(os.sep) + os.sep):
            return path[len(here.rstrip(os.sep)) + 1:]
    home = os.path.expanduser("~")
    if home not in ("", "/") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home):]
    return path


def middle(text: str, width: int) -> str:
    """`text` in `width` characters, an ellipsis in the middle; the end keeps two thirds, or the
    last name of a path whole where it fits (a run directory's name)."""
    if len(text) <= width:
        return text
    if width < 2:
        return text[-width:] if width > 0 else ""
    name = len(text.rstrip("/").rsplit("/", 1)[-1]) + 1
    tail = max((width - 1) * 2 // 3, name if name <= width - 1 else 0)
    head = width - 1 - tail
    return text[:head] + "…" + text[len(text) - tail:]
