"""The drift measures again, after the fact, by named embedders beside the run's own CLIP.

The loop measures with the CLIP it holds (measures.py). The drift studies measure each pair
with a model of its own: the Telephone Game (Mollah et al. 2025) CLIP ViT-B/32 across the
modalities, DINO ViT-B/16 image to image and MPNet text to text; CycleReward DreamSim and
all-MiniLM-L6-v2. `truthloop measure DIR --embedder NAME` (measure_command.py) computes, for
every finished run of DIR (a run or a sweep), the same similarities as the loop records (the same
pairs, to the start and to the previous iteration, the same generations) with NAME's embedding,
from the images and texts the run wrote; a study is re-scored without running it again.

Per run directory, one file per embedder, written whole and renamed into place while holding the
run's lock (log.jsonl and run.json's config are never touched):

    measures-NAME.json  {"embedder": NAME, "label": "DINO ViT-B/16", "model": {"requested",
                         "repo", "revision", "path"}, "tiny": false, "device": "cpu",
                         "measures": ["image"], "records": 12,
                         "iterations": [{"index": 0, "sim_start": 0.91, "sim_prev": 0.91}, ...]}

`iterations` holds one entry per log record with the loop's field names (sim_*, text_*,
cross_*), each written only where measured, rounded to 6 decimals as the log's. run.json's
top-level "named_measures" says which embedders measured the run ({NAME: {"file", "label",
"measures", "model", "tiny"}}); the report reads them from there (lookback/report.py: MCD and
SDR per embedder beside the run's own). A file is done when it covers every record of the log
with the same models (real or tiny); a run resumed later has more records and is measured again.

Core: no torch. The embedders themselves are ml/embedders.py's; cli.py hands their loader to
`measure_dirs`, the public entry (also for code that imports runs and wants them re-scored).
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Sequence

from truthloop import measures as ms
from truthloop.errors import OneLineError
from truthloop.model_ids import EMBEDDER_MODEL_IDS
from truthloop.store import (
    INPUT_FILE, RUN_FILE, RunDirError, RunWriter, atomic_write_bytes, is_locked, json_bytes,
    read_run, read_run_info, update_run_info,
)
from truthloop.sweep.spec import SpecError, is_sweep_dir, read_spec, trajectories
from truthloop.text import count

RUN_INFO_FIELD = "named_measures"   # run.json's top-level field
FILE_FORMAT = 1
IMAGE_BATCH = 16
TEXT_BATCH = 64


class MeasureInputError(OneLineError):
    """A DIR or an embedder `truthloop measure` cannot use, found before any model loads."""


@dataclass(frozen=True)
class NamedEmbedder:
    """An embedding model of the drift studies, by the name `--embedder` takes.

    kind: how ml/embedders.py computes its features (clip: CLIP's projected image and text
    features, one space for both; dino: ViT's CLS token after the last norm, as timm's DINO;
    dinov2: Dinov2Model's pooled CLS token; sentence: mean of the token embeddings over the
    attention mask, the sentence-transformers recipe; dreamsim: the dreamsim package's embed).
    measures: the pairs it can measure (measures.MEASURES' names)."""

    name: str
    label: str
    kind: str
    measures: tuple[str, ...]
    max_length: int | None = None  # sentence-transformers' max_seq_length (its model card)
    package: str | None = None     # a package it needs that truthloop does not install
    # For `truthloop models`: the weights' licence (the hub page's; OpenAI's CLIP repository's
    # for its checkpoint, whose page names none) and the download (its fp32 weights).
    licence: str = ""
    download_gb: float | None = None

    @property
    def repo(self) -> str | None:
        return EMBEDDER_MODEL_IDS.get(self.name)

    @property
    def file(self) -> str:
        return measures_file(self.name)

    def column(self, statistic: str, measure: str) -> str:
        """`MCD (DINO ViT-B/16, image ↔ image)`: a report's name for one of its numbers."""
        return f"{statistic} ({self.label}, {ms.MEASURES[measure].label})"

    def missing_package(self) -> str | None:
        """The pip package it needs and this Python lacks, or None."""
        if self.package and importlib.util.find_spec(self.package) is None:
            return self.package
        return None


EMBEDDERS: dict[str, NamedEmbedder] = {e.name: e for e in (
    NamedEmbedder("clip-vitb32", "CLIP ViT-B/32", "clip", ("image", "text", "cross"),
                  licence="MIT", download_gb=0.61),
    NamedEmbedder("dino-vitb16", "DINO ViT-B/16", "dino", ("image",), licence="Apache-2.0",
                  download_gb=0.34),
    NamedEmbedder("dinov2-base", "DINOv2 ViT-B/14", "dinov2", ("image",), licence="Apache-2.0",
                  download_gb=0.35),
    NamedEmbedder("mpnet", "all-mpnet-base-v2", "sentence", ("text",), max_length=384,
                  licence="Apache-2.0", download_gb=0.44),
    NamedEmbedder("minilm", "all-MiniLM-L6-v2", "sentence", ("text",), max_length=256,
                  licence="Apache-2.0", download_gb=0.09),
    NamedEmbedder("dreamsim", "DreamSim", "dreamsim", ("image",), package="dreamsim",
                  licence="MIT"),
)}


def measures_file(name: str) -> str:
    return f"measures-{name}.json"


def embedders_named(names: Iterable[str]) -> list[NamedEmbedder]:
    """The embedders of `names` in order, each once; MeasureInputError (one line) for a name
    that is not one, or one whose package is not installed."""
    out: list[NamedEmbedder] = []
    for name in names:
        named = EMBEDDERS.get(name)
        if named is None:
            raise MeasureInputError(f"unknown embedder {name!r}; the embedders are "
                                    f"{', '.join(EMBEDDERS)}")
        missing = named.missing_package()
        if missing:
            raise MeasureInputError(f"--embedder {name} needs the {missing} package, which is "
                                    f"not installed here: pip install {missing}")
        if named not in out:
            out.append(named)
    return out


# -- one run ----------------------------------------------------------------------------------
def run_starts_from_image(view: Any) -> bool:
    """A run from an image (its start is input.png) rather than from a prompt (its start is the
    first image it drew)."""
    return (view.path / INPUT_FILE).exists() or bool(view.config.get("input_image"))


def _unit(vector: Sequence[float] | None) -> list[float] | None:
    if vector is None:
        return None
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 and math.isfinite(norm) else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def rescore(view: Any, named: NamedEmbedder, embedder: Any,
            problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Per record of the run (store.RunView), the similarities `named` can measure, computed
    as the loop computes its own (loop.py, measures.py) with `embedder`'s features:

    image  sim_start / sim_prev    the image drawn vs the start image / the previous image
    text   text_start / text_prev  the compared prompt vs the first one / the previous one
    cross  cross_start / cross_prev  the caption vs the start image / the image it describes
                                     (the latest image drawn before it, else the start image);
                                     none for a person's caption (a fork's first turn)

    The start image is input.png, or for a run from a prompt the first image it drew (whose
    similarity to the previous image is then None). `embedder`: image_features(list of PIL
    images) and text_features(list of str), lists of vectors. An image that cannot be read
    leaves its similarities out and a line in `problems`."""
    from PIL import Image

    problems = [] if problems is None else problems
    records = view.records
    want = set(named.measures)
    from_image = run_starts_from_image(view)
    start = INPUT_FILE if from_image else (records[0].image if records else None)

    image_names: list[str] = []
    if want & {"image", "cross"}:
        image_names = list(dict.fromkeys(
            [*([start] if start else []), *(r.image for r in records if r.image)]))
    images: dict[str, list[float] | None] = {}
    for first in range(0, len(image_names), IMAGE_BATCH):
        batch, loaded = image_names[first:first + IMAGE_BATCH], []
        for name in batch:
            try:
                with Image.open(view.path / name) as image:
                    loaded.append((name, image.convert("RGB")))
            except Exception as error:  # noqa: BLE001 - any decoder complaint: unreadable
                problems.append(f"{view.path / name} cannot be read ({error}); its "
                                "similarities are left out")
                images[name] = None
        if loaded:
            vectors = embedder.image_features([image for _, image in loaded])
            images.update((name, _unit(v)) for (name, _), v in zip(loaded, vectors))

    described = [r.caption for r in records
                 if "cross" in want and r.caption is not None and r.author is None]
    texts_wanted = list(dict.fromkeys(
        [*(r.compared for r in records if "text" in want), *described]))
    texts: dict[str, list[float] | None] = {}
    for first in range(0, len(texts_wanted), TEXT_BATCH):
        batch = texts_wanted[first:first + TEXT_BATCH]
        texts.update((t, _unit(v)) for t, v in zip(batch, embedder.text_features(batch)))

    start_vector = images.get(start) if start else None
    latest = start_vector if from_image else None  # the previous image: what a caption describes
    first_text = previous_text = None
    out: list[dict[str, Any]] = []
    for number, record in enumerate(records):
        row: dict[str, Any] = {"index": record.index}
        if "text" in want:
            vector = texts[record.compared]
            if number == 0:
                first_text = vector
            row["text_start"] = _round(ms.cosine(vector, first_text))
            row["text_prev"] = _round(ms.cosine(vector, previous_text))
            previous_text = vector
        if "cross" in want and record.caption is not None and record.author is None:
            vector = texts[record.caption]
            row["cross_start"] = _round(ms.cosine(vector, start_vector))
            row["cross_prev"] = _round(ms.cosine(vector, latest))
        if record.image:
            vector = images.get(record.image)
            if "image" in want:
                row["sim_start"] = _round(ms.cosine(vector, start_vector))
                row["sim_prev"] = _round(ms.cosine(vector, latest))
            latest = vector
        out.append({k: v for k, v in row.items() if v is not None})
    return out


def read_measured(run_dir: Path, name: str) -> dict[str, Any] | None:
    """measures-NAME.json of a run, checked; None when there is none; ValueError (one line,
    naming the file) when it is damaged."""
    path = Path(run_dir) / measures_file(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not readable ({error})") from None
    if not isinstance(data, dict) or data.get("embedder") != name \
            or not isinstance(data.get("iterations"), list) \
            or not all(isinstance(row, dict) and isinstance(row.get("index"), int)
                       for row in data["iterations"]):
        raise ValueError(f"{path} is not a truthloop measures file of {name}")
    return data


def named_series(data: dict[str, Any], measure: str, image_start: bool
                 ) -> list[tuple[int, float]]:
    """(generation, similarity to the start) of one measure from a measures file, counted in
    generations as the run's own (measures.series)."""
    rows = [SimpleNamespace(index=row["index"], **{
        key: value for key, value in row.items()
        if key != "index" and isinstance(value, (int, float)) and not isinstance(value, bool)})
        for row in data.get("iterations") or []]
    return ms.series(rows, measure, image_start)


def measured_by(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """run.json's named_measures: {NAME: {"file", "label", "measures", "model", "tiny"}}."""
    found = info.get(RUN_INFO_FIELD) if isinstance(info, dict) else None
    return {k: v for k, v in found.items() if isinstance(v, dict)} \
        if isinstance(found, dict) else {}


# -- many runs ----------------------------------------------------------------------------------
def run_dirs(path: Path) -> list[Path]:
    """The run directories of `path`: itself (a run), or a sweep's trajectories that have
    started. MeasureInputError (one line) for anything else."""
    path = Path(path)
    if not path.exists():
        raise MeasureInputError(f"{path}: no such directory")
    if not path.is_dir():
        raise MeasureInputError(f"{path} is not a directory (give a run or a sweep directory)")
    if is_sweep_dir(path):
        try:
            spec = read_spec(path)
        except SpecError as error:
            raise MeasureInputError(str(error)) from None
        return [run for run in (t.run_dir(path) for t in trajectories(spec or {}))
                if run.is_dir()]
    if (path / RUN_FILE).is_file():
        return [path]
    raise MeasureInputError(f"{path} is neither a run nor a sweep directory (no {RUN_FILE}, "
                            "no sweep.json)")


@dataclass
class Tally:
    """What `measure_dirs` did, per (run, embedder)."""

    measured: int = 0     # files written now
    done: int = 0         # already there, and whole
    skipped: int = 0      # runs left out (being written, unreadable): said once each on `say`
    incomplete: int = 0   # measured with something left out (an unreadable image)
    lines: list[str] = field(default_factory=list)
    left_out: set[Path] = field(default_factory=set)


Loader = Callable[[NamedEmbedder], Any]


def measure_dirs(paths: Sequence[Path], names: Sequence[str], load: Loader, tiny: bool = False,
                 say: Callable[[str], None] = print, every_s: float = 10.0) -> Tally:
    """Measure every run under `paths` (runs or sweeps) with each embedder of `names`.

    `load(named)` returns the embedder (image_features, text_features; `source`: the model's
    {"requested", "repo", "revision", "path"}, `device`), called only when a run needs it, so a
    rerun over runs already measured loads nothing. `tiny`: the embedders are the tiny
    random-weight ones (recorded; a file measured with the other kind is measured again).
    A run being written (its lock held) is skipped with one line on `say`, as is a run that
    cannot be read; the rest are measured. Raises MeasureInputError before anything is loaded
    or written for a path or a name it cannot use."""
    chosen = embedders_named(names)
    runs = list(dict.fromkeys(run for path in paths for run in run_dirs(path)))
    tally = Tally()
    for named in chosen:
        embedder = None
        before = (tally.measured, tally.done)
        shown = time.monotonic()
        for number, run_dir in enumerate(runs, 1):
            if is_locked(run_dir):
                _skip(tally, say, run_dir, f"{run_dir} is being written (running); skipped: "
                                           "measure it when it has stopped")
                continue
            try:
                view = read_run(run_dir)
            except RunDirError as error:
                _skip(tally, say, run_dir, f"{error}; skipped")
                continue
            if not view.records:
                continue  # nothing to measure yet
            try:
                have = read_measured(run_dir, named.name)
            except ValueError:
                have = None  # damaged: measured again, and replaced whole
            if have is not None and have.get("format") == FILE_FORMAT \
                    and have.get("records") == len(view.records) \
                    and have.get("tiny") is tiny \
                    and have.get("measures") == list(named.measures):
                _record_in_run(run_dir, named, have)
                tally.done += 1
                continue
            if embedder is None:
                started = time.monotonic()
                embedder = load(named)
                say(f"{named.name} ({named.label}) ready on {getattr(embedder, 'device', '?')} "
                    f"in {time.monotonic() - started:.1f}s")
                shown = time.monotonic()
            problems: list[str] = []
            rows = rescore(view, named, embedder, problems)
            data = {"format": FILE_FORMAT, "embedder": named.name, "label": named.label,
                    "model": getattr(embedder, "source", None), "tiny": tiny,
                    "device": getattr(embedder, "device", None),
                    "measures": list(named.measures), "records": len(view.records),
                    "iterations": rows}
            if problems:
                tally.incomplete += 1
                for problem in problems:
                    say(f"truthloop: note: {problem}")
            if _write(run_dir, named, data, len(view.records), tally, say):
                tally.measured += 1
            if time.monotonic() - shown >= every_s:
                shown = time.monotonic()
                say(f"{named.name}: {number}/{len(runs)} runs")
        measured, done = tally.measured - before[0], tally.done - before[1]
        say(f"{named.name} ({named.label}, {', '.join(named.measures)}): "
            f"{count(measured, 'run')} measured"
            + (f", {done} already measured" if done else ""))
        del embedder
    return tally


def _skip(tally: Tally, say: Callable[[str], None], run_dir: Path, line: str) -> None:
    """A run left out, said once (not once per embedder)."""
    if run_dir in tally.left_out:
        return
    tally.left_out.add(run_dir)
    tally.skipped += 1
    tally.lines.append(line)
    say(f"truthloop: note: {line}")


def _write(run_dir: Path, named: NamedEmbedder, data: dict[str, Any], records: int,
           tally: Tally, say: Callable[[str], None]) -> bool:
    """Write measures-NAME.json and name it in run.json, holding the run's lock (so no resume
    writes meanwhile); False, with a line, when the run was taken or changed while measuring."""
    try:
        writer = RunWriter.hold(run_dir)
    except RunDirError:
        _skip(tally, say, run_dir, f"{run_dir} started being written while it was measured; "
                                   "skipped: measure it when it has stopped")
        return False
    try:
        _clear_stale(run_dir)
        try:
            now = len(read_run(run_dir).records)
        except RunDirError:
            now = -1
        if now != records:
            _skip(tally, say, run_dir, f"{run_dir} changed while it was measured; skipped: "
                                       "measure it again")
            return False
        atomic_write_bytes(run_dir / named.file, json_bytes(data) + b"\n")
        _record_in_run(run_dir, named, data, holding=True)
    finally:
        writer.close()
    return True


def _record_in_run(run_dir: Path, named: NamedEmbedder, data: dict[str, Any],
                   holding: bool = False) -> None:
    """run.json names the embedder (written only when it does not already say the same)."""
    entry = {"file": named.file, "label": named.label, "measures": list(named.measures),
             "model": data.get("model"), "tiny": data.get("tiny")}

    def entries() -> dict[str, dict[str, Any]] | None:
        try:
            return measured_by(read_run_info(run_dir))
        except (OSError, ValueError, UnicodeDecodeError):
            return None  # a damaged run.json is not rewritten here

    found = entries()
    if (found is None or found.get(named.name) == entry) and not _stale_temps(run_dir):
        return
    writer = None
    if not holding:
        try:
            writer = RunWriter.hold(run_dir)
        except RunDirError:
            return  # being written now: the next measure names it
    try:
        _clear_stale(run_dir)
        found = entries()  # again, under the lock
        if found is not None and found.get(named.name) != entry:
            update_run_info(run_dir, {RUN_INFO_FIELD: {**found, named.name: entry}})
    finally:
        if writer is not None:
            writer.close()


def _stale_temps(run_dir: Path) -> list[Path]:
    """Temp files of measure's writes (a measures file, run.json) that a kill between a temp
    file's write and its rename left behind."""
    return [*run_dir.glob(".measures-*.tmp-*"), *run_dir.glob(f".{RUN_FILE}.tmp-*")]


def _clear_stale(run_dir: Path) -> None:
    """Remove _stale_temps: called holding the run's lock, under which nothing else writes
    there, so any one found is a dead writer's."""
    for stale in _stale_temps(run_dir):
        stale.unlink(missing_ok=True)
