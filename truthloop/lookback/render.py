"""Pillow drawing of a run: frames (GIF/MP4), the contact sheet and the drift plot.

Captions are drawn as plain glyphs (through `text.visible`), never interpreted.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from truthloop.lookback.runs import (
    TINY_LABEL,
    ExportError,
    image_records,
    models_label,
    summarize,
)
from truthloop.record import Cycle, Record, find_cycle
from truthloop.text import count, visible

BACKGROUND = (24, 24, 27)
FOREGROUND = (235, 235, 235)
DIM = (150, 150, 160)
CYCLE = (250, 190, 40)      # tiles / frames that belong to the truth cycle
REPEAT = (120, 160, 255)    # images drawn after the cycle was found (confirm iterations)
START_COLOUR = (70, 140, 255)
PREV_COLOUR = (255, 120, 60)


# -- drawing helpers --------------------------------------------------------------------------
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        return ImageFont.load_default()


def _space(font: Any) -> float:
    """The gap between words. Pillow's default font (Aileron) has a narrow space, 2 px at 11 px,
    and words ran together ("startimage", "0.984to 1.000"); 0.45 em reads as a space."""
    return max(font.getlength(" "), round(getattr(font, "size", 11) * 0.45))


def text_length(font: Any, text: str) -> float:
    """The width `draw_text` gives `text`."""
    words = text.split(" ")
    return sum(font.getlength(word) for word in words) + _space(font) * (len(words) - 1)


def draw_text(draw: Any, xy: tuple[float, float], text: str, font: Any, fill: Any) -> None:
    """`text` drawn word by word with a readable space (see `_space`); never interpreted."""
    x, y = xy
    space = _space(font)
    for word in text.split(" "):
        if word:
            draw.text((x, y), word, font=font, fill=fill)
        x += font.getlength(word) + space


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
        if text_length(font, candidate) <= width:
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
        while last and text_length(font, last + " …") > width:
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


def _load(view: Any, record: Record) -> Any:
    from PIL import Image

    path = view.image_path(record)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: cannot read image of iteration {record.index} "
                          f"({error})") from None


YOURS = "(your prompt)"  # beside the index of an iteration a person wrote the caption of


def _label(record: Record, cycle: Cycle | None) -> str:
    index = record.index
    label = f"#{index}"
    if record.by_person:  # a human turn is not the model's
        label += f"  {YOURS}"
    if cycle is not None:
        start, length = cycle.start, cycle.length
        if start <= index < start + length:
            label += "  truth" if length == 1 else f"  truth {index - start + 1}/{length}"
        elif index >= start + length:
            label += f"  (repeat of #{start + (index - start) % length})"
    return label


def _frame_colour(record: Record, cycle: Cycle | None) -> tuple[int, int, int]:
    if cycle is None:
        return BACKGROUND
    start, length = cycle.start, cycle.length
    index = record.index
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


def render_frame(image: Any, record: Record, layout: FrameLayout,
                 cycle: Cycle | None) -> Any:
    """One video frame: the image, and below it the iteration index and the prompt it was drawn
    from (the fed prompt)."""
    colour = _frame_colour(record, cycle)
    return _frame(image, _label(record, cycle), record.fed_prompt or "",
                  colour if colour != BACKGROUND else FOREGROUND, layout)


def _frame(image: Any, label: str, text: str, colour: tuple[int, int, int],
           layout: FrameLayout) -> Any:
    from PIL import Image, ImageDraw

    frame = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    frame.paste(_fit(image, layout.image_size), (0, 0))
    if layout.caption_lines:
        font = _font(max(11, layout.image_size // 26))
        line_h = _line_height(font)
        draw = ImageDraw.Draw(frame)
        y = layout.image_size + 5
        draw_text(draw, (6, y), label, font=font, fill=colour)
        for line in wrap_text(text, font, layout.width - 12, layout.caption_lines):
            y += line_h
            draw_text(draw, (6, y), line, font=font, fill=DIM)
    return frame


START_LABEL = "start"


def start_image(view: Any) -> Any | None:
    """The run's start image (input.png) as RGB, or None for a --prompt start."""
    from PIL import Image

    path = view.input_path
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: cannot read the start image ({error})") from None


def _start_text(view: Any) -> str:
    parent = view.info.get("parent")
    if isinstance(parent, dict):  # a fork: its parent's image at iteration K
        return f"fork of {Path(str(parent.get('run'))).name} at #{parent.get('at')}"
    name = (view.config or {}).get("input_image")
    return f"the start image ({Path(name).name})" if name else "the start image"


def iter_frames(view: Any, records: list[Record], layout: FrameLayout,
                captions: bool) -> Iterator[Any]:
    cycle = find_cycle(view.records)
    start = start_image(view)
    if start is not None:  # the first frame: what the trajectory started from
        if captions:
            yield _frame(start, START_LABEL, _start_text(view), START_COLOUR, layout)
        else:
            yield _pad(_fit(start, layout.image_size), layout)
    for record in records:
        image = _load(view, record)
        if captions:
            yield render_frame(image, record, layout, cycle)
        else:
            yield _pad(_fit(image, layout.image_size), layout)


def _pad(frame: Any, layout: FrameLayout) -> Any:
    if frame.size == (layout.width, layout.height):
        return frame
    from PIL import Image

    padded = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    padded.paste(frame, (0, 0))
    return padded


def default_size(count: int, native: int) -> int:
    if count > 144:
        return 96
    if count > 36:
        return 160
    return 256 if native < 256 else min(384, native)


def native_size(view: Any, records: list[Record]) -> int:
    from PIL import Image

    try:
        with Image.open(view.image_path(records[0])) as image:
            return max(image.size)
    except (OSError, ValueError):
        return 256


def need_images(view: Any) -> list[dict[str, Any]]:
    records = image_records(view)
    if not records:
        raise ExportError(f"{view.path} has no iterations with images yet; nothing to export")
    return records


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
    indices: list[int]   # the iterations tiled, in order
    start: bool = False  # a first tile shows the start image


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

    records = need_images(view)
    cycle = find_cycle(view.records)
    if cycle_only:
        if cycle is None:
            raise ExportError(f"{view.path} has no cycle yet (no caption repeated); "
                              f"--cycle-only needs one")
        start, length = cycle.start, cycle.length
        records = [r for r in records if start <= r.index < start + length]
    size = size or default_size(len(records), native_size(view, records))
    header_font = _font(HEADER_FONT)
    row = summarize(view)
    title = f"{row['run']}  ·  {row['status']}  ·  {count(row['iterations'], 'iteration')}"
    if cycle is not None:
        title += ("  ·  fixed point at #%d" % cycle.start if cycle.length == 1
                  else f"  ·  cycle of {cycle.length} from #{cycle.start}")
    if cycle_only:
        title += "  ·  cycle only"
    models = TINY_LABEL if row.get("models") == "tiny" else f"models: {models_label(row)}"
    subtitle = f"{models}  ·  seed mode {row.get('seed_mode')}  ·  clauses {row.get('clauses')}"
    # One tile per iteration, after the start image's (as the GIF and the page begin with it).
    start = None if cycle_only else start_image(view)
    tiles: list[Any] = ([(start, START_LABEL, _start_text(view), START_COLOUR)]
                        if start is not None else [])
    for record in records:
        colour = _frame_colour(record, cycle)
        tiles.append((record, _label(record, cycle), record.fed_prompt or "", colour))
    probe = sheet_layout(len(tiles), size, captions, columns)
    text_width = probe.width - 2 * probe.gap
    header = [(line, FOREGROUND) for line in wrap_text(title, header_font, text_width, 2)]
    header += [(line, DIM) for line in wrap_text(subtitle, header_font, text_width, 3)]
    layout = sheet_layout(len(tiles), size, captions, columns, header_lines=len(header))
    layout.indices = [record.index for record in records]
    layout.start = start is not None
    sheet = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for number, (line, colour) in enumerate(header):
        draw_text(draw, (layout.gap, 8 + number * _line_height(header_font)), line, font=header_font,
                  fill=colour)
    font = _font(max(11, size // 22))
    line_h = _line_height(font)
    for number, (source, label, text, colour) in enumerate(tiles):
        column, row_number = number % layout.columns, number // layout.columns
        x = layout.gap + column * (size + layout.gap)
        y = layout.header_height + row_number * (layout.tile_height + layout.gap)
        if colour not in (BACKGROUND, START_COLOUR):
            draw.rectangle((x - 3, y - 3, x + size + 2, y + size + 2), outline=colour, width=3)
        image = _load(view, source) if isinstance(source, Record) else source
        sheet.paste(_fit(image, size), (x, y))
        text_y = y + size + 5
        draw_text(draw, (x, text_y), label, font=font,
                  fill=colour if colour != BACKGROUND else FOREGROUND)
        if captions:
            for line in wrap_text(text, font, size, 3):
                text_y += line_h
                draw_text(draw, (x, text_y), line, font=font, fill=DIM)
    return sheet, layout


def write_sheet(view: Any, path: Path, **options: Any) -> dict[str, Any]:
    sheet, layout = make_sheet(view, **options)
    write_file(path, png_bytes(sheet))
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
    y_zoomed: bool = False  # the y axis does not start at 0 (the range is written under it)


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
    left, top, right, bottom = 74, 34, width - 16, height - 42
    draw_text(draw, (left, 8), "similarity of each image (cosine of image embeddings)", font=font,
              fill=(30, 30, 30))
    series = {"sim_start": [], "sim_prev": []}
    for record in records:
        for key in series:
            value = getattr(record, key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series[key].append((record.index, float(value)))
    values = [v for points in series.values() for _, v in points]
    indices = [record.index for record in records]
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
        start, length = cycle.start, cycle.length
        x0 = max(left, px(start - 0.5) if length > 0 else px(start))
        x1 = min(right, px(start + length - 0.5))
        if x1 > x0:
            draw.rectangle((x0, top, x1, bottom), fill=(255, 241, 204))
        xs = px(start)
        for y in range(top, bottom, 8):
            draw.line((xs, y, xs, min(y + 4, bottom)), fill=(200, 140, 0), width=2)
        label = (f"fixed point #{start}" if length == 1 else f"cycle of {length} from #{start}")
        label_x = xs + 5 if xs + 5 + text_length(font, label) < right - 4 else \
            xs - 5 - text_length(font, label)
        draw_text(draw, (label_x, top + 2), label, font=font, fill=(160, 110, 0))

    # axes, grid and ticks
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    for i in range(5):
        y_value = lo + (hi - lo) * i / 4
        y = py(y_value)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        text = f"{y_value:.3f}"
        draw_text(draw, (left - 6 - text_length(small, text), y - 6), text, font=small, fill=(80, 80, 80))
    step = max(1, math.ceil((x_max - x_min) / 12))
    for x in range(x_min, x_max + 1, step):
        draw.line((px(x), bottom, px(x), bottom + 4), fill=(120, 120, 120))
        text = str(x)
        draw_text(draw, (px(x) - text_length(small, text) / 2, bottom + 6), text, font=small,
                  fill=(80, 80, 80))
    draw_text(draw, (left + (right - left) / 2 - 24, height - 18), "iteration", font=small,
              fill=(80, 80, 80))
    # The y axis: what it measures, and its range when it does not start at 0 (it zooms to the
    # values, so a flat 0.992-1.000 must not read as a big swing).
    axis_name = "cosine similarity"
    label = Image.new("RGB", (int(text_length(small, axis_name)) + 4, 16), (255, 255, 255))
    draw_text(ImageDraw.Draw(label), (2, 1), axis_name, font=small, fill=(80, 80, 80))
    label = label.rotate(90, expand=True)
    image.paste(label, (4, int((top + bottom) / 2 - label.height / 2)))
    zoomed = values and lo > 0.0
    range_note = (f"y axis zoomed: {lo:.3f} to {hi:.3f}" if zoomed
                  else f"y axis: {lo:.3f} to {hi:.3f}")
    draw_text(draw, (left, height - 18), range_note, font=small,
              fill=(200, 60, 60) if zoomed else (80, 80, 80))

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
        draw_text(draw, (x + 22, 9), name, font=small, fill=(50, 50, 50))
    if not values:
        message = "no similarity values in this run's log"
        draw_text(draw, ((left + right) / 2 - text_length(font, message) / 2, (top + bottom) / 2),
                  message, font=font, fill=(120, 120, 120))
    layout = DriftLayout(points=len(series["sim_start"]), x_min=x_min, x_max=x_max, y_min=lo,
                         y_max=hi, cycle=(cycle.start, cycle.length) if cycle else None,
                         plot_box=(left, top, right, bottom), y_zoomed=bool(zoomed))
    return image, layout


def drift_csv(view: Any) -> str:
    """The drift plot's series: one row per drawn image (iteration, sim_start, sim_prev,
    in_cycle); an empty cell where a value is missing."""
    cycle = find_cycle(view.records)
    rows = ["iteration,sim_start,sim_prev,in_cycle"]
    for record in image_records(view):
        in_cycle = cycle is not None and cycle.start <= record.index < cycle.found_at
        cells = ["" if value is None else repr(float(value))
                 for value in (record.sim_start, record.sim_prev)]
        rows.append(f"{record.index},{cells[0]},{cells[1]},{int(in_cycle)}")
    return "\n".join(rows) + "\n"


def write_drift(view: Any, path: Path) -> dict[str, Any]:
    need_images(view)
    image, layout = make_drift(view)
    write_file(path, png_bytes(image))
    csv_path = path.with_suffix(".csv")
    write_file(csv_path, drift_csv(view).encode())
    return {"path": path, "csv": csv_path, **asdict(layout)}


# -- files ------------------------------------------------------------------------------------
def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_file(path: Path, data: bytes) -> None:
    from truthloop.store import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror}") from None
