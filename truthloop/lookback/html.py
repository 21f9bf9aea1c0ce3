"""One self-describing HTML page of a run. Every caption is escaped on the way out; diffs come
from the core's caption diff (truthloop.diff) as <del>/<ins>.
"""

from __future__ import annotations

import base64
import os
from itertools import groupby
from pathlib import Path
from typing import Any

from truthloop.diff import caption_diff
from truthloop.lookback.render import make_drift, need_images, png_bytes, write_file
from truthloop.lookback.runs import (
    TINY_LABEL,
    format_duration,
    image_records,
    models_label,
    start_label,
    summarize,
)
from truthloop.record import find_cycle
from truthloop.text import html_text


# -- HTML ---------------------------------------------------------------------------------
_esc = html_text  # the one escaping rule for every page (text.html_text)


def diff_html(old: str | None, new: str | None) -> str:
    """`new` against `old` as escaped HTML: the core's caption diff (clause level, then word
    level), removed runs in <del>, added runs in <ins>."""
    new = new or ""
    if old is None:
        return _esc(new)
    segments, _ = caption_diff(old, new)
    out: list[str] = []
    tags = {"removed": "del", "added": "ins"}
    for mark, run in groupby(segments, key=lambda segment: segment.mark):
        chunk = _esc("".join(segment.text for segment in run))
        tag = tags.get(mark)
        out.append(f"<{tag}>{chunk}</{tag}>" if tag else chunk)
    return "".join(out)


# The page's images: hard links in this folder beside it where the file system allows (no image
# bytes written; the exports folder can then be moved or sent on its own, the run's images are
# never rewritten in place); else references to the run's own images by relative path, so the
# page works where it is. Copies only for --self-contained, where links cannot be made.
FILES_DIR = "index_files"
START_FILE = "start.png"


def _url(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _link_beside(source: Path, target: Path) -> bool:
    """A hard link to `source` at `target`; False where the file system cannot make one (another
    device, a file system without hard links, too many links)."""
    if target.exists():
        if os.path.samefile(source, target):
            return True
        target.unlink()  # an earlier export's file of this name: the page's own folder
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def _reference(source: Path, out_dir: Path) -> str:
    """`source` as seen from a page in `out_dir`: a relative URL, or a file: URL where there is
    no relative path (another drive on Windows)."""
    try:
        return _url(Path(os.path.relpath(source.resolve(), out_dir.resolve())).as_posix())
    except ValueError:
        return source.resolve().as_uri()


def place_images(view: Any, out_dir: Path, self_contained: bool = False
                 ) -> tuple[dict[str, str], dict[str, int]]:
    """Where the page finds each image: {run image path: src} (the start image under "start"),
    and how many were linked, referenced in the run and copied."""
    import shutil

    from truthloop.lookback.runs import ExportError

    folder = out_dir / FILES_DIR
    made_folder = not folder.exists()
    images = []
    if view.input_path is not None:
        images.append(("start", view.input_path, START_FILE))
    images.extend((str(view.image_path(record)), view.image_path(record), Path(record.image).name)
                  for record in image_records(view))
    sources: dict[str, str] = {}
    ways = {"linked": 0, "referenced": 0, "copied": 0}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for key, source, name in images:
            if _link_beside(source, folder / name):
                sources[key], way = _url(f"{FILES_DIR}/{name}"), "linked"
            elif self_contained:
                shutil.copyfile(source, folder / name)
                sources[key], way = _url(f"{FILES_DIR}/{name}"), "copied"
            else:
                sources[key], way = _reference(source, out_dir), "referenced"
            ways[way] += 1
        if made_folder and not any(folder.iterdir()):
            folder.rmdir()  # nothing could be linked: the page points into the run
    except OSError as error:
        raise ExportError(f"cannot write the page's images into {folder}: "
                          f"{error.strerror or error}") from None
    return sources, ways


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


def page_html(view: Any, sources: dict[str, str]) -> str:
    """The HTML of one run: start, every iteration (its image from `sources`, place_images's
    URLs; fed prompt diffed against the previous one, full caption, similarities), the truth,
    the drift plot."""
    row = summarize(view)
    cycle = find_cycle(view.records)
    records = view.records
    drift, _ = make_drift(view)
    drift_uri = "data:image/png;base64," + base64.b64encode(png_bytes(drift)).decode()
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
        cycle_text = (f"fixed point at #{cycle.start}" if cycle.length == 1
                      else f"cycle of {cycle.length} starting at #{cycle.start}")
    else:
        cycle_text = "none yet"
    meta = [("status", row["status"]), ("iterations", row["iterations"]),
            ("cycle", cycle_text),
            ("start", start_label(row) or "-"),
            ("models", models_label(row)),
            ("models loaded", ", ".join(f"{k}: {v}" for k, v in
                                        (row.get("models_loaded") or {}).items()) or "-"),
            ("seed mode", f"{row.get('seed_mode')} "
                                                          f"(seed {row.get('seed')})"),
            ("clauses", f"{row.get('clauses')} (feed: {row.get('feed')})"),
            ("work time (the iterations' own)", format_duration(row.get("duration_s"))),
            ("wall time", format_duration(row.get("wall_s"))),
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
        parts.append(f'<figure id="start"><img src="{sources["start"]}" '
                     f'alt="start image"><figcaption><span class="idx">start</span> '
                     f"{_esc(row.get('start_image') or '')}</figcaption></figure>")
    previous: str | None = None
    for record in records:
        index = record.index
        classes = []
        mark = ""
        if cycle is not None:
            start, length = cycle.start, cycle.length
            if start <= index < start + length:
                classes.append("cycle")
                mark = "truth" if length == 1 else f"truth {index - start + 1}/{length}"
            elif index >= start + length:
                classes.append("repeat")
        if record.repeat_of is not None:
            mark = (mark + " · " if mark else "") + f"repeats #{record.repeat_of}"
        if record.by_person:  # a human turn is not the model's
            mark = (mark + " · " if mark else "") + "your prompt"
        fed = record.fed_prompt or ""
        body = [f'<span class="idx">#{_esc(index)}</span>'
                + (f'<span class="mark">{_esc(mark)}</span>' if mark else ""),
                f'<p class="prompt">{diff_html(previous, fed)}</p>']
        if record.caption is not None and record.caption != fed:
            whose = "your caption" if record.by_person else "caption"
            body.append(f'<p class="caption">{whose}: {_esc(record.caption)}</p>')
        sims = []
        for key, name in (("sim_start", "to start"), ("sim_prev", "to previous")):
            if isinstance(getattr(record, key), (int, float)):
                sims.append(f"{name} {getattr(record, key):.3f}")
        if sims:
            body.append(f'<p class="sims">similarity {_esc(", ".join(sims))}</p>')
        if record.image:
            src = sources[str(view.image_path(record))]
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


def write_html(view: Any, path: Path, self_contained: bool = False) -> dict[str, Any]:
    """index.html at `path`; "images" says how many images were hard-linked beside it, referenced
    in the run by relative path, and copied (only with `self_contained`)."""
    need_images(view)
    sources, ways = place_images(view, path.parent, self_contained)
    write_file(path, page_html(view, sources).encode("utf-8"))
    return {"path": path, "iterations": len(image_records(view)), "records": len(view.records),
            "images": ways}
