"""The banner: how the run ended (fixed point or cycle and its "truth", stopped, no repeat, error,
interrupted), with the command that continues it. Hidden while the run goes on."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from truthloop.text import clip, count, visible

FINAL = ("converged", "stopped", "error", "max_iters", "interrupted")


def banner_text(state: str, summary: dict[str, Any] | None, error_message: str | None,
                run_dir: str, records: int, width: int | None = None,
                not_drawn: int | None = None) -> Text:
    """What the banner says for `state`; empty while the run is not over. Captions and paths are
    appended as plain text (never markup). With `width`, each truth takes one line, clipped (a
    caption of real length is 60-75 words: wrapped, one took 5 of an 80x24 screen's rows; the
    whole of it is in the caption panel, where the truth is selected)."""
    summary = summary or {}
    text = Text()
    if state == "converged":
        cycle = summary.get("cycle") or {}
        length, start = cycle.get("length"), cycle.get("start")
        text.append(" ✔ CONVERGED ", "bold reverse")
        if length == 1:
            text.append(f"  fixed point at iteration {start}", "bold")
        else:
            text.append(f"  cycle of length {length} starting at iteration {start}", "bold")
        if cycle.get("found_at") is not None:
            text.append(f"  (repeat found at #{cycle['found_at']})")
        prompts = summary.get("truth_prompts") or []
        images = summary.get("truth_images") or []
        for n, prompt in enumerate(prompts[:3]):
            image = f"  [{visible(str(images[n]))}]" if n < len(images) and images[n] else ""
            prompt = visible(str(prompt))
            if width:
                prompt = clip(prompt, max(10, width - len(" truth: ") - len(image)))
            text.append("\n truth: ", "bold")
            text.append(prompt)
            text.append(image, "dim")
        if len(prompts) > 3:
            text.append(f"\n … and {len(prompts) - 3} more in summary.json", "dim")
    elif state == "error":
        text.append(" ✖ ERROR ", "bold reverse")
        text.append("  " + (error_message or "the run failed"), "bold")
        if summary.get("status") == "error":  # the loop failed and wrote down how
            text.append(f"\n run directory kept: {visible(run_dir)}"
                        f"  (details in error.log; resume with truthloop resume)")
        else:  # nothing was recorded: a run directory that cannot be read, or held by another
            text.append(f"\n run directory left as it was: {visible(run_dir)}")
    elif state == "stopped":
        done = summary.get("iterations", records)
        text.append(" ■ STOPPED ", "bold reverse")
        text.append(f"  after {count(done, 'iteration')}")
        if isinstance(done, int) and done > 0:
            text.append(f" (last complete: #{done - 1})")
        if not_drawn is not None:
            text.append(f"; #{not_drawn} was not drawn")
        text.append(f"; continue with: truthloop resume {visible(run_dir)}")
    elif state == "max_iters" and summary.get("generations"):
        text.append(" ✔ CHAIN DONE ", "bold reverse")
        text.append(f"  its {count(summary['generations'], 'generation')} (--generations: a "
                    f"fixed-length chain, which does not stop at a repeat)")
    elif state == "max_iters":
        text.append(" … NO REPEAT ", "bold reverse")
        text.append(f"  within {count(summary.get('iterations', records), 'iteration')}"
                    f" (--max-iters); continue with: truthloop resume --max-iters N"
                    f" {visible(run_dir)}")
    elif state == "interrupted":
        text.append(" ✖ INTERRUPTED ", "bold reverse")
        text.append(f"  nothing writes this run any more; continue with: truthloop resume"
                    f" {visible(run_dir)}")
    return text


class Banner(Static):
    """Shown once the run is over; its class (the final state) picks the colour (app.tcss)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self._outcome: tuple[Any, ...] | None = None

    def show_outcome(self, state: str, summary: dict[str, Any] | None, error_message: str | None,
                     run_dir: str, records: int, not_drawn: int | None = None) -> None:
        self._outcome = (state, summary, error_message, run_dir, records, not_drawn)
        # Hidden until now, the banner has no width of its own yet: the screen's, less padding.
        width = self.content_size.width or self.screen.size.width - 2
        text = banner_text(state, summary, error_message, run_dir, records,
                           width=width if width > 0 else None, not_drawn=not_drawn)
        for name in FINAL:
            self.remove_class(name)
        self.update(text)
        self.display = bool(text.plain)
        if state in FINAL:
            self.add_class(state)

    def on_resize(self) -> None:
        if self._outcome is not None:
            self.show_outcome(*self._outcome)
