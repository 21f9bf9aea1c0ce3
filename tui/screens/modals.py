"""Modal screens: the `?` help and the quit confirmation."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# (keys, what they do, the actions they run, where: live / view). Every binding of the run screens
# and the app is here (a test checks it by action name); `view` leaves out the loop's keys.
HELP_ROWS = [
    ("space", "pause / resume the loop", ("pause", "resume"), ("live",)),
    ("n", "step: run exactly one more iteration, then pause again", ("step",), ("live",)),
    ("s", "stop after the current denoising step (the run can be resumed)", ("stop",),
     ("live",)),
    ("p", "live preview of the image being drawn: on / off", ("toggle_preview",), ("live",)),
    ("← → ↑ ↓", "browse the iterations (at the newest, the log follows new ones)",
     ("browse",), ("live", "view")),
    ("home", "the first iteration", ("first",), ("live", "view")),
    ("end", "follow the newest iteration again", ("follow",), ("live", "view")),
    ("b", "diff base: previous iteration ↔ start", ("toggle_base",), ("live", "view")),
    ("B", "diff base: pin the selected iteration", ("pin_base",), ("live", "view")),
    ("c", "show and copy the selected image's file path", ("copy_path",), ("live", "view")),
    ("e", "export the run: GIF + contact sheet into RUN_DIR/exports/", ("export",),
     ("live", "view")),
    ("f", "fork: a new run from the selected image (a form for options)",
     ("fork",), ("live", "view")),
    ("w", "write your own caption here and go on from it as a fork (✎)",
     ("write_caption",), ("live", "view")),
    ("r", "this run's parent and forks; enter opens one", ("relatives",), ("live", "view")),
    ("C", "compare this fork with its parent, side by side", ("compare_parent",),
     ("live", "view")),
    ("ctrl+p", "command palette: every command, and go to iteration N", ("command_palette",),
     ("live", "view")),
    ("escape", "back to where this run was opened from (a sweep, a parent)", ("back",),
     ("live", "view")),
    ("?", "this help (esc closes it)", ("help",), ("live", "view")),
    ("q", "quit (asks first while the run is active, then stops it cleanly)", ("quit",),
     ("live", "view")),
]

LEGEND = [
    ("↺#i", "this prompt repeats the prompt of iteration i"),
    ("✎ you", "a caption a person wrote (w), not the model"),
    ("[-old-]", "removed from the base (struck through)"),
    ("{+new+}", "added since the base (bold, underlined)"),
    ("≈prv ≈st", "image similarity (CLIP cosine) to the previous / the start image"),
]

# The drift panel (beside the images), as docs/study-measures.md says it: (what it shows, what).
DRIFT_HEADING = "the drift panel: CLIP cosine similarity (1 is the same); ≈st, ≈prv: shortened"
DRIFT_LEGEND = [
    ("≈start a→b", "to the start: the first iteration's value → the newest one's"),
    ("≈prev", "to the previous iteration (the newest one's)"),
    ("img", "each drawn image, to the start image / the previous image"),
    ("txt", "the compared prompt, to the first iteration's / the previous one"),
    ("cap", "the caption, to the start image / the image it describes"),
    ("▁▃▅▇ ≈start img", "the sparkline: img to the start image, one bar per iteration "
     "(squeezed to fit); beside it its axis, top and bottom, red where it does not start at 0"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss_help", "Close")]
    DEFAULT_CSS = """
    /* Opaque: a see-through modal redraws the whole screen under it, dimmed, each time it opens
       and each time the run under it changes (80 ms of the app's time per `?` at 120x40) */
    HelpScreen { align: center middle; background: $background; }
    HelpScreen > VerticalScroll {
        /* a fixed width: with `auto` the texts inside (1fr wide) had none, the box came up empty;
           the title and "esc closes" on the border stay in sight while the rest scrolls (at
           80x24 the legend and the drift panel's explanation are below the keys) */
        width: 88; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
        border-title-style: bold; border-subtitle-color: $text-muted;
    }
    HelpScreen #help-drift { margin-top: 1; }
    """

    def __init__(self, mode: str | None = None, rows: list[tuple[str, str]] | None = None,
                 title: str | None = None, legend: bool = True) -> None:
        """`mode`: the run screen it explains, "live" (a run) or "view" (a run directory); by
        default the run screen under it says (a live one, or else view: a sweep's run views).
        Another screen (a sweep table) gives its own `rows` (keys, what they do) and `title`;
        `legend`: the marks of the iteration log and the caption panel, and the drift panel."""
        super().__init__()
        self.mode = mode
        self._rows = rows
        self._title = title
        self.legend = legend

    def rows(self) -> list[tuple[str, str]]:
        """(keys, what they do) as shown: this mode's, ctrl+p only where the app has it."""
        if self._rows is not None:
            return list(self._rows)
        return [(key, what) for key, what, actions, modes in HELP_ROWS
                if self.mode in modes
                and (actions != ("command_palette",) or self.app.ENABLE_COMMAND_PALETTE)]

    def compose(self) -> ComposeResult:
        if self.mode is None:
            # A live run screen says so itself (LiveScreen.mode): importing it here would close
            # a circle (it imports this module for ConfirmQuit).
            live = any(getattr(screen, "mode", None) == "live"
                       for screen in self.app.screen_stack)
            self.mode = "live" if live else "view"
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold cyan", no_wrap=True)
        keys.add_column()
        for key, what in self.rows():
            keys.add_row(key, what)
        if self.legend:
            keys.add_row("", "")
            for mark, what in LEGEND:
                keys.add_row(Text(mark), what)
        title = self._title or "truthloop — keys" + ("  (view: a run directory, read-only)"
                                                     if self.mode == "view" else "")
        with VerticalScroll(id="help-box") as box:
            box.border_title = Text(title)
            box.border_subtitle = Text("esc / ? closes · ↑ ↓ scroll")
            yield Static(keys, id="help-keys")
            if self.legend:
                yield Static(self.drift_legend(), id="help-drift")

    @staticmethod
    def drift_legend() -> Group:
        drift = Table.grid(padding=(0, 2))
        drift.add_column(style="bold cyan", no_wrap=True)
        drift.add_column()
        for shown, what in DRIFT_LEGEND:
            drift.add_row(Text(shown), what)
        return Group(Text(DRIFT_HEADING, style="bold"), drift)

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
