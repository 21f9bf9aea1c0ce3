"""Looking back at runs: `truthloop runs` (a table of runs) and `truthloop export` (GIF, MP4,
contact sheet, drift plot, HTML page).

Everything is read through `store.read_run`, so an export works on a finished, stopped or still
running run (only complete log lines count), and writes only into its own folder (default
RUN_DIR/exports/): the run's own files are never touched.

Captions are untrusted text: on the terminal they go into Rich `Text` (never markup) through
`text.visible`; in HTML they are escaped; on images they are drawn as plain glyphs.

This module is imported by `cli.build_parser` on every start, so it imports nothing heavy at the
top: Pillow and Rich are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from truthloop.text import clip, visible

EXPORT_KINDS = ("gif", "mp4", "sheet", "drift", "html")
DEFAULT_KINDS = ("gif", "sheet")
EXPORTS_DIR = "exports"
FILE_NAMES = {"gif": "trajectory.gif", "mp4": "trajectory.mp4", "sheet": "sheet.png",
              "sheet_cycle": "sheet-cycle.png", "drift": "drift.png", "html": "index.html"}
TINY_LABEL = "tiny random-weight models (machinery, not truth)"

BACKGROUND = (24, 24, 27)
FOREGROUND = (235, 235, 235)
DIM = (150, 150, 160)
CYCLE = (250, 190, 40)      # tiles / frames that belong to the truth cycle
REPEAT = (120, 160, 255)    # images drawn after the cycle was found (confirm iterations)
START_COLOUR = (70, 140, 255)
PREV_COLOUR = (255, 120, 60)


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


def image_records(view: Any) -> list[dict[str, Any]]:
    """The records that drew an image, in order: one per iteration (frame, tile, plot point)."""
    return [record for record in view.records if record.get("image")]


def find_cycle(records: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(start, length) of the first repeat in the log, also for a run still being written."""
    for record in records:
        if record.get("repeat_of") is not None:
            return record["repeat_of"], record["index"] - record["repeat_of"]
    return None


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
        start, length = cycle
        by_index = {record.get("index"): record for record in view.records}
        truth = [by_index[i].get("fed_prompt") for i in range(start, start + length)
                 if i in by_index]
    duration = sum(float((record.get("timings") or {}).get("total") or 0.0)
                   for record in view.records)
    summary = view.summary or {}
    input_image = config.get("input_image")
    return {
        "run": view.path.name,
        "path": str(view.path),
        "start_image": Path(input_image).name if input_image else None,
        "start_prompt": config.get("start_prompt"),
        "status": view.status,
        "iterations": len(images),
        "records": len(view.records),
        "cycle_start": cycle[0] if cycle else None,
        "cycle_length": cycle[1] if cycle else None,
        "truth_prompts": truth,
        "duration_s": round(duration, 3),
        "models": models.get("models"),
        "sd_model": models.get("sd_model"),
        "caption_model": models.get("caption_model"),
        "clip_model": models.get("clip_model"),
        "seed_mode": generate.get("seed_mode"),
        "seed": generate.get("seed"),
        "clauses": loop.get("clauses"),
        "feed": loop.get("feed"),
        "max_iters": loop.get("max_iters"),
        "started": summary.get("started"),
        "finished": summary.get("finished"),
        "problems": list(view.problems),
    }


def models_label(row: dict[str, Any]) -> str:
    if row.get("models") == "tiny":
        return "tiny (random)"
    parts = [Path(str(row[key])).name for key in ("sd_model", "caption_model", "clip_model")
             if row.get(key)]
    return " / ".join(parts) or "?"


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

    table = Table(title=Text(visible(title)) if title else None, title_justify="left")
    table.add_column("run", overflow="fold")
    table.add_column("start", overflow="fold", max_width=24)
    table.add_column("status")
    table.add_column("iters", justify="right")
    table.add_column("cycle", justify="right")
    table.add_column("truth prompt", overflow="fold", ratio=1, min_width=20)
    table.add_column("time", justify="right")
    table.add_column("models", overflow="fold", max_width=28)
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
        if row.get("start_image"):
            start = row["start_image"]
        elif row.get("start_prompt") is not None:
            start = "prompt: " + clip(row["start_prompt"], 40)
        else:
            start = None
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
            cell(format_duration(row.get("duration_s")) if "duration_s" in row else None),
            cell(models_label(row) if "models" in row else None), cell(row.get("seed_mode")),
            cell(row.get("clauses")),
        )
    return table


# -- drawing helpers --------------------------------------------------------------------------
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        return ImageFont.load_default()


def _line_height(font: Any) -> int:
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom - min(top, 0)) + 3


def wrap_text(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; words wider than a line are cut; overflow ends in '…'."""
    words = visible(text).split()
    lines: list[str] = []
    current = ""
    pieces: list[str] = []
    for word in words:  # split over-long words into line-sized pieces first
        while font.getlength(word) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut = max(1, cut * 3 // 4) if font.getlength(word[:cut]) > 2 * width else cut - 1
            pieces.append(word[:cut])
            word = word[cut:]
        pieces.append(word)
    truncated = False
    for piece in pieces:
        candidate = f"{current} {piece}" if current else piece
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        lines.append(current)
        current = piece
        if len(lines) == max_lines:
            truncated = True
            break
    if not truncated and current:
        lines.append(current)
    if len(lines) > max_lines:
        lines, truncated = lines[:max_lines], True
    if truncated and lines:
        last = lines[-1]
        while last and font.getlength(last + " …") > width:
            last = last[:-1]
        lines[-1] = (last + " …").strip()
    return lines


def _fit(image: Any, size: int) -> Any:
    """`image` scaled into a size x size square (aspect kept, centred on the background).

    Small images (the tiny models draw 64 px) are enlarged pixel by pixel, so what is shown is
    what the model drew, not an interpolation of it.
    """
    from PIL import Image

    image = image.convert("RGB")
    scale = size / max(image.width, image.height)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    scaled = image.resize(new, resample)
    if new == (size, size):
        return scaled
    square = Image.new("RGB", (size, size), BACKGROUND)
    square.paste(scaled, ((size - new[0]) // 2, (size - new[1]) // 2))
    return square


def _load(view: Any, record: dict[str, Any]) -> Any:
    from PIL import Image

    path = view.image_path(record)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: cannot read image of iteration {record.get('index')} "
                          f"({error})") from None


def _label(record: dict[str, Any], cycle: tuple[int, int] | None) -> str:
    index = record.get("index")
    label = f"#{index}"
    if cycle is not None:
        start, length = cycle
        if start <= index < start + length:
            label += "  truth" if length == 1 else f"  truth {index - start + 1}/{length}"
        elif index >= start + length:
            label += f"  (repeat of #{start + (index - start) % length})"
    return label


def _frame_colour(record: dict[str, Any], cycle: tuple[int, int] | None) -> tuple[int, int, int]:
    if cycle is None:
        return BACKGROUND
    start, length = cycle
    index = record.get("index", -1)
    if start <= index < start + length:
        return CYCLE
    if index >= start + length:
        return REPEAT
    return BACKGROUND


@dataclass
class FrameLayout:
    width: int
    height: int
    image_size: int
    caption_lines: int


def frame_layout(size: int, captions: bool, lines: int = 4) -> FrameLayout:
    font = _font(max(11, size // 26))
    band = (10 + _line_height(font) * (lines + 1)) if captions else 0
    height = size + band
    height += height % 2  # even sizes: H.264 needs them
    width = size + size % 2
    return FrameLayout(width, height, size, lines if captions else 0)


def render_frame(image: Any, record: dict[str, Any], layout: FrameLayout,
                 cycle: tuple[int, int] | None) -> Any:
    """One video frame: the image, and below it the iteration index and the prompt it was drawn
    from (the fed prompt)."""
    from PIL import Image, ImageDraw

    frame = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    frame.paste(_fit(image, layout.image_size), (0, 0))
    if layout.caption_lines:
        font = _font(max(11, layout.image_size // 26))
        line_h = _line_height(font)
        draw = ImageDraw.Draw(frame)
        y = layout.image_size + 5
        colour = _frame_colour(record, cycle)
        draw.text((6, y), _label(record, cycle), font=font,
                  fill=colour if colour != BACKGROUND else FOREGROUND)
        for line in wrap_text(record.get("fed_prompt") or "", font, layout.width - 12,
                              layout.caption_lines):
            y += line_h
            draw.text((6, y), line, font=font, fill=DIM)
    return frame


def iter_frames(view: Any, records: list[dict[str, Any]], layout: FrameLayout,
                captions: bool) -> Iterator[Any]:
    cycle = find_cycle(view.records)
    for record in records:
        image = _load(view, record)
        if captions:
            yield render_frame(image, record, layout, cycle)
        else:
            frame = _fit(image, layout.image_size)
            if frame.size != (layout.width, layout.height):
                from PIL import Image

                padded = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
                padded.paste(frame, (0, 0))
                frame = padded
            yield frame


def _default_size(count: int, native: int) -> int:
    if count > 144:
        return 96
    if count > 36:
        return 160
    return 256 if native < 256 else min(384, native)


def _native_size(view: Any, records: list[dict[str, Any]]) -> int:
    from PIL import Image

    try:
        with Image.open(view.image_path(records[0])) as image:
            return max(image.size)
    except (OSError, ValueError):
        return 256


def _need_images(view: Any) -> list[dict[str, Any]]:
    records = image_records(view)
    if not records:
        raise ExportError(f"{view.path} has no iterations with images yet; nothing to export")
    return records


# -- the exports ------------------------------------------------------------------------------
def write_gif(view: Any, path: Path, fps: float = 2.0, captions: bool = True,
              size: int | None = None) -> dict[str, Any]:
    records = _need_images(view)
    size = size or _default_size(len(records), _native_size(view, records))
    layout = frame_layout(size, captions)
    frames = iter_frames(view, records, layout, captions)
    first = next(frames)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=frames, loop=0,
               duration=max(20, int(round(1000 / fps))), optimize=False, disposal=1)
    _write(path, buffer.getvalue())
    return {"path": path, "frames": len(records), "width": layout.width,
            "height": layout.height}


def find_encoder() -> str | None:
    """An ffmpeg executable: on PATH, else the one bundled by imageio-ffmpeg if installed."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg  # type: ignore[import-not-found]

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - not installed, or installed without its binary
        return None


MP4_NEEDS_ENCODER = ("--mp4 needs an ffmpeg encoder: install ffmpeg (on PATH) or "
                     "`pip install imageio-ffmpeg`; --gif works without one")


def write_mp4(view: Any, path: Path, fps: float = 2.0, captions: bool = True,
              size: int | None = None, encoder: str | None = None) -> dict[str, Any]:
    encoder = encoder or find_encoder()
    if encoder is None:
        raise ExportError(MP4_NEEDS_ENCODER)
    records = _need_images(view)
    size = size or _default_size(len(records), _native_size(view, records))
    layout = frame_layout(size + size % 2, captions)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.mp4")
    command = [encoder, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{layout.width}x{layout.height}", "-r", f"{fps:g}", "-i", "-",
               "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
               str(tmp)]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
    except OSError as error:
        raise ExportError(f"cannot start the encoder {encoder}: {error.strerror}") from None
    try:
        try:
            for frame in iter_frames(view, records, layout, captions):
                process.stdin.write(frame.tobytes())
        except BrokenPipeError:
            pass
        finally:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
        stderr = process.stderr.read().decode(errors="replace")
        code = process.wait()
        if code != 0:
            last = (stderr.strip().splitlines() or [f"exit status {code}"])[-1]
            raise ExportError(f"the encoder failed making {path.name}: {visible(last)}")
        os.replace(tmp, path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            tmp.unlink()
        except OSError:
            pass
    return {"path": path, "frames": len(records), "width": layout.width,
            "height": layout.height}


@dataclass
class SheetLayout:
    tiles: int
    columns: int
    rows: int
    tile_width: int
    tile_height: int
    header_height: int
    gap: int
    width: int
    height: int
    indices: list[int]


def sheet_layout(count: int, size: int, captions: bool, columns: int | None = None,
                 caption_lines: int = 3, header_lines: int = 2) -> SheetLayout:
    """Where everything goes on a contact sheet: `columns` x `rows` tiles under a header."""
    if not columns:  # one row for a few; then about square, at most 8 across
        columns = count if count <= 4 else min(8, math.ceil(math.sqrt(count)))
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    font = _font(max(11, size // 22))
    line_h = _line_height(font)
    tile_height = size + 8 + line_h * ((caption_lines + 1) if captions else 1)
    header_height = 14 + _line_height(_font(HEADER_FONT)) * header_lines
    gap = 8
    width = gap + columns * (size + gap)
    height = header_height + rows * (tile_height + gap) + gap
    return SheetLayout(count, columns, rows, size, tile_height, header_height, gap, width,
                       height, [])


HEADER_FONT = 15


def make_sheet(view: Any, cycle_only: bool = False, captions: bool = True,
               size: int | None = None, columns: int | None = None) -> tuple[Any, SheetLayout]:
    """A contact sheet of every iteration's image (or of the truth cycle only), captioned."""
    from PIL import Image, ImageDraw

    records = _need_images(view)
    cycle = find_cycle(view.records)
    if cycle_only:
        if cycle is None:
            raise ExportError(f"{view.path} has no cycle yet (no caption repeated); "
                              f"--cycle-only needs one")
        start, length = cycle
        records = [r for r in records if start <= r.get("index", -1) < start + length]
    size = size or _default_size(len(records), _native_size(view, records))
    header_font = _font(HEADER_FONT)
    row = summarize(view)
    title = f"{row['run']}  ·  {row['status']}  ·  {row['iterations']} iterations"
    if cycle is not None:
        title += ("  ·  fixed point at #%d" % cycle[0] if cycle[1] == 1
                  else f"  ·  cycle of {cycle[1]} from #{cycle[0]}")
    if cycle_only:
        title += "  ·  cycle only"
    models = TINY_LABEL if row.get("models") == "tiny" else f"models: {models_label(row)}"
    subtitle = f"{models}  ·  seed mode {row.get('seed_mode')}  ·  clauses {row.get('clauses')}"
    probe = sheet_layout(len(records), size, captions, columns)
    text_width = probe.width - 2 * probe.gap
    header = [(line, FOREGROUND) for line in wrap_text(title, header_font, text_width, 2)]
    header += [(line, DIM) for line in wrap_text(subtitle, header_font, text_width, 3)]
    layout = sheet_layout(len(records), size, captions, columns, header_lines=len(header))
    layout.indices = [record.get("index") for record in records]
    sheet = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for number, (line, colour) in enumerate(header):
        draw.text((layout.gap, 8 + number * _line_height(header_font)), line, font=header_font,
                  fill=colour)
    font = _font(max(11, size // 22))
    line_h = _line_height(font)
    for number, record in enumerate(records):
        column, row_number = number % layout.columns, number // layout.columns
        x = layout.gap + column * (size + layout.gap)
        y = layout.header_height + row_number * (layout.tile_height + layout.gap)
        colour = _frame_colour(record, cycle)
        if colour != BACKGROUND:
            draw.rectangle((x - 3, y - 3, x + size + 2, y + size + 2), outline=colour, width=3)
        sheet.paste(_fit(_load(view, record), size), (x, y))
        text_y = y + size + 5
        draw.text((x, text_y), _label(record, cycle), font=font,
                  fill=colour if colour != BACKGROUND else FOREGROUND)
        if captions:
            for line in wrap_text(record.get("fed_prompt") or "", font, size, 3):
                text_y += line_h
                draw.text((x, text_y), line, font=font, fill=DIM)
    return sheet, layout


def write_sheet(view: Any, path: Path, **options: Any) -> dict[str, Any]:
    sheet, layout = make_sheet(view, **options)
    _write(path, _png(sheet))
    return {"path": path, **asdict(layout)}


@dataclass
class DriftLayout:
    points: int
    x_min: int
    x_max: int
    y_min: float
    y_max: float
    cycle: tuple[int, int] | None
    plot_box: tuple[int, int, int, int]


def make_drift(view: Any, width: int = 760, height: int = 320) -> tuple[Any, DriftLayout]:
    """Similarity to the start image and to the previous image per iteration (records'
    sim_start / sim_prev), with the truth cycle shaded and its start marked."""
    from PIL import Image, ImageDraw

    records = image_records(view)
    cycle = find_cycle(view.records)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(13)
    small = _font(11)
    left, top, right, bottom = 58, 34, width - 16, height - 42
    draw.text((left, 8), "similarity of each image (cosine of image embeddings)", font=font,
              fill=(30, 30, 30))
    series = {"sim_start": [], "sim_prev": []}
    for record in records:
        for key in series:
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series[key].append((record["index"], float(value)))
    values = [v for points in series.values() for _, v in points]
    indices = [record["index"] for record in records]
    x_min, x_max = (min(indices), max(indices)) if indices else (0, 1)
    if values:
        lo, hi = min(values), max(values)
        span = max(hi - lo, 0.02)
        lo, hi = max(-1.0, lo - span * 0.1), min(1.0, hi + span * 0.1)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.01, hi + 0.01
    else:
        lo, hi = 0.0, 1.0

    def px(x: float) -> float:  # half an iteration of room at both ends
        return left + (x - x_min + 0.5) / (x_max - x_min + 1) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - lo) / (hi - lo) * (bottom - top)

    # convergence: shade the cycle members, mark where the truth begins
    if cycle is not None:
        start, length = cycle
        x0 = max(left, px(start - 0.5) if length > 0 else px(start))
        x1 = min(right, px(start + length - 0.5))
        if x1 > x0:
            draw.rectangle((x0, top, x1, bottom), fill=(255, 241, 204))
        xs = px(start)
        for y in range(top, bottom, 8):
            draw.line((xs, y, xs, min(y + 4, bottom)), fill=(200, 140, 0), width=2)
        label = (f"fixed point #{start}" if length == 1 else f"cycle of {length} from #{start}")
        label_x = xs + 5 if xs + 5 + font.getlength(label) < right - 4 else \
            xs - 5 - font.getlength(label)
        draw.text((label_x, top + 2), label, font=font, fill=(160, 110, 0))

    # axes, grid and ticks
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    for i in range(5):
        y_value = lo + (hi - lo) * i / 4
        y = py(y_value)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        text = f"{y_value:.3f}"
        draw.text((left - 6 - small.getlength(text), y - 6), text, font=small, fill=(80, 80, 80))
    step = max(1, math.ceil((x_max - x_min) / 12))
    for x in range(x_min, x_max + 1, step):
        draw.line((px(x), bottom, px(x), bottom + 4), fill=(120, 120, 120))
        text = str(x)
        draw.text((px(x) - small.getlength(text) / 2, bottom + 6), text, font=small,
                  fill=(80, 80, 80))
    draw.text((left + (right - left) / 2 - 24, height - 18), "iteration", font=small,
              fill=(80, 80, 80))

    for key, colour in (("sim_start", START_COLOUR), ("sim_prev", PREV_COLOUR)):
        points = [(px(x), py(y)) for x, y in series[key]]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    legend_x = right - 300
    for offset, (name, colour) in enumerate((("to start image", START_COLOUR),
                                             ("to previous image", PREV_COLOUR))):
        x = legend_x + offset * 150
        draw.line((x, 16, x + 18, 16), fill=colour, width=3)
        draw.text((x + 22, 9), name, font=small, fill=(50, 50, 50))
    if not values:
        message = "no similarity values in this run's log"
        draw.text(((left + right) / 2 - font.getlength(message) / 2, (top + bottom) / 2),
                  message, font=font, fill=(120, 120, 120))
    layout = DriftLayout(points=len(series["sim_start"]), x_min=x_min, x_max=x_max, y_min=lo,
                         y_max=hi, cycle=cycle, plot_box=(left, top, right, bottom))
    return image, layout


def write_drift(view: Any, path: Path) -> dict[str, Any]:
    _need_images(view)
    image, layout = make_drift(view)
    _write(path, _png(image))
    return {"path": path, **asdict(layout)}


# -- HTML ---------------------------------------------------------------------------------
def _own_word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """(op, text) pieces of `new` against `old`, word by word; op is equal / insert / delete."""
    from difflib import SequenceMatcher

    a, b = old.split(), new.split()
    pieces: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            pieces.append(("equal", " ".join(b[j1:j2])))
            continue
        if i2 > i1:
            pieces.append(("delete", " ".join(a[i1:i2])))
        if j2 > j1:
            pieces.append(("insert", " ".join(b[j1:j2])))
    return pieces


def _esc(text: Any) -> str:
    return html.escape(visible("" if text is None else str(text)), quote=True)


def diff_html(old: str | None, new: str | None) -> str:
    """`new` against `old` as escaped HTML with <del>/<ins>.

    Uses the TUI's caption diff (clause level, then word level) when tui/diff.py provides it,
    else a word diff here. Both build on plain strings; everything is escaped on the way out.
    """
    new = new or ""
    if old is None:
        return _esc(new)
    try:
        import importlib

        tui_diff = importlib.import_module("tui.diff")
        rich_text, _ = tui_diff.caption_diff(old, new)
        return _rich_text_html(rich_text, tui_diff.REMOVED, tui_diff.ADDED)
    except Exception:  # noqa: BLE001 - no TUI diff (or a changed one): use the word diff
        pass
    out = []
    for op, text in _own_word_diff(old, new):
        if op == "equal":
            out.append(_esc(text))
        elif op == "delete":
            out.append(f"<del>{_esc(text)}</del>")
        else:
            out.append(f"<ins>{_esc(text)}</ins>")
    return " ".join(out)


def _rich_text_html(text: Any, removed: str, added: str) -> str:
    plain = text.plain
    marks = [""] * len(plain)
    for span in text.spans:
        style = str(span.style)
        tag = "del" if style == removed else "ins" if style == added else ""
        if tag:
            for i in range(span.start, min(span.end, len(plain))):
                marks[i] = tag
    out, i = [], 0
    while i < len(plain):
        j = i
        while j < len(plain) and marks[j] == marks[i]:
            j += 1
        chunk = html.escape(plain[i:j], quote=True)  # plain is already visible() text
        out.append(f"<{marks[i]}>{chunk}</{marks[i]}>" if marks[i] else chunk)
        i = j
    return "".join(out)


def _rel_url(target: Path, base: Path) -> str:
    from urllib.parse import quote

    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(base))
    return quote(Path(relative).as_posix(), safe="/")


PAGE_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem; background: #18181b; color: #e4e4e7; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; overflow-wrap: anywhere; }
h2 { font-size: 1.05rem; margin: 1.6rem 0 .6rem; }
table.meta td { padding: .1rem .8rem .1rem 0; vertical-align: top; overflow-wrap: anywhere; }
table.meta td:first-child { color: #a1a1aa; white-space: nowrap; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1rem; }
figure { margin: 0; background: #27272a; border: 3px solid transparent; border-radius: 6px;
         padding: .5rem; overflow-wrap: anywhere; }
figure.cycle { border-color: #fabe28; }
figure.repeat { border-color: #78a0ff; }
figure.text-only { opacity: .8; }
figure img { width: 100%; height: auto; image-rendering: pixelated; display: block;
             background: #111; }
.idx { font-weight: 600; }
.mark { color: #fabe28; font-size: .85rem; margin-left: .4rem; }
.prompt { margin: .3rem 0; }
.caption, .sims { color: #a1a1aa; font-size: .85rem; margin: .2rem 0; }
del { color: #f87171; } ins { color: #4ade80; text-decoration: underline; }
.note { color: #fabe28; }
img.drift { max-width: 100%; background: #fff; border-radius: 4px; }
"""


def page_html(view: Any, out_dir: Path) -> str:
    """The HTML of one run: start, every iteration (image by relative path, fed prompt diffed
    against the previous one, full caption, similarities), the truth, the drift plot."""
    row = summarize(view)
    cycle = find_cycle(view.records)
    records = view.records
    drift, _ = make_drift(view)
    drift_uri = "data:image/png;base64," + base64.b64encode(_png(drift)).decode()
    title = f"truthloop run {row['run']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Captions are escaped; this is a second fence: no scripts, no remote loads.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src 'self' file: data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{PAGE_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if row.get("models") == "tiny":
        parts.append(f'<p class="note">{_esc(TINY_LABEL)}</p>')
    if cycle is not None:
        cycle_text = (f"fixed point at #{cycle[0]}" if cycle[1] == 1
                      else f"cycle of {cycle[1]} starting at #{cycle[0]}")
    else:
        cycle_text = "none yet"
    meta = [("status", row["status"]), ("iterations", row["iterations"]),
            ("cycle", cycle_text),
            ("start", row.get("start_image") or (f"prompt: {row['start_prompt']}"
                                                 if row.get("start_prompt") is not None else "-")),
            ("models", models_label(row)), ("seed mode", f"{row.get('seed_mode')} "
                                                          f"(seed {row.get('seed')})"),
            ("clauses", f"{row.get('clauses')} (feed: {row.get('feed')})"),
            ("iteration time", format_duration(row.get("duration_s"))),
            ("started", row.get("started") or "-"), ("finished", row.get("finished") or "-")]
    parts.append('<table class="meta">')
    parts.extend(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in meta)
    parts.append("</table>")
    if row.get("truth_prompts"):
        parts.append("<h2>The truth</h2><ul>")
        parts.extend(f"<li>{_esc(prompt)}</li>" for prompt in row["truth_prompts"])
        parts.append("</ul>")

    parts.append('<h2>Trajectory</h2><div class="grid">')
    if view.input_path is not None:
        parts.append(f'<figure id="start"><img src="{_rel_url(view.input_path, out_dir)}" '
                     f'alt="start image"><figcaption><span class="idx">start</span> '
                     f"{_esc(row.get('start_image') or '')}</figcaption></figure>")
    previous: str | None = None
    for record in records:
        index = record.get("index")
        classes = []
        mark = ""
        if cycle is not None:
            start, length = cycle
            if start <= index < start + length:
                classes.append("cycle")
                mark = "truth" if length == 1 else f"truth {index - start + 1}/{length}"
            elif index >= start + length:
                classes.append("repeat")
        if record.get("repeat_of") is not None:
            mark = (mark + " · " if mark else "") + f"repeats #{record['repeat_of']}"
        fed = record.get("fed_prompt") or ""
        body = [f'<span class="idx">#{_esc(index)}</span>'
                + (f'<span class="mark">{_esc(mark)}</span>' if mark else ""),
                f'<p class="prompt">{diff_html(previous, fed)}</p>']
        if record.get("caption") is not None and record.get("caption") != fed:
            body.append(f'<p class="caption">caption: {_esc(record["caption"])}</p>')
        sims = []
        for key, name in (("sim_start", "to start"), ("sim_prev", "to previous")):
            if isinstance(record.get(key), (int, float)):
                sims.append(f"{name} {record[key]:.3f}")
        if sims:
            body.append(f'<p class="sims">similarity {_esc(", ".join(sims))}</p>')
        if record.get("image"):
            src = _rel_url(view.image_path(record), out_dir)
            img = f'<img src="{src}" alt="iteration {_esc(index)}" loading="lazy">'
        else:
            classes.append("text-only")
            img = ""
            body.append('<p class="caption">(no image: this caption repeated an earlier one)'
                        "</p>")
        parts.append(f'<figure id="iter-{_esc(index)}" class="{" ".join(classes)}">{img}'
                     f"<figcaption>{''.join(body)}</figcaption></figure>")
        previous = fed
    parts.append("</div>")
    parts.append(f'<h2>Drift</h2><img class="drift" src="{drift_uri}" '
                 'alt="similarity to start and to previous image per iteration">')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(view: Any, path: Path) -> dict[str, Any]:
    _need_images(view)
    _write(path, page_html(view, path.parent).encode("utf-8"))
    return {"path": path, "iterations": len(image_records(view)), "records": len(view.records)}


# -- files ------------------------------------------------------------------------------------
def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    from truthloop.store import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror}") from None


def export(run_dir: Path | str, kinds: Iterable[str] = DEFAULT_KINDS, out: Path | str | None = None,
           fps: float = 2.0, captions: bool = True, cycle_only: bool = False,
           size: int | None = None, columns: int | None = None) -> list[dict[str, Any]]:
    """Write the asked exports of a run; returns one dict per file (its "path" and layout info).

    Raises ExportError (one line) for a missing / damaged run, nothing to export, no encoder.
    """
    asked = set(kinds)
    unknown = asked - set(EXPORT_KINDS)
    if unknown:
        raise ExportError(f"unknown export kind(s): {', '.join(sorted(unknown))}")
    kinds = [kind for kind in EXPORT_KINDS if kind in asked]
    if not fps or not math.isfinite(fps) or fps <= 0 or fps > 60:
        raise ExportError("--fps must be a number above 0 and at most 60")
    if size is not None and not 16 <= size <= 2048:
        raise ExportError("--size must be between 16 and 2048 pixels")
    if columns is not None and columns < 1:
        raise ExportError("--columns must be at least 1")
    encoder = None
    if "mp4" in kinds:
        encoder = find_encoder()
        if encoder is None:  # say so before writing anything
            raise ExportError(MP4_NEEDS_ENCODER)
    view = open_run(run_dir)
    _need_images(view)
    if cycle_only and "sheet" in kinds and find_cycle(view.records) is None:
        raise ExportError(f"{view.path} has no cycle yet (no caption repeated); "
                          f"--cycle-only needs one")
    out_dir = Path(out) if out is not None else view.path / EXPORTS_DIR
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create {out_dir}: {error.strerror}; choose another with --out")
    results = []
    for kind in kinds:
        if kind == "gif":
            results.append(write_gif(view, out_dir / FILE_NAMES["gif"], fps, captions, size))
        elif kind == "mp4":
            results.append(write_mp4(view, out_dir / FILE_NAMES["mp4"], fps, captions, size,
                                     encoder))
        elif kind == "sheet":
            name = FILE_NAMES["sheet_cycle" if cycle_only else "sheet"]
            results.append(write_sheet(view, out_dir / name, cycle_only=cycle_only,
                                       captions=captions, size=size, columns=columns))
        elif kind == "drift":
            results.append(write_drift(view, out_dir / FILE_NAMES["drift"]))
        elif kind == "html":
            results.append(write_html(view, out_dir / FILE_NAMES["html"]))
    return results


def export_default(run_dir: Path | str) -> list[Path]:
    """GIF + contact sheet of a run into RUN_DIR/exports/; the files written.

    For the TUI's export key: safe on a running run; raises ExportError with a one-line message
    (show it as is) when the run cannot be exported yet. Takes a second or so per ~50 images:
    call it from a worker thread.
    """
    return [result["path"] for result in export(run_dir, DEFAULT_KINDS)]


# -- the commands -----------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    runs = sub.add_parser("runs", help="a table of the runs in a directory (default ./runs)")
    runs.add_argument("dir", nargs="?", default="runs", metavar="DIR")
    runs.add_argument("--json", action="store_true", help="JSON instead of a table")

    export_parser = sub.add_parser(
        "export", help="GIF / MP4 / contact sheet / drift plot / HTML page of a run",
        description="Export a run (finished, stopped or still running) into RUN_DIR/exports/ "
                    "(or --out). With no kind flag: --gif and --sheet.")
    export_parser.add_argument("run_dir", metavar="RUN_DIR")
    kinds = export_parser.add_argument_group("what to export")
    kinds.add_argument("--gif", action="store_true", help="animated GIF of the trajectory")
    kinds.add_argument("--mp4", action="store_true",
                       help="MP4 of the trajectory (needs ffmpeg on PATH or imageio-ffmpeg)")
    kinds.add_argument("--sheet", action="store_true", help="contact sheet PNG")
    kinds.add_argument("--drift", action="store_true",
                       help="PNG plot of similarity to start / previous image")
    kinds.add_argument("--html", action="store_true",
                       help="one HTML page of the run (open it in a browser)")
    kinds.add_argument("--all", action="store_true", help="every kind (mp4 if an encoder exists)")
    export_parser.add_argument("--out", metavar="DIR", help="where to write (default "
                               "RUN_DIR/exports/)")
    export_parser.add_argument("--fps", type=float, default=2.0,
                               help="frames per second of GIF/MP4 (default 2)")
    export_parser.add_argument("--no-captions", dest="captions", action="store_false",
                               help="frames and tiles without the prompt text")
    export_parser.add_argument("--cycle-only", action="store_true",
                               help="the contact sheet shows only the truth cycle")
    export_parser.add_argument("--size", type=int, help="image side in pixels on frames/tiles")
    export_parser.add_argument("--columns", type=int, help="contact sheet columns")


def run_command(args: argparse.Namespace) -> int:
    from truthloop.cli import UserError

    try:
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "export":
            return cmd_export(args)
    except ExportError as error:
        code = 1 if str(error) == MP4_NEEDS_ENCODER else 2
        raise UserError(str(error), code=code) from None
    except BrokenPipeError:  # `truthloop runs --json | head`: the reader left, that is fine
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        except OSError:
            pass
        return 0
    raise UserError(f"unknown command {args.command!r}")


def cmd_runs(args: argparse.Namespace) -> int:
    rows = list_runs(args.dir)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console

    console = Console(highlight=False, markup=False, emoji=False,
                      width=None if os.isatty(1) else 160)
    if not rows:
        console.print(f"no runs in {visible(args.dir)}")
        return 0
    console.print(runs_table(rows, title=f"{len(rows)} run(s) in {args.dir}"))
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def cmd_export(args: argparse.Namespace) -> int:
    kinds = [kind for kind in EXPORT_KINDS if getattr(args, kind, False)]
    if args.all:
        kinds = [kind for kind in EXPORT_KINDS if kind != "mp4" or find_encoder() or args.mp4]
    if not kinds:
        kinds = list(DEFAULT_KINDS)
    started = time.perf_counter()
    results = export(args.run_dir, kinds, out=args.out, fps=args.fps, captions=args.captions,
                     cycle_only=args.cycle_only, size=args.size, columns=args.columns)
    for result in results:
        path = Path(result["path"])
        details = ""
        if "frames" in result:
            details = f"{_count(result['frames'], 'frame')}, {result['width']}x{result['height']}"
        elif "tiles" in result:
            details = f"{_count(result['tiles'], 'tile')}, {result['columns']}x{result['rows']} grid"
        elif "points" in result:
            details = _count(result["points"], "point")
        elif "iterations" in result:
            details = f"{result['iterations']} iterations; open file://{path.resolve()}"
        size_kb = path.stat().st_size / 1024
        print(f"wrote {visible(str(path))} ({details}, {size_kb:.0f} KB)")
    print(f"exported in {time.perf_counter() - started:.1f}s")
    return 0
