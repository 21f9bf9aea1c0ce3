"""Reading runs back for a person: the `truthloop runs` table and one summary row per run.

Everything is read through `store.read_run`; captions are untrusted text, shown through
`text.visible` in Rich `Text` (never markup).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from truthloop.families import DEFAULT_CAPTIONER, DEFAULT_GENERATOR
from truthloop.record import PERSON, Record, find_cycle
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
        # A fork starts from iteration `at` of its parent run (the image it captioned first);
        # prompt_by "person": from a person's caption in place of that iteration's.
        "parent": {"run": Path(str(parent.get("run"))).name, "path": str(parent.get("run")),
                   "at": parent.get("at"), "prompt_by": _prompt_by(parent)} if parent else None,
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


def _prompt_by(parent: dict[str, Any]) -> str | None:
    """Who wrote a fork's first prompt: PERSON, or None (a fork from an image: the model)."""
    value = parent.get("prompt_by")
    return value if isinstance(value, str) else None


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


def _configured_short(key: str, model_id: str) -> str:
    """A configured (not yet loaded) model id, short: `org/name` -> `name`, a path -> its
    folder's name; open_clip's `ARCH/PRETRAINED` stays whole (its last part alone says little)."""
    if key == "clip_model" and not model_id.startswith(("/", "~", ".")):
        return model_id
    return _short(model_id)


def checkpoints_label(row: dict[str, Any]) -> str:
    """The checkpoints a run loaded (summary.json's models_loaded, short: `name@rev` or a
    folder's name), else the ones its config names: `stable-diffusion-2@1a2b3c4d / ...`; ""
    for a tiny run that has not loaded its models yet."""
    loaded = row.get("models_loaded")
    if loaded:
        return " / ".join(_short(loaded[key]) for key in MODEL_KEYS if key in loaded)
    if row.get("models") == "tiny":
        return ""  # the config keeps the real ids; the tiny ones were never named there
    return " / ".join(_configured_short(key, str(row[key])) for key in MODEL_KEYS
                      if row.get(key))


def models_label(row: dict[str, Any], checkpoints: bool = True) -> str:
    """The pair as the user chose it, generator + captioner family (`sd + clip-interrogator`),
    `(tiny)` for the random-weight models, then with `checkpoints` what was loaded:
    `sd + clip-interrogator (tiny random: sd / blip / clip)`,
    `sdxl + blip (stable-diffusion-xl-base-1.0@462165f0 / blip-image-captioning-large@...)`."""
    pair = (f"{row.get('generator') or DEFAULT_GENERATOR} + "
            f"{row.get('captioner') or DEFAULT_CAPTIONER}")
    tiny = row.get("models") == "tiny"
    details = checkpoints_label(row) if checkpoints else ""
    if tiny:
        return f"{pair} (tiny random: {details})" if details else f"{pair} (tiny)"
    return f"{pair} ({details})" if details else pair


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
    """What a run started from: a fork's parent and iteration (and `your prompt` where a person
    wrote its first caption), an image's name, or a prompt."""
    parent = row.get("parent")
    if parent:
        yours = ", your prompt" if parent.get("prompt_by") == PERSON else ""
        return f"fork of {parent.get('run')} #{parent.get('at')}{yours}"
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


def runs_folder(directory: Path | str) -> Path:
    """Where the runs of `directory` are: a sweep directory keeps them in SWEEP_DIR/runs/."""
    from truthloop.sweep.spec import RUNS_DIR, is_sweep_dir

    directory = Path(directory)
    if is_sweep_dir(directory) and (directory / RUNS_DIR).is_dir():
        return directory / RUNS_DIR
    return directory


def list_runs(directory: Path | str) -> list[dict[str, Any]]:
    """Rows for every run directory in `directory` (a sweep directory's runs/, or `directory`
    itself if it is a run)."""
    from truthloop.store import RUN_FILE, RunDirError, read_run

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: no such directory (give the folder that holds your "
                          f"run directories: `truthloop runs DIR`)")
    if (directory / RUN_FILE).exists():
        candidates = [directory]
    else:
        directory = runs_folder(directory)
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


# The table's columns, in order, with how each is justified. Every row is one line (a table of
# runs is read down its rows): the truth prompt takes the width that is left and ends in "…".
COLUMNS = (("run", "left"), ("start", "left"), ("status", "left"), ("iters", "right"),
           ("cycle", "right"), ("truth prompt", "left"), ("work / wall", "right"),
           ("models", "left"), ("seed", "left"), ("clauses", "right"))
# What a narrow terminal leaves out, first to last: the settings most runs of a folder share
# (clauses, seed mode: run.json and --json keep them), the start (a run's name already carries
# its start image's or prompt's name), the times, and last the models, which tell the runs of
# different pairs apart. Before any column goes, the models column drops its checkpoints and
# keeps the pair. Run, status, iterations, cycle and the truth always stay.
LEAVE_OUT_ORDER = ("clauses", "seed", "start", "work / wall", "models")
TRUTH_MIN_WIDTH = 24  # the truth is the point of a run: columns go before it gets narrower
# `fork of PARENT #K, your prompt` with the longest run name (store.run_dir_name)
START_MAX_WIDTH = 86
TRUTH_MAX_CHARS = 120  # the truth's length in a table of no given width
TIME_CAPTION = ("work: the iterations' own time (no model loading, no pauses); "
                "wall: start to end of each process that ran it")
STATUS_STYLES = {"converged": "green", "running": "cyan", "stopped": "yellow",
                 "interrupted": "yellow", "error": "red", "unreadable": "red",
                 "max_iters": "magenta"}


def _row_cells(row: dict[str, Any], checkpoints: bool) -> dict[str, Any]:
    """One row's cells by column; each a Text of visible() text (captions are untrusted)."""
    from rich.text import Text

    def cell(value: Any, style: str = "") -> Any:
        return Text(visible("-" if value is None else str(value)), style=style)

    status = row.get("status", "unknown")
    if row.get("problems") and status != "unreadable":
        status = f"{status} (damaged)"
    truth = row.get("truth_prompts")
    truth_text = " | ".join(str(p) for p in truth) if truth else None
    if status == "unreadable":
        truth_text = "; ".join(row.get("problems") or [])
    cycle = row.get("cycle_length")
    if cycle is not None:
        cycle = f"{cycle} @{row.get('cycle_start')}"
    times = (f"{format_duration(row.get('duration_s'))} / {format_duration(row.get('wall_s'))}"
             if "duration_s" in row else None)
    return {
        "run": cell(row.get("run")), "start": cell(start_label(row)),
        "status": cell(status, STATUS_STYLES.get(row.get("status"), "")),
        "iters": cell(row.get("iterations")), "cycle": cell(cycle),
        "truth prompt": cell(truth_text), "work / wall": cell(times),
        "models": cell(models_label(row, checkpoints) if "models" in row else None),
        "seed": cell(row.get("seed_mode")), "clauses": cell(row.get("clauses")),
    }


def runs_table(rows: list[dict[str, Any]], title: str | None = None,
               width: int | None = None) -> Any:
    """A Rich Table of runs, one line per run; every cell is a Text (captions are untrusted).

    `width`: the terminal's columns. The table then fits them: the truth prompt is cut to the
    width left (with an ellipsis), and where it would get narrower than TRUTH_MIN_WIDTH the
    models lose their checkpoints, then whole columns go in LEAVE_OUT_ORDER; the caption says
    which. Without a width every column is there and the truth is cut at TRUTH_MAX_CHARS.
    """
    import io

    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    def natural(name: str, cells: list[dict[str, Any]]) -> int:
        return max([len(name)] + [cells_row[name].cell_len for cells_row in cells])

    def build(names: list[str], cells: list[dict[str, Any]], widths: dict[str, int],
              caption: str | None) -> Any:
        table = Table(title=Text(visible(title)) if title else None, title_justify="left",
                      caption=Text(caption) if caption else None, caption_justify="left",
                      collapse_padding=True, pad_edge=False)
        for name, justify in COLUMNS:
            if name in names:
                table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",
                                 width=widths[name])
        for cells_row in cells:
            table.add_row(*(cells_row[name] for name in names))
        return table

    every = [name for name, _ in COLUMNS]
    # (columns shown, models with their checkpoints), from everything down to the essentials.
    layouts = [(every, True), (every, False)] + [
        ([name for name in every if name not in LEAVE_OUT_ORDER[:n]], False)
        for n in range(1, len(LEAVE_OUT_ORDER) + 1)]
    if width is None:
        layouts = layouts[:1]
    measurer = Console(file=io.StringIO(), width=100_000)
    for names, checkpoints in layouts:
        cells = [_row_cells(row, checkpoints) for row in rows]
        widths = {name: natural(name, cells) for name in names}
        widths["start"] = min(widths.get("start", 0), START_MAX_WIDTH)
        truth = widths["truth prompt"]
        if width is None:
            widths["truth prompt"] = min(truth, TRUTH_MAX_CHARS)
            break
        widths["truth prompt"] = 1
        others = Measurement.get(measurer, measurer.options,
                                 build(names, cells, widths, None)).maximum - 1
        room = width - others
        if room >= min(truth, TRUTH_MIN_WIDTH):
            break
    widths["truth prompt"] = min(truth, TRUTH_MAX_CHARS) if width is None \
        else max(1, min(truth, room))
    left_out = [name for name in every if name not in names]
    caption = TIME_CAPTION if "work / wall" in names else None
    if left_out:
        note = (f"left out to fit {width} columns: {', '.join(left_out)} "
                f"(a wider terminal or --json shows them)")
        caption = f"{caption}\n{note}" if caption else note
    return build(names, cells, widths, caption)
