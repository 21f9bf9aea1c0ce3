"""Forking a run: a new run that starts from iteration K's image of another run ("what if, from
here, with another seed / seed mode / clause count / model?"), or from a person's caption in
place of iteration K's ("and if I answered here?").

A fork is an ordinary run started from an image (its caption step comes first), built by the same
`TruthLoop` and written by the same `RunWriter`; its run.json also says where it came from:

    "parent": {"run": "/abs/path/of/the/parent", "at": K, "changed": {"seed": 7}}

so `view` can show a run's parent and its forks, and `compare` can align a fork with its parent:
the fork's iteration j captions the image its parent captioned at iteration K+1+j. With the
parent's options in reseed mode the fork replays the parent exactly from there (tests check it).
A shared-mode fork starts a fresh generator from its seed (the parent's stream is not carried over).

A person's fork (`--prompt TEXT`, `w` in the app) is a run started from a prompt: the person's
text takes the place of the parent's caption of iteration K, so the fork's iteration 0 is the
parent's iteration K answered by a person. It is cut and fed as every caption is (--clauses,
--feed), drawn first, and takes part in repeat detection like any caption (a later caption that
comes back to it is a repeat of #0). Its record says `"author": "person"` and run.json's parent
block `"prompt_by": "person"`; the fork's iteration j sits beside the parent's K+j, and with the
parent's own caption of K as the text (reseed mode) it replays the parent from K exactly.

Core only: no torch, no Textual. The CLI and the TUI hand it a backend factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from truthloop.config import (
    OPTION_FIELDS, ConfigError, RunConfig, apply_pair_defaults, check_options_given,
)
from truthloop.errors import OneLineError
from truthloop.record import PERSON
from truthloop.store import RUN_FILE, RunDirError, RunView, read_run, read_run_info, run_dir_name

# What tells a run's models apart (compare refuses runs of different models unless one is a
# fork of the other: a fork that changes the model is a deliberate experiment).
MODEL_FIELDS = ("models", "generator", "captioner", "generator_model", "caption_model",
                "clip_model")


class ForkError(OneLineError):
    """A fork that cannot be made; one line naming the run and what is wrong."""


@dataclass
class ForkPlan:
    """Everything a fork run needs, checked, before anything is written."""

    parent: RunView
    at: int
    config: RunConfig
    image_path: Path | None  # None: a person's fork (it starts from their prompt)
    changed: dict[str, Any]
    out: Path
    prompt: str | None = None  # a person's caption in place of the parent's caption of `at`

    @property
    def run_info(self) -> dict[str, Any]:
        parent = {"run": str(self.parent.path.resolve()), "at": self.at,
                  "changed": dict(self.changed)}
        if self.prompt is not None:
            parent["prompt_by"] = PERSON
        return {"parent": parent}

    def input_image(self) -> Any:
        """The start image (the parent's image `at`); None for a person's fork."""
        if self.image_path is None:
            return None
        from PIL import Image

        with Image.open(self.image_path) as image:
            return image.convert("RGB")


def drawn_indices(view: RunView) -> list[int]:
    """The iterations of a run that have an image on disk (the ones a fork can start from)."""
    return [r.index for r in view.records if r.image and (view.path / r.image).exists()]


def plan_fork(parent_dir: Path, at: int, options: dict[str, Any] | None = None,
              out: Path | None = None, runs_dir: Path | None = None,
              said: set[str] | None = None, prompt: str | None = None) -> ForkPlan:
    """Check a fork of `parent_dir` at iteration `at` with `options` (OPTION_FIELDS names; None =
    the parent's) and say where it goes. Raises ForkError / RunDirError / ConfigError (one line).
    `out`: the fork's run directory; default: `runs_dir` (default: beside the parent). `said`:
    the options the user gave, checked as `run` checks them (clip-interrogator's with another
    captioner, a checkpoint under --models tiny); default: those that differ from the parent's
    (the TUI's form sends every field, the parent's values included). `prompt`: a person's
    caption in place of the parent's caption of iteration `at` (any recorded iteration, drawn
    or not); the fork then starts from it instead of image `at`."""
    parent = read_run(Path(parent_dir))
    try:
        config = RunConfig.from_dict(parent.config)
    except (ConfigError, TypeError) as error:
        raise RunDirError(f"{parent.path / RUN_FILE} has an invalid config: {error}") from None
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise ForkError(f"--at must be an iteration number, 0 or more, not {at}")
    if prompt is not None:
        _check_person_turn(parent, at, prompt)
    else:
        _check_image_start(parent, at)
    before = config.to_dict()
    changed: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        if name not in OPTION_FIELDS:
            raise ForkError(f"a fork cannot change {name}")
        section, field_name = OPTION_FIELDS[name]
        if before[section][field_name] != value:
            changed[name] = value
        setattr(getattr(config, section), field_name, value)
    try:
        check_options_given(config, set(changed) if said is None else set(said))
    except ConfigError as error:
        raise ForkError(str(error)) from None
    swapped = tuple(side for side in ("generator", "captioner") if side in changed)
    if swapped:
        # A fork into another family starts with that family's checkpoint and settings, except
        # what the fork's options change (not all they give: the TUI's form sends every field,
        # the parent's values included).
        said = set(changed)
        apply_pair_defaults(config, said, sides=swapped)
        changed.update({name: value for name, value in _models_changed(before, config).items()
                        if name not in changed})
    if prompt is None:
        image_path: Path | None = parent.path / parent.records[at].image
        config.input_image, config.start_prompt = str(image_path.resolve()), None
    else:
        image_path = None
        config.input_image, config.start_prompt = None, prompt
    try:
        config.validate()
    except ConfigError as error:
        raise ForkError(str(error)) from None
    if out is None:
        folder = Path(runs_dir) if runs_dir is not None else parent.path.resolve().parent
        mine = "" if prompt is None else "yours-"  # fork4-yours-photo: a person's turn
        out = folder / run_dir_name(f"fork{at}-{mine}{_label(parent.path)}")
    return ForkPlan(parent=parent, at=at, config=config, image_path=image_path,
                    changed=changed, out=Path(out), prompt=prompt)


def _check_image_start(parent: RunView, at: int) -> None:
    """A fork from image `at`: the parent drew it."""
    drawn = drawn_indices(parent)
    if at not in drawn:
        if not drawn:
            raise ForkError(f"{parent.path} has no image yet; nothing to fork from")
        last = max(drawn)
        where = "past its end" if at >= len(parent.records) else "an iteration without an image"
        raise ForkError(f"--at {at} is {where}: {parent.path} has images for iterations "
                        f"0..{last}")


def _check_person_turn(parent: RunView, at: int, prompt: str) -> None:
    """A person's caption in place of the parent's caption of `at`: a recorded iteration (its
    image need not be drawn: the repeat a converged run ended on can be answered too), and text."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ForkError("--prompt is empty: give the caption the fork starts from")
    if not parent.records:
        raise ForkError(f"{parent.path} has no iteration yet; nothing to fork from")
    if at >= len(parent.records):
        raise ForkError(f"--at {at} is past its end: {parent.path} has iterations "
                        f"0..{len(parent.records) - 1}")


def _models_changed(before: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """The checkpoints and settings a family swap changed (recorded as the fork's changes)."""
    after = config.to_dict()
    return {name: after[section][field_name] for name, (section, field_name) in
            OPTION_FIELDS.items() if before[section][field_name] != after[section][field_name]}


def _label(path: Path) -> str:
    """The parent's name without its leading time stamp (runs are named `YYYYmmdd-HHMMSS-name`)."""
    parts = path.resolve().name.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return parts[2]
    return path.resolve().name


def make_fork_loop(plan: ForkPlan, backend_factory: Any, on_event: Any = None,
                   control: Any = None) -> Any:
    """The fork as a `TruthLoop` (not yet run): the parent's image K as its start image."""
    from truthloop.loop import TruthLoop

    kwargs = {} if on_event is None else {"on_event": on_event}
    return TruthLoop(plan.config, plan.out, backend_factory, control=control,
                     input_image=plan.input_image(), run_info=plan.run_info, **kwargs)


# -- relations: parent and forks ------------------------------------------------------------------
@dataclass(frozen=True)
class Relation:
    path: Path
    at: int          # the parent's iteration the fork started from
    changed: dict    # what the fork changed ({} = the parent's options)
    prompt_by: str | None = None  # PERSON: a person's caption took the place of at's

    @property
    def by_person(self) -> bool:
        return self.prompt_by == PERSON

    @property
    def beside(self) -> int:
        """The parent's iteration the fork's iteration 0 stands for: K for a person's fork (their
        caption in place of K's), K+1 for a fork from image K (it captions that image next)."""
        return self.at if self.by_person else self.at + 1

    def describe_start(self) -> str:
        """`from #K` / `from #K, your prompt` (what the lists of relatives say)."""
        return f"from #{self.at}" + (", your prompt" if self.by_person else "")


def parent_of(view_or_info: RunView | dict[str, Any], base: Path | None = None) \
        -> Relation | None:
    """The run this one was forked from (its path, K, what changed), or None."""
    info = view_or_info.info if isinstance(view_or_info, RunView) else view_or_info
    parent = info.get("parent") if isinstance(info, dict) else None
    if not isinstance(parent, dict):
        return None
    run, at = parent.get("run"), parent.get("at")
    if not isinstance(run, str) or not isinstance(at, int) or isinstance(at, bool):
        return None
    changed = parent.get("changed") if isinstance(parent.get("changed"), dict) else {}
    prompt_by = parent.get("prompt_by") if isinstance(parent.get("prompt_by"), str) else None
    path = Path(run)
    if not path.is_dir() and isinstance(view_or_info, RunView):
        # The runs folder moved as a whole: the parent is the sibling of the same name.
        sibling = view_or_info.path.parent / path.name
        if sibling.is_dir():
            path = sibling
    return Relation(path=path, at=at, changed=changed, prompt_by=prompt_by)


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        info = read_run_info(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) else None


def same_run(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def forks_of(run_dir: Path, search: list[Path] | None = None) -> list[Relation]:
    """The runs forked from `run_dir`, found in `search` (default: the folder beside it), by the
    iteration they start from, then by name."""
    run_dir = Path(run_dir)
    folders = search if search is not None else [run_dir.resolve().parent]
    found: list[Relation] = []
    seen: set[Path] = set()
    for folder in folders:
        try:
            children = sorted(Path(folder).iterdir())
        except OSError:
            continue
        for child in children:
            if not child.is_dir() or child.name.startswith(".") or same_run(child, run_dir):
                continue
            info = _read_info(child)
            relation = parent_of(info) if info else None
            if relation is None:
                continue
            if same_run(relation.path, run_dir) or (
                    not relation.path.exists() and relation.path.name == run_dir.name):
                key = child.resolve()
                if key not in seen:
                    seen.add(key)
                    found.append(Relation(path=child, at=relation.at, changed=relation.changed,
                                          prompt_by=relation.prompt_by))
    found.sort(key=lambda r: (r.at, r.path.name))
    return found


def describe_changed(changed: dict[str, Any]) -> str:
    """`seed 7, seed-mode shared` / `the parent's options`."""
    if not changed:
        return "the parent's options"
    return ", ".join(f"{name.replace('_', '-')} {_value(value)}" for name, value in changed.items())


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
