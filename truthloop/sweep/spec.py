"""What a sweep is: its starts (images, prompts) × seeds × a small grid of settings, and the
trajectories that product names. No Ray here: the driver, the workers, the viewer and the atlas all
read the same spec.

The spec is written once as `SWEEP_DIR/sweep.json`; running the same command again finds it and
continues, and a command that would make a different sweep is refused with the first difference.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from truthloop.config import (
    CAPTION_MODES, FEED_MODES, SCHEDULERS, SEED_MODES, ConfigError, LoopConfig, RunConfig,
    pair_settings,
)
from truthloop.families import CAPTIONERS, GENERATORS
from truthloop.text import count

SPEC_FILE = "sweep.json"
TABLE_FILE = "trajectories.jsonl"
RUNS_DIR = "runs"
LOCK_FILE = "sweep.lock"
ATLAS_DIR = "atlas"
SPEC_FORMAT = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

# --grid NAME=v1,v2: the settings a sweep may vary, as (config section, field, parser). Anything
# else stays one value for the whole sweep (given as an ordinary option).
GRID_FIELDS: dict[str, tuple[str, str, Any]] = {
    "clauses": ("loop", "clauses", int),
    "feed": ("loop", "feed", str),
    "seed-mode": ("generate", "seed_mode", str),
    "mode": ("caption", "mode", str),
    "steps": ("generate", "steps", int),
    "guidance": ("generate", "guidance", float),
    "scheduler": ("generate", "scheduler", str),
    "chunk-size": ("caption", "chunk_size", int),
    # The pair: each grid point gets its family's checkpoint and settings (config.pair_settings)
    # except the options the sweep's command line gave.
    "generator": ("models", "generator", str),
    "captioner": ("models", "captioner", str),
    # The studies' controls beside the loop (control=none,generator-only,captioner-only) and the
    # convergence criterion.
    "control": ("loop", "control", str),
    "converge": ("loop", "converge", str),
}
# Grid spellings of values that have none on the command line.
_GRID_ALIASES = {"control": {"none": ""}}
_CHOICES = {"feed": FEED_MODES, "seed-mode": SEED_MODES, "mode": CAPTION_MODES,
            "scheduler": SCHEDULERS, "generator": tuple(GENERATORS),
            "captioner": tuple(CAPTIONERS), "control": ("none", *filter(None, LoopConfig.CONTROLS)),
            "converge": LoopConfig.CONVERGE_CRITERIA}


class SpecError(ValueError):
    """A sweep that cannot be made as asked; one line for the user."""


# How a --grid value's type is named in an error ("'abc' is not a whole number").
TYPE_NAMES = {int: "a whole number", float: "a number", str: "a text"}

def parse_seeds(text: str) -> list[int]:
    """`0-15`, `1,5,9`, or a mix (`0-3,10`); order kept, duplicates dropped."""
    if not text.strip():
        raise SpecError("--seeds is empty: give seeds like 0-15, 1,5,9 or a mix")
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise SpecError(f"--seeds: {part!r} is not a number or a range like 0-15")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise SpecError(f"--seeds: range {part!r} goes backwards")
        if high - low >= 100_000:
            raise SpecError(f"--seeds: range {part!r} is more than 100,000 seeds")
        seeds.extend(s for s in range(low, high + 1) if s not in seeds)
    if not seeds:
        raise SpecError("--seeds is empty")
    return seeds


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise SpecError(f"--grid {item!r}: write NAME=v1,v2 (e.g. clauses=0,1)")
        if name not in GRID_FIELDS:
            raise SpecError(f"--grid: {name!r} cannot be varied; choose from "
                            f"{', '.join(GRID_FIELDS)}")
        if name in grid:
            raise SpecError(f"--grid {name} given twice")
        kind = GRID_FIELDS[name][2]
        parsed = []
        for value in values.split(","):
            value = value.strip()
            try:
                typed = kind(value)
            except ValueError:
                named = TYPE_NAMES.get(kind, kind.__name__)
                raise SpecError(f"--grid {name}: {value!r} is not {named}") from None
            if name in _CHOICES and typed not in _CHOICES[name]:
                raise SpecError(f"--grid {name}: unknown {value!r}; choose from "
                                f"{', '.join(_CHOICES[name])}")
            typed = _GRID_ALIASES.get(name, {}).get(typed, typed)
            if typed not in parsed:
                parsed.append(typed)
        grid[name] = parsed
    return grid


def find_images(paths: list[str]) -> list[Path]:
    """Files given, and the image files of folders given (sorted; hidden files skipped)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if not p.name.startswith(".")
                                and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)  # a file given by name is tried whatever its suffix
    return found


def read_prompts(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such prompts file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the prompts file ({error})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise SpecError(f"{path} has no prompts (one a line; # starts a comment)")
    return prompts


def make_spec(base: RunConfig, images: list[Path], prompts: list[str], seeds: list[int],
              grid: dict[str, list[Any]], backend: str | None = None,
              said: set[str] | None = None) -> dict[str, Any]:
    """The spec as written to sweep.json. `base` carries every setting not in the grid; `said`:
    the options the command line gave (a grid point's family defaults leave those alone)."""
    if not images and not prompts:
        raise SpecError("nothing to start from: give --images and/or --prompts")
    config = base.to_dict()
    config["input_image"] = config["start_prompt"] = None
    starts = [{"image": str(p.resolve())} for p in images] + [{"prompt": p} for p in prompts]
    spec = {"format": SPEC_FORMAT, "starts": starts, "seeds": seeds, "grid": grid,
            "config": config}
    if backend:
        spec["backend"] = backend
    if said and set(grid) & {"generator", "captioner"}:
        spec["said"] = sorted(said)
    # Every trajectory's config must be valid before anything runs.
    every = trajectories(spec)
    for trajectory in every[:1] + every[-1:]:
        try:
            trajectory.run_config().validate()
        except ConfigError as error:
            raise SpecError(str(error)) from None
    return spec


@dataclass(frozen=True)
class Trajectory:
    """One run of the sweep: a start, a seed and one point of the grid."""

    number: int
    name: str  # its run directory's name under runs/
    start: dict[str, str]
    seed: int
    settings: dict[str, Any]  # the grid point, by option name
    config: dict[str, Any]

    @property
    def label(self) -> str:
        if "image" in self.start:
            return Path(self.start["image"]).name
        return self.start["prompt"]

    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.config)

    def run_dir(self, sweep_dir: Path) -> Path:
        return Path(sweep_dir) / RUNS_DIR / self.name


def trajectories(spec: dict[str, Any]) -> list[Trajectory]:
    """Every trajectory, in a fixed order: start, then seed, then grid point."""
    names = list(spec["grid"])
    said = set(spec.get("said", ()))
    points = list(itertools.product(*(spec["grid"][n] for n in names))) or [()]
    out = []
    number = 0
    for start_index, start in enumerate(spec["starts"]):
        stem = Path(start["image"]).stem if "image" in start else f"prompt{start_index}"
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:32] or "start"
        for seed in spec["seeds"]:
            for point in points:
                settings = dict(zip(names, point))
                # Sections are flat objects of plain values: a copy per section suffices
                # (and keeps 16k trajectories to a second or so).
                config = {key: dict(value) if isinstance(value, dict) else value
                          for key, value in spec["config"].items()}
                config["generate"]["seed"] = seed
                for name, value in settings.items():
                    section, field, _ = GRID_FIELDS[name]
                    config[section][field] = value
                sides = tuple(side for side in ("generator", "captioner") if side in settings)
                if sides:
                    models = config["models"]
                    for section, values in pair_settings(models["generator"],
                                                         models["captioner"], sides,
                                                         said).items():
                        config[section].update(values)
                if "image" in start:
                    config["input_image"] = start["image"]
                else:
                    config["start_prompt"] = start["prompt"]
                tail = "".join(f"-{_short(n)}{v if v != '' else 'none'}"
                               for n, v in settings.items())
                name = f"{number:05d}-{stem}-s{seed}{tail}"
                out.append(Trajectory(number, name, start, seed, settings, config))
                number += 1
    return out


def _short(name: str) -> str:
    return {"clauses": "c", "feed": "feed-", "seed-mode": "", "mode": "m-", "steps": "st",
            "guidance": "g", "scheduler": "", "chunk-size": "cs", "generator": "",
            "captioner": "", "control": "ctl-", "converge": "cv-"}[name]


# -- sweep.json ---------------------------------------------------------------------------------
def read_spec(sweep_dir: Path) -> dict[str, Any] | None:
    """The spec of an existing sweep directory, None when there is none; SpecError if damaged."""
    path = Path(sweep_dir) / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise SpecError(f"{path} is not readable ({error})") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT \
            or not isinstance(spec.get("starts"), list):
        raise SpecError(f"{path} is not a truthloop sweep spec of format {SPEC_FORMAT}")
    return spec


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first difference between two specs, as `what: was X, now Y`, or None. `--batch` is
    looked at first: it also turns compiling on, and the user changed the batch, not that."""
    old_batch, new_batch = old.get("batch", 1), new.get("batch", 1)
    if old_batch != new_batch:
        return f"batch: was {_show(old_batch)}, now {_show(new_batch)}"
    return _diff(old, new, "")


def _diff(old: Any, new: Any, where: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = _diff(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and where == "starts":
        if len(old) != len(new):
            return (f"starts: {count(len(old), 'image or prompt', 'images/prompts')} in the "
                    f"sweep, {len(new)} now")
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                return f"start {i + 1}: was {_show(a)}, now {_show(b)}"
        return None
    if old != new:
        return f"{_name(where)}: was {_show(old)}, now {_show(new)}"
    return None


def _name(where: str) -> str:
    # config.loop.clauses -> clauses; seeds -> seeds
    return where.rsplit(".", 1)[-1] if where.startswith("config.") else where


def _show(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value) \
            and value == list(range(value[0], value[0] + len(value))) and len(value) > 2:
        return f"{value[0]}-{value[-1]}"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"
