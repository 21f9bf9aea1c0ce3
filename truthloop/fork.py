"""Forking a run: a new run that starts from iteration K's image of another run ("what if, from
here, with another seed / seed mode / clause count / model?").

A fork is an ordinary run started from an image (its caption step comes first), built by the same
`TruthLoop` and written by the same `RunWriter`; its run.json also says where it came from:

    "parent": {"run": "/abs/path/of/the/parent", "at": K, "changed": {"seed": 7}}

so `view` can show a run's parent and its forks, and `compare` can align a fork with its parent:
the fork's iteration j captions the image its parent captioned at iteration K+1+j. With the
parent's options in reseed mode the fork replays the parent exactly from there (tests check it).
A shared-mode fork starts a fresh generator from its seed (the parent's stream is not carried over).

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
    image_path: Path
    changed: dict[str, Any]
    out: Path

    @property
    def run_info(self) -> dict[str, Any]:
        return {"parent": {"run": str(self.parent.path.resolve()), "at": self.at,
                           "changed": dict(self.changed)}}

    def input_image(self) -> Any:
        from PIL import Image

        with Image.open(self.image_path) as image:
            return image.convert("RGB")


def drawn_indices(view: RunView) -> list[int]:
    """The iterations of a run that have an image on disk (the ones a fork can start from)."""
    return [r.index for r in view.records if r.image and (view.path / r.image).exists()]


def plan_fork(parent_dir: Path, at: int, options: dict[str, Any] | None = None,
              out: Path | None = None, runs_dir: Path | None = None,
              said: set[str] | None = None) -> ForkPlan:
    """Check a fork of `parent_dir` at iteration `at` with `options` (OPTION_FIELDS names; None =
    the parent's) and say where it goes. Raises ForkError / RunDirError / ConfigError (one line).
    `out`: the fork's run directory; default: `runs_dir` (default: beside the parent). `said`:
    the options the user gave, checked as `run` checks them (clip-interrogator's with another
    captioner, a checkpoint under --models tiny); default: those that differ from the parent's
    (the TUI's form sends every field, the parent's values included)."""
    parent = read_run(Path(parent_dir))
    try:
        config = RunConfig.from_dict(parent.config)
    except (ConfigError, TypeError) as error:
        raise RunDirError(f"{parent.path / RUN_FILE} has an invalid config: {error}") from None
    drawn = drawn_indices(parent)
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise ForkError(f"--at must be an iteration number, 0 or more, not {at}")
    if at not in drawn:
        if not drawn:
            raise ForkError(f"{parent.path} has no image yet; nothing to fork from")
        last = max(drawn)
        where = "past its end" if at >= len(parent.records) else "an iteration without an image"
        raise ForkError(f"--at {at} is {where}: {parent.path} has images for iterations "
                        f"0..{last}")
    record = parent.records[at]
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
    image_path = parent.path / record.image
    config.input_image = str(image_path.resolve())
    config.start_prompt = None
    try:
        config.validate()
    except ConfigError as error:
        raise ForkError(str(error)) from None
    if out is None:
        folder = Path(runs_dir) if runs_dir is not None else parent.path.resolve().parent
        out = folder / run_dir_name(f"fork{at}-{_label(parent.path)}")
    return ForkPlan(parent=parent, at=at, config=config, image_path=image_path,
                    changed=changed, out=Path(out))


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
    path = Path(run)
    if not path.is_dir() and isinstance(view_or_info, RunView):
        # The runs folder moved as a whole: the parent is the sibling of the same name.
        sibling = view_or_info.path.parent / path.name
        if sibling.is_dir():
            path = sibling
    return Relation(path=path, at=at, changed=changed)


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
                    found.append(Relation(path=child, at=relation.at, changed=relation.changed))
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
