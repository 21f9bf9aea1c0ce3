"""Reading runs back for a person: the `truthloop runs` table and one summary row per run.

Everything is read through `store.read_run`; captions are untrusted text, shown through
`text.visible` in Rich `Text` (never markup).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.families import DEFAULT_CAPTIONER, DEFAULT_GENERATOR
from truthloop.record import Record, find_cycle
from truthloop.text import clip, visible

TINY_LABEL = "tiny random-weight models (machinery, not truth)"


class ExportError(Exception):
    """Why an export or listing cannot be done; str() is one line for the user."""


# -- reading ----------------------------------------------------------------------------------
def open_run(run_dir: Path | str) -> Any:
    """read_run, with every problem that makes the run unusable turned into an ExportError.

    A torn last log line (a writer mid-append) is not a problem: it is simply not a record yet.
    """
    from truthloop.store import RunDirError, read_run

    try:
        view = read_run(Path(run_dir))
    except RunDirError as error:
        raise ExportError(str(error)) from None
    for problem in view.problems:
        if "last line is incomplete" in problem or "summary.json" in problem:
            continue
        raise ExportError(f"{problem}; the run directory is damaged")
    return view


def image_records(view: Any) -> list[Record]:
    """The records that drew an image, in order: one per iteration (frame, tile, plot point)."""
    return [record for record in view.records if record.image]


def summarize(view: Any) -> dict[str, Any]:
    """One row of `truthloop runs` (also the header of sheets and pages); JSON-ready."""
    config = view.config or {}
    models = config.get("models", {}) or {}
    generate = config.get("generate", {}) or {}
    loop = config.get("loop", {}) or {}
    images = image_records(view)
    cycle = find_cycle(view.records)
    truth = None
    if cycle is not None:
        start, length = cycle.start, cycle.length
        by_index = {record.index: record for record in view.records}
        truth = [by_index[i].fed_prompt for i in range(start, start + length)
                 if i in by_index]
    # Work time: the iterations' own seconds (captioning, drawing, similarity), without model
    # loading or time spent paused; wall time: each process's start to its end, added up.
    duration = sum(float(record.timings.get("total") or 0.0)
                   for record in view.records)
    summary = view.summary or {}
    input_image = config.get("input_image")
    parent = view.info.get("parent") if isinstance(view.info.get("parent"), dict) else None
    return {
        "run": view.path.name,
        "path": str(view.path),
        "start_image": Path(input_image).name if input_image else None,
        "start_prompt": config.get("start_prompt"),
        # A fork starts from iteration `at` of its parent run (the image it captioned first).
        "parent": {"run": Path(str(parent.get("run"))).name, "path": str(parent.get("run")),
                   "at": parent.get("at")} if parent else None,
        "status": view.status,
        "iterations": len(images),
        "records": len(view.records),
        "cycle_start": cycle.start if cycle else None,
        "cycle_length": cycle.length if cycle else None,
        "truth_prompts": truth,
        "duration_s": round(duration, 3),
        "wall_s": wall_seconds(summary, view.status),
        "models": models.get("models"),
        # Runs from before the model families were all sd + clip-interrogator (and said sd_model).
        "generator": models.get("generator", DEFAULT_GENERATOR),
        "captioner": models.get("captioner", DEFAULT_CAPTIONER),
        "generator_model": models.get("generator_model", models.get("sd_model")),
        "caption_model": models.get("caption_model"),
        "clip_model": models.get("clip_model"),
        # What was really loaded (summary.json's models_loaded): for tiny runs the tiny
        # checkpoints, not the real ids run.json's config keeps; None before models loaded.
        "models_loaded": loaded_models(summary),
        "seed_mode": generate.get("seed_mode"),
        "seed": generate.get("seed"),
        "clauses": loop.get("clauses"),
        "feed": loop.get("feed"),
        "max_iters": loop.get("max_iters"),
        "started": summary.get("started"),
        "finished": summary.get("finished"),
        "problems": list(view.problems),
    }


MODEL_KEYS = ("generator_model", "caption_model", "clip_model")


def loaded_models(summary: dict[str, Any]) -> dict[str, str] | None:
    """summary.json's models_loaded as one line per model: `repo@revision`, or the local path."""
    loaded = summary.get("models_loaded")
    if not isinstance(loaded, dict):
        return None
    labels = {}
    for key in MODEL_KEYS:
        item = loaded.get(key)
        if item is None and key == "generator_model":
            item = loaded.get("sd_model")  # a summary from before the model families
        if not isinstance(item, dict):
            continue
        if item.get("repo"):
            revision = item.get("revision")
            labels[key] = str(item["repo"]) + (f"@{str(revision)[:8]}" if revision else "")
        elif item.get("path") or item.get("requested"):
            labels[key] = str(item.get("path") or item.get("requested"))
    return labels or None


def _short(label: str) -> str:
    """`org/name@rev` -> `name@rev`; a path -> its folder's name (a checkpoint file's folder)."""
    if "@" in label or not label.startswith(("/", "~", ".")):
        return label.split("/")[-1]
    path = Path(label)
    return path.parent.name if path.suffix else path.name


def models_label(row: dict[str, Any]) -> str:
    loaded = row.get("models_loaded")
    pair = (row.get("generator", DEFAULT_GENERATOR), row.get("captioner", DEFAULT_CAPTIONER))
    if row.get("models") == "tiny" and pair != (DEFAULT_GENERATOR, DEFAULT_CAPTIONER):
        return f"tiny (random): {pair[0]} + {pair[1]}"
    if loaded:
        names = " / ".join(_short(loaded[key]) for key in MODEL_KEYS if key in loaded)
        return f"tiny (random): {names}" if row.get("models") == "tiny" else names
    if row.get("models") == "tiny":
        return "tiny (random)"
    parts = [Path(str(row[key])).name for key in MODEL_KEYS if row.get(key)]
    return " / ".join(parts) or "?"


def wall_seconds(summary: dict[str, Any], status: str) -> float | None:
    """From each segment's start to its end (summary.json's `segments`), added up; a running
    run's last segment counts up to now. None where no segment says both ends."""
    from datetime import datetime, timezone

    def when(text: Any) -> datetime | None:
        try:
            return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            return None

    segments = summary.get("segments")
    if not isinstance(segments, list):
        return None
    total, known = 0.0, False
    for number, segment in enumerate(segments):
        if not isinstance(segment, dict):
            continue
        start = when(segment.get("started"))
        end = when(segment.get("finished"))
        if end is None and status == "running" and number == len(segments) - 1:
            end = datetime.now(timezone.utc)
        if start is not None and end is not None and end >= start:
            total += (end - start).total_seconds()
            known = True
    return round(total, 3) if known else None


def start_label(row: dict[str, Any]) -> str | None:
    """What a run started from: a fork's parent and iteration, an image's name, or a prompt."""
    parent = row.get("parent")
    if parent:
        return f"fork of {parent.get('run')} #{parent.get('at')}"
    if row.get("start_image"):
        return row["start_image"]
    if row.get("start_prompt") is not None:
        return "prompt: " + clip(row["start_prompt"], 40)
    return None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def list_runs(directory: Path | str) -> list[dict[str, Any]]:
    """Rows for every run directory in `directory` (or for `directory` itself if it is a run)."""
    from truthloop.store import RUN_FILE, RunDirError, read_run

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: no such directory (give the folder that holds your "
                          f"run directories: `truthloop runs DIR`)")
    if (directory / RUN_FILE).exists():
        candidates = [directory]
    else:
        try:
            # Hidden entries are a writer's half-created run directories (store.RunWriter).
            candidates = sorted(child for child in directory.iterdir()
                                if child.is_dir() and not child.name.startswith(".")
                                and (child / RUN_FILE).exists())
        except OSError as error:
            raise ExportError(f"cannot list {directory}: {error.strerror}") from None
    rows = []
    for path in candidates:
        try:
            rows.append(summarize(read_run(path)))
        except RunDirError as error:
            rows.append({"run": path.name, "path": str(path), "status": "unreadable",
                         "problems": [str(error)]})
        except OSError as error:
            rows.append({"run": path.name, "path": str(path), "status": "unreadable",
                         "problems": [f"{path}: {error.strerror}"]})
    return rows


def runs_table(rows: list[dict[str, Any]], title: str | None = None) -> Any:
    """A Rich Table; every cell is a Text built from visible() text (captions are untrusted)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(visible(title)) if title else None, title_justify="left",
                  caption=Text("work: the iterations' own time (no model loading, no pauses); "
                               "wall: start to end of each process that ran it"),
                  caption_justify="left", collapse_padding=True)
    # A run's name is one word: never wrapped mid-name (the truth prompt gives way instead).
    longest = max((len(visible(str(row.get("run") or ""))) for row in rows), default=3)
    table.add_column("run", no_wrap=True, min_width=min(longest, 64), overflow="ellipsis")
    # A fork's start names its parent run: room for that name in one piece.
    widest = max((len(word) for row in rows for word in (start_label(row) or "").split()),
                 default=5)
    table.add_column("start", overflow="fold", min_width=min(widest, 40), max_width=40)
    table.add_column("status")
    table.add_column("iters", justify="right")
    table.add_column("cycle", justify="right")
    table.add_column("truth prompt", overflow="fold", min_width=12)
    table.add_column("work / wall", justify="right")
    table.add_column("models", overflow="fold", max_width=24)
    table.add_column("seed", overflow="fold")
    table.add_column("clauses", justify="right")
    styles = {"converged": "green", "running": "cyan", "stopped": "yellow",
              "interrupted": "yellow", "error": "red", "unreadable": "red", "max_iters": "magenta"}

    def cell(value: Any, style: str = "") -> Any:
        return Text(visible("-" if value is None else str(value)), style=style)

    for row in rows:
        status = row.get("status", "unknown")
        if row.get("problems") and status != "unreadable":
            status = f"{status} (damaged)"
        start = start_label(row)
        truth = row.get("truth_prompts")
        truth_text = clip(" | ".join(str(p) for p in truth), 120) if truth else None
        if status == "unreadable":
            truth_text = clip("; ".join(row.get("problems") or []), 120)
        cycle = row.get("cycle_length")
        if cycle is not None:
            cycle = f"{cycle} @{row.get('cycle_start')}"
        table.add_row(
            cell(row.get("run")), cell(start), cell(status, styles.get(row.get("status"), "")),
            cell(row.get("iterations")), cell(cycle), cell(truth_text),
            cell(f"{format_duration(row.get('duration_s'))} / {format_duration(row.get('wall_s'))}"
                 if "duration_s" in row else None),
            cell(models_label(row) if "models" in row else None), cell(row.get("seed_mode")),
            cell(row.get("clauses")),
        )
    return table
