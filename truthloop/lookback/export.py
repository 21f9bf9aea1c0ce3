"""`export`: every kind of export of a run into RUN_DIR/exports/ (or a folder given), in one call.

Writes only into its own folder: the run's own files are never touched. Works on a finished,
stopped or still running run (only complete log lines count).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from truthloop.lookback.html import write_html
from truthloop.lookback.render import need_images, write_drift, write_sheet
from truthloop.lookback.runs import ExportError, open_run
from truthloop.lookback.video import (
    MP4_NEEDS_ENCODER,
    find_encoder,
    write_gif,
    write_mp4,
)
from truthloop.record import find_cycle

EXPORT_KINDS = ("gif", "mp4", "sheet", "drift", "html")
DEFAULT_KINDS = ("gif", "sheet")
EXPORTS_DIR = "exports"
FILE_NAMES = {"gif": "trajectory.gif", "mp4": "trajectory.mp4", "sheet": "sheet.png",
              "sheet_cycle": "sheet-cycle.png", "drift": "drift.png", "html": "index.html"}


def export(run_dir: Path | str, kinds: Iterable[str] = DEFAULT_KINDS, out: Path | str | None = None,
           fps: float = 2.0, captions: bool = True, cycle_only: bool = False,
           size: int | None = None, columns: int | None = None,
           self_contained: bool = False) -> list[dict[str, Any]]:
    """Write the asked exports of a run; returns one dict per file (its "path" and layout info).

    The page's images are hard links beside it, else the run's own by relative path;
    `self_contained` copies them beside it where links cannot be made (html.place_images).

    Raises ExportError (one line) for a missing / damaged run, nothing to export, no encoder.
    """
    asked = set(kinds)
    unknown = asked - set(EXPORT_KINDS)
    if unknown:
        raise ExportError(f"unknown export {'kind' if len(unknown) == 1 else 'kinds'}: "
                          f"{', '.join(sorted(unknown))}")
    kinds = [kind for kind in EXPORT_KINDS if kind in asked]
    if not fps or not math.isfinite(fps) or fps <= 0 or fps > 60:
        raise ExportError("--fps must be a number above 0 and at most 60")
    if size is not None and not 16 <= size <= 2048:
        raise ExportError("--size must be between 16 and 2048 pixels")
    if columns is not None and columns < 1:
        raise ExportError("--columns must be at least 1")
    if self_contained and "html" not in kinds:
        raise ExportError("--self-contained is about the HTML page's images: add --html "
                          "(or --all)")
    encoder = None
    if "mp4" in kinds:
        encoder = find_encoder()
        if encoder is None:  # say so before writing anything
            raise ExportError(MP4_NEEDS_ENCODER)
    view = open_run(run_dir)
    need_images(view)
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
            result = write_gif(view, out_dir / FILE_NAMES["gif"], fps, captions, size)
        elif kind == "mp4":
            result = write_mp4(view, out_dir / FILE_NAMES["mp4"], fps, captions, size, encoder)
        elif kind == "sheet":
            name = FILE_NAMES["sheet_cycle" if cycle_only else "sheet"]
            result = write_sheet(view, out_dir / name, cycle_only=cycle_only, captions=captions,
                                 size=size, columns=columns)
        elif kind == "drift":
            result = write_drift(view, out_dir / FILE_NAMES["drift"])
        else:
            result = write_html(view, out_dir / FILE_NAMES["html"], self_contained)
        results.append({"kind": kind, **result})
    return results


def export_default(run_dir: Path | str) -> list[Path]:
    """GIF + contact sheet of a run into RUN_DIR/exports/; the files written.

    For the TUI's export key: safe on a running run; raises ExportError with a one-line message
    (show it as is) when the run cannot be exported yet. Takes a second or so per ~50 images:
    call it from a worker thread.
    """
    return [result["path"] for result in export(run_dir, DEFAULT_KINDS)]
