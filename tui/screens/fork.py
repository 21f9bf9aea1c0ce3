"""Forking from a run screen, and moving between a run, its parent and its forks.

    ForkForm       `f`: a small form of the options a fork may change, filled with the run's own
    RelativesList  `r`: the run's parent and forks; Enter opens one (a ViewScreen, escape: back)
    ForkActions    the run screens' actions for `f`, `r` and `C` (compare with the parent)

The TUI never loads models itself: the app is handed a `forker` (cli.py's: parent, K, options ->
a TruthLoop not yet run) and pushes a LiveScreen for the loop it returns. Without one (an app made
by another program), `f` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from truthloop.config import CAPTION_MODES, SEED_MODES
from truthloop.families import CAPTIONERS, GENERATORS
from truthloop.fork import describe_changed, forks_of, parent_of
from truthloop.store import RunDirError, read_run
from truthloop.text import visible

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
            options.append(Option(Text(f"parent  {visible(relation.path.name)}  (this run "
                                       f"started from its #{relation.at}; "
                                       f"{visible(describe_changed(relation.changed))})")))
        for fork in forks_of(self.run_dir):
            self.paths.append(fork.path)
            options.append(Option(Text(f"fork    {visible(fork.path.name)}  (from #{fork.at}; "
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
    """Mixed into RunScreen: `f` fork the selected iteration, `r` parent and forks, `C` compare
    with the parent. Uses the screen's run_dir, history, preview and stable."""

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

    def start_fork(self, at: int, options: dict[str, Any]) -> None:
        try:
            loop = self._forker()(self.run_dir, at, options)
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
