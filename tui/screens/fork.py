"""Forking from a run screen, and moving between a run, its parent and its forks.

    ForkForm       `f`: a small form of the options a fork may change, filled with the run's own
    CaptionForm    `w`: the selected iteration's caption to edit (or replace); Enter continues
                   from it as a fork whose first prompt is yours (a person's turn)
    RelativesList  `r`: the run's parent and forks; Enter opens one (a ViewScreen, escape: back)
    ForkActions    the run screens' actions for `f`, `w`, `r` and `C` (compare with the parent)

The TUI never loads models itself: the app is handed a `forker` (cli.py's: parent, K, options,
prompt=None -> a TruthLoop not yet run) and pushes a LiveScreen for the loop it returns. Without
one (an app made by another program), `f` and `w` say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual import events
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from truthloop.config import CAPTION_MODES, SEED_MODES
from truthloop.families import CAPTIONERS, GENERATORS
from truthloop.fork import describe_changed, forks_of, parent_of
from truthloop.store import RunDirError, read_run
from truthloop.text import visible
from tui.widgets.caption import caption_of

# (option, label, section, field, kind): what the form asks for; kind "int", "str" or a choice.
FORM_FIELDS = [
    ("seed", "seed", "generate", "seed", "int"),
    ("seed_mode", "seed mode", "generate", "seed_mode", SEED_MODES),
    ("clauses", "clauses", "loop", "clauses", "int"),
    ("mode", "caption mode", "caption", "mode", CAPTION_MODES),
    ("generator", "generator", "models", "generator", tuple(GENERATORS)),
    ("captioner", "captioner", "models", "captioner", tuple(CAPTIONERS)),
    ("generator_model", "image model", "models", "generator_model", "str"),
    ("max_iters", "max iters", "loop", "max_iters", "int"),
]


def parse_form(values: dict[str, str]) -> dict[str, Any]:
    """The form's texts as fork options; ValueError with one line for a bad one."""
    options: dict[str, Any] = {}
    for name, label, _section, _field, kind in FORM_FIELDS:
        text = values.get(name, "").strip()
        if not text:
            continue
        if kind == "int":
            try:
                options[name] = int(text)
            except ValueError:
                raise ValueError(f"{label}: a whole number, not {visible(text)!r}") from None
        elif isinstance(kind, tuple):
            if text not in kind:
                raise ValueError(f"{label}: one of {', '.join(kind)}")
            options[name] = text
        else:
            options[name] = text
    return options


class ForkForm(ModalScreen[dict | None]):
    """Fork iteration `at`: the options, each filled with the run's value; Enter forks."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ForkForm { align: center middle; }
    ForkForm > Vertical {
        width: 64; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    ForkForm Horizontal { height: 1; margin-bottom: 1; }
    ForkForm .label { width: 14; }
    ForkForm Input { width: 1fr; height: 1; border: none; padding: 0 1; }
    ForkForm .fixed { width: 1fr; padding: 0 1; }
    ForkForm Input:focus { border: none; background: $boost; }
    ForkForm #fork-error { color: $error; height: auto; }
    """

    def __init__(self, config: dict[str, Any], at: int) -> None:
        super().__init__()
        self.config = config
        self.at = at

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(f"fork from iteration #{self.at}'s image", style="bold"))
            yield Static(Text("its caption step comes first; change what you like", style="dim"))
            for name, label, section, field_name, kind in FORM_FIELDS:
                value = self.config.get(section, {}).get(field_name)
                with Horizontal():
                    yield Static(Text(label), classes="label")
                    if name in self.fixed():
                        yield Static(Text(self.fixed()[name], style="dim"), id=f"fork-{name}",
                                     classes="fixed")
                        continue
                    placeholder = " | ".join(kind) if isinstance(kind, tuple) else ""
                    yield Input("" if value is None else str(value), id=f"fork-{name}",
                                placeholder=placeholder)
            yield Static("", id="fork-error", markup=False)
            yield Static(Text("enter: fork · tab: next · esc: cancel", style="dim"))

    def fixed(self) -> dict[str, str]:
        """Fields the fork cannot change here, with what it will really use: a run of the tiny
        random-weight models forks with the same (its generator_model names the real model it
        stands in for, which a tiny fork never loads)."""
        if self.config.get("models", {}).get("models") == "tiny":
            return {"generator_model": "tiny (random weights, as the parent's)"}
        return {}

    def on_mount(self) -> None:
        self.query_one("#fork-seed", Input).focus()

    def values(self) -> dict[str, str]:
        return {name: self.query_one(f"#fork-{name}", Input).value
                for name, *_ in FORM_FIELDS if name not in self.fixed()}

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        try:
            options = parse_form(self.values())
        except ValueError as error:
            self.query_one("#fork-error", Static).update(Text(str(error)))
            return
        self.dismiss(options)

    def action_cancel(self) -> None:
        self.dismiss(None)


class CaptionEditor(TextArea):
    """The caption, wrapped to the box; Enter submits it (a caption is one line), every other key
    edits as in any text area (paste, arrows, home/end, ctrl+z)."""

    @dataclass
    class Submitted(Message):
        text: str

    def action_delete_to_start_of_line(self) -> None:
        """ctrl+u: everything before the cursor. The caption is one line, wrapped: TextArea's own
        stops at the start of the wrapped row (it left most of a long caption)."""
        if self.read_only:
            return
        row, column = self.selection.end
        self._delete_via_keyboard((row, 0), (row, column))

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
            return
        await super()._on_key(event)


class CaptionForm(ModalScreen[str | None]):
    """Your caption in place of iteration `at`'s: filled with its caption (or, for a --prompt
    start's first iteration, the prompt it drew) to edit or replace; Enter continues from it as a
    fork whose first prompt is yours, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    CaptionForm { align: center middle; }
    CaptionForm > Vertical {
        width: 96; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    CaptionForm CaptionEditor { height: 8; margin: 1 0 0 0; }
    CaptionForm #caption-error { color: $error; height: auto; }
    """

    def __init__(self, caption: str, at: int, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.caption = caption
        self.at = at
        self.config = config or {}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(f"your caption in place of #{self.at}'s", style="bold"))
            yield Static(Text(self.how_drawn(), style="dim"))
            yield CaptionEditor(self.caption, id="caption-text", soft_wrap=True,
                                show_line_numbers=False)
            yield Static("", id="caption-error", markup=False)
            yield Static(Text("enter: go on from it (a fork) · ctrl+u: clear to the start · "
                              "esc: cancel", style="dim"))

    def how_drawn(self) -> str:
        """What the fork does with the text (cut as every caption is, under --clauses N)."""
        loop = self.config.get("loop", {}) if isinstance(self.config, dict) else {}
        clauses, feed = loop.get("clauses"), loop.get("feed")
        said = "a new run draws it first, marked as yours (not the model's), then the loop goes on"
        if isinstance(clauses, int) and clauses > 0:
            part = "compared" if feed == "full" else "compared and drawn"
            first = "first clause (up to a comma) is" if clauses == 1 \
                else f"first {clauses} clauses (comma separated) are"
            said += f"; like every caption, only its {first} {part} (--clauses {clauses})"
        return said

    def on_mount(self) -> None:
        editor = self.query_one(CaptionEditor)
        editor.focus()
        editor.move_cursor(editor.document.end)  # at the end: to add to it, or select and type

    @on(CaptionEditor.Submitted)
    def _submitted(self, event: CaptionEditor.Submitted) -> None:
        if not event.text.strip():
            self.query_one("#caption-error", Static).update(
                Text("write a caption first (esc cancels)"))
            return
        self.dismiss(event.text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RelativesList(ModalScreen[Path | None]):
    """The run's parent and its forks; Enter opens one."""

    BINDINGS = [Binding("escape,r", "cancel", "Close")]
    DEFAULT_CSS = """
    RelativesList { align: center middle; }
    RelativesList > Vertical {
        width: 80; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    RelativesList OptionList { height: auto; max-height: 16; }
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.paths: list[Path] = []

    def compose(self) -> ComposeResult:
        options: list[Option] = []
        try:
            relation = parent_of(read_run(self.run_dir))
        except RunDirError:
            relation = None
        if relation is not None:
            self.paths.append(relation.path)
            yours = ", with your prompt" if relation.by_person else ""
            options.append(Option(Text(f"parent  {visible(relation.path.name)}  (this run "
                                       f"started from its #{relation.at}{yours}; "
                                       f"{visible(describe_changed(relation.changed))})")))
        for fork in forks_of(self.run_dir):
            self.paths.append(fork.path)
            options.append(Option(Text(f"fork    {visible(fork.path.name)}  "
                                       f"({fork.describe_start()}; "
                                       f"{visible(describe_changed(fork.changed))})")))
        with Vertical():
            yield Static(Text("parent and forks", style="bold"))
            if options:
                yield OptionList(*options, id="relatives")
                yield Static(Text("enter: open (esc there comes back) · esc: close",
                                  style="dim"))
            else:
                yield Static(Text("no parent, no forks yet (f forks the selected iteration)",
                                  style="dim"))

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.paths[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class ForkActions:
    """Mixed into RunScreen: `f` fork the selected iteration, `w` write its caption and continue
    from yours, `r` parent and forks, `C` compare with the parent. Uses the screen's run_dir,
    history, config, preview and stable."""

    def _forker(self) -> Any:
        return getattr(self.app, "forker", None)

    def action_fork(self) -> None:
        history = self.history
        index = history.current_index
        if index is not None and not history.records[index].image:
            index = max((r.index for r in history.done if r.image), default=None)
        if index is None:
            self.notify("no image to fork from yet", timeout=3)
            return
        if self._forker() is None or not hasattr(self.app, "open_fork"):
            self.notify("forking needs the models: use `truthloop fork RUN --at K`", timeout=5)
            return

        def chosen(options: dict | None, at: int = index) -> None:
            if options is not None:
                self.start_fork(at, options)

        self.app.push_screen(ForkForm(self.config, index), chosen)

    def action_write_caption(self) -> None:
        history = self.history
        index = history.current_index
        if index is None:
            self.notify("no caption yet to answer", timeout=3)
            return
        record = history.records[index]
        if record.pending:  # not in log.jsonl: a fork names an iteration of the run on disk
            self.notify(f"#{index} is not in the run yet (it is being drawn, or the run ended "
                        f"before it was); w on an iteration in the log", timeout=5, markup=False)
            return
        if self._forker() is None or not hasattr(self.app, "open_fork"):
            self.notify("forking needs the models: use `truthloop fork RUN --at K --prompt "
                        "TEXT`", timeout=5, markup=False)
            return

        def written(prompt: str | None, at: int = index) -> None:
            if prompt is not None:
                self.start_fork(at, {}, prompt=prompt)

        self.app.push_screen(CaptionForm(caption_of(record) or "", index, self.config), written)

    def start_fork(self, at: int, options: dict[str, Any], prompt: str | None = None) -> None:
        more = {} if prompt is None else {"prompt": prompt}  # a forker of `f` alone still works
        try:
            loop = self._forker()(self.run_dir, at, options, **more)
        except Exception as error:  # noqa: BLE001 - the core's one-line errors, shown as such
            self.notify(visible(str(error)), title="cannot fork", severity="error",
                        markup=False, timeout=10)
            return
        # The app makes the screens (a run screen importing them would be an import circle).
        self.app.open_fork(loop)

    def action_relatives(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None and hasattr(self.app, "open_run"):
                self.app.open_run(path)

        self.app.push_screen(RelativesList(self.run_dir), chosen)

    def action_compare_parent(self) -> None:
        from tui.screens.compare import CompareScreen

        try:
            relation = parent_of(read_run(self.run_dir))
        except RunDirError as error:
            self.notify(visible(str(error)), severity="error", markup=False, timeout=6)
            return
        if relation is None:
            self.notify("this run is not a fork: `truthloop compare A B` compares any two runs",
                        timeout=5)
            return
        self.app.push_screen(CompareScreen(relation.path, self.run_dir, preview=self.preview,
                                           stable=self.stable))
