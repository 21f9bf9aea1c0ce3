"""Modal screens: the `?` help and the quit confirmation."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP_ROWS = [
    ("space", "pause / resume the loop (live runs)"),
    ("n", "step: run exactly one more iteration, then pause again"),
    ("s", "stop after the current denoising step (the run can be resumed)"),
    ("q", "quit (asks first while a run is active: it stops it cleanly)"),
    ("← / →  ↑ / ↓", "browse earlier iterations (the table follows the newest at the end)"),
    ("end", "follow the newest iteration again"),
    ("f", "fork: a new run from the selected image (a form for options)"),
    ("r", "this run's parent and forks; enter opens one"),
    ("C", "compare this fork with its parent, side by side"),
    ("escape", "back to where this run was opened from (a sweep, a parent)"),
    ("b", "diff base: previous iteration ↔ start"),
    ("B", "diff base: pin the selected iteration"),
    ("c", "show and copy the selected image's file path"),
    ("e", "export the run: GIF + contact sheet into RUN_DIR/exports/"),
    ("?", "this help"),
]

LEGEND = [
    ("↺#i", "this prompt repeats the prompt of iteration i"),
    ("[-old-]", "removed from the base (struck through)"),
    ("{+new+}", "added since the base (bold, underlined)"),
    ("≈prev ≈start", "image similarity (CLIP cosine) to the previous and the start image"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss_help", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        /* a fixed width: with `auto` the texts inside (1fr wide) had none, the box came up empty */
        width: 88; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold cyan", no_wrap=True)
        keys.add_column()
        for key, what in HELP_ROWS:
            keys.add_row(key, what)
        keys.add_row("", "")
        for mark, what in LEGEND:
            keys.add_row(Text(mark), what)
        with Vertical():
            yield Static(Text("truthloop — keys", style="bold"))
            yield Static(keys)
            yield Static(Text("esc / ? closes", style="dim"))

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ConfirmQuit(ModalScreen[bool]):
    BINDINGS = [Binding("y,enter", "answer(True)", "Stop and quit"),
                Binding("n,escape,q", "answer(False)", "Keep running")]
    DEFAULT_CSS = """
    ConfirmQuit { align: center middle; }
    ConfirmQuit > Static {
        width: auto; max-width: 70; height: auto;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    """

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        text = Text("Quit while the run is active?\n\n", style="bold")
        text.append("y: stop after the current denoising step and quit\n"
                    "   (the run directory stays consistent; continue later with\n"
                    f"   truthloop resume {self.run_dir})\n"
                    "n / esc: keep running")
        yield Static(text)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
