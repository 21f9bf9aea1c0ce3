"""`truthloop compare A B --html PAGE`: the comparison (truthloop.compare) as one self-contained
HTML page: the summary, then one row per aligned iteration with both images (inline, as data URIs)
and B's caption diffed against A's. Every caption is escaped on the way out."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from truthloop.compare import Comparison
from truthloop.diff import caption_diff
from truthloop.lookback.html import PAGE_CSS, diff_html
from truthloop.record import Record
from truthloop.store import atomic_write_bytes
from truthloop.text import html_text

THUMB = 256

CSS = PAGE_CSS + """
table.cmp { border-collapse: collapse; width: 100%; }
table.cmp td, table.cmp th { border-top: 1px solid #3f3f46; padding: .4rem; vertical-align: top;
                             overflow-wrap: anywhere; }
table.cmp th { text-align: left; color: #a1a1aa; font-weight: 500; }
table.cmp img { width: 160px; height: auto; image-rendering: pixelated; background: #111; }
tr.first td { background: #3b2f0a; }
.same { color: #a1a1aa; }
.summary li { margin: .2rem 0; }
"""


_esc = html_text  # the one escaping rule for every page (text.html_text)


def _data_uri(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except Exception:  # noqa: BLE001 - a missing or damaged image: the row says so
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_cell(run_dir: Path, record: Record | None) -> str:
    if record is None:
        return '<td class="same">—</td>'
    label = f"#{record.index}" + (" (your prompt)" if record.by_person else "")
    if record.image is None:
        note = f"not drawn (repeats #{record.repeat_of})" if record.repeat_of is not None \
            else "no image"
        return f'<td><span class="idx">{label}</span> <span class="same">{_esc(note)}</span></td>'
    uri = _data_uri(run_dir / record.image)
    image = f'<img src="{uri}" alt="{label}">' if uri else '<span class="note">unreadable</span>'
    return f'<td><span class="idx">{label}</span><br>{image}</td>'


def _caption(record: Record | None) -> str | None:
    if record is None:
        return None
    return record.caption if record.caption is not None else record.fed_prompt


def page(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    first = comparison.first_difference
    summary = "".join(f"<li>{_esc(line)}</li>" for line in comparison.lines())
    rows = []
    for row in comparison.rows:
        cls = ' class="first"' if first is not None and row.position == first.position else ""
        ca, cb = _caption(row.a), _caption(row.b)
        if row.a is not None and row.b is not None:
            _, stats = caption_diff(ca, cb)
            text = (f'<div class="same">the same caption</div>' if stats.same
                    else f'<div class="prompt">{diff_html(ca, cb)}</div>'
                         f'<div class="caption">{_esc(stats.describe())}</div>')
        else:
            text = f'<div class="prompt">{_esc(ca if ca is not None else cb)}</div>'
        rows.append(f"<tr{cls}>{_image_cell(a.path, row.a)}{_image_cell(b.path, row.b)}"
                    f"<td>{text}</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>truthloop compare: {_esc(a.path.name)} vs {_esc(b.path.name)}</title>
<style>{CSS}</style></head><body>
<h1>{_esc(a.path.name)} vs {_esc(b.path.name)}</h1>
<ul class="summary">{summary}</ul>
<p class="caption">Each row: A's and B's iteration side by side; the caption is B's, diffed
against A's (<del>only in A</del>, <ins>only in B</ins>). The highlighted row is where they first
differ.</p>
<table class="cmp"><tr><th>A</th><th>B</th><th>caption (B vs A)</th></tr>
{chr(10).join(rows)}
</table>
</body></html>
"""


def write_page(comparison: Comparison, out: Path) -> Path:
    """Write the page (to a temp name, then renamed); returns its path."""
    out = Path(out)
    atomic_write_bytes(out, page(comparison).encode())
    return out
