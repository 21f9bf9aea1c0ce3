"""The attractor atlas of a sweep: where its trajectories ended, at two levels.

1. Exact attractors: trajectories whose cycle has the same compared prompts (a cycle is the same
   whatever member a trajectory entered it by, so the key is its lexicographically first
   rotation), with basin sizes, cycle lengths and iterations to converge.
2. Motifs: attractors clustered by meaning, on the CLIP embeddings the workers stored with each
   trajectory (`embedding.json`: the mean of the cycle's image embeddings and of its prompts'
   text embeddings). The unit image and text vectors are concatenated (each half weighs the
   same; Euclidean distance on unit vectors is a monotone function of cosine distance) and
   clustered with scikit-learn's HDBSCAN. HDBSCAN because the number of motifs is the question,
   not a parameter (k-means would need it), because it leaves outliers unassigned rather than
   forcing them into a motif (each becomes a motif of its own here), and because it finds clusters
   of different densities. The units clustered are the distinct attractors, not trajectories: a
   big basin is one place, not many points, and must not look like a dense motif.

Near-repeat runs (`--converge text|image`) end in places their words do not pin down: two runs
that stopped at "a red barn at dusk" and "a red barn in the dusk" reached one place by the
criterion that stopped them. Their attractors are grouped by that same criterion: exact
attractors of such runs whose stored embeddings (the truth prompts' text mean for "text", the
truth images' mean for "image") have cosine >= the runs' --near-threshold, chained (single
linkage, as the loop accepts a near repeat of any earlier iteration), become one attractor; its
`variants` lists the exact prompts it gathers. Exact runs are grouped as always.

Needs no GPU and no Ray: only the sweep directory. Writes atlas.json, atlas.png, atlas.html.
"""

from __future__ import annotations

import base64
import io
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from truthloop.lookback.render import _font, _line_height, draw_text, text_length, wrap_text
from truthloop.lookback.runs import TINY_LABEL
from truthloop.measures import group_near
from truthloop.record import canonical_cycle, cycle_prompts
from truthloop.store import atomic_write_bytes, atomic_write_json, read_records
from truthloop.sweep import state as st
from truthloop.sweep.spec import ATLAS_DIR, SpecError, read_spec, trajectories
from truthloop.text import count, html_text, visible


class AtlasError(Exception):
    """One line for the user."""


def _embedding(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / st.EMBEDDING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _compared_cycle(run_dir: Path, stored: dict | None) -> list[str]:
    """The cycle's compared prompts: as the worker stored them, else from the run's log."""
    if stored and isinstance(stored.get("compared"), list) and stored["compared"]:
        return [str(p) for p in stored["compared"]]
    return cycle_prompts(read_records(run_dir)) or []


def _vector(stored: dict | None) -> list[float] | None:
    """Image and text halves, each unit length, concatenated and scaled to unit length."""
    if not stored:
        return None
    parts = [v for v in (stored.get("image"), stored.get("text")) if isinstance(v, list) and v]
    if not parts:
        return None
    out: list[float] = []
    for part in parts:
        norm = math.sqrt(sum(x * x for x in part)) or 1.0
        out.extend(x / norm / math.sqrt(len(parts)) for x in part)
    return out


def build_atlas(sweep_dir: Path, min_cluster_size: int = 2) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    try:
        spec = read_spec(sweep_dir)
    except SpecError as error:
        raise AtlasError(str(error)) from None
    if spec is None:
        raise AtlasError(f"{sweep_dir} is not a sweep directory (no sweep.json)")
    trajs = trajectories(spec)
    rows = st.table(sweep_dir, trajs)
    states = Counter(row["state"] for row in rows)
    attractors: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    vectors: dict[str, list[float]] = {}  # run name -> embedding
    near_vectors: dict[str, list[float] | None] = {}  # run name -> what its criterion compares
    for trajectory, row in zip(trajs, rows):
        if row["state"] != "converged":
            continue
        run_dir = trajectory.run_dir(sweep_dir)
        summary = st.read_summary(run_dir) or {}
        stored = _embedding(run_dir)
        key = canonical_cycle(_compared_cycle(run_dir, stored))
        criterion = (summary.get("cycle") or {}).get("criterion", "exact")
        if criterion not in ("text", "image"):
            criterion = "exact"
        else:
            near_vectors[trajectory.name] = _part(stored, criterion)
        loop = trajectory.config.get("loop") or {}
        entry = attractors.setdefault((criterion, key), {
            "prompts": list(key), "length": len(key),
            "kind": "fixed_point" if len(key) == 1 else "cycle", "criterion": criterion,
            "members": [], "iterations": [], "transients": [], "truth": None,
        })
        if criterion != "exact":
            entry["threshold"] = loop.get("near_threshold")
        entry["members"].append(trajectory.name)
        entry["iterations"].append(summary.get("iterations", row["iterations"]))
        entry["transients"].append((summary.get("cycle") or {}).get("start", 0))
        if entry["truth"] is None:
            entry["truth"] = {"prompts": summary.get("truth_prompts"),
                              "images": [f"runs/{trajectory.name}/{name}"
                                         for name in summary.get("truth_images") or []]}
        vector = _vector(stored)
        if vector is not None:
            vectors[trajectory.name] = vector

    merged = _merge_near(list(attractors.values()), near_vectors)
    ordered = sorted(merged, key=lambda a: (-len(a["members"]), a["prompts"]))
    for number, entry in enumerate(ordered):
        entry["id"] = number
        entry["basin_size"] = len(entry["members"])
        its, trans = entry.pop("iterations"), entry.pop("transients")
        entry["iterations_to_converge"] = {"min": min(its), "median": statistics.median(its),
                                           "max": max(its)}
        entry["transient"] = {"min": min(trans), "median": statistics.median(trans),
                              "max": max(trans)}
    motifs, method = _motifs(ordered, vectors, min_cluster_size)
    points, explained = _map(ordered, vectors)
    total = len(trajs)
    converged = states.get("converged", 0)
    return {
        "sweep": str(sweep_dir),
        # "tiny": random-weight models, whose attractors mean nothing (said on the PNG and page)
        "models": ((spec.get("config") or {}).get("models") or {}).get("models"),
        "trajectories": total,
        "converged": converged,
        "never_converged_fraction": round((total - converged) / total, 4) if total else 0.0,
        "not_converged": {s: n for s, n in sorted(states.items()) if s != "converged"},
        "cycle_length_histogram": {str(k): v for k, v in sorted(Counter(
            a["length"] for a in ordered for _ in a["members"]).items())},
        "attractors": ordered,
        "motifs": motifs,
        "clustering": method,
        "map": points,
        # the share of the embeddings' variance along the map's x and y axes (PC 1, PC 2)
        "map_explained_variance": explained,
    }


def _part(stored: dict | None, criterion: str) -> list[float] | None:
    """The unit vector a near criterion compares: the truth prompts' (text) or images' mean."""
    value = (stored or {}).get(criterion)
    if not isinstance(value, list) or not value:
        return None
    norm = math.sqrt(sum(x * x for x in value)) or 1.0
    return [x / norm for x in value]


def _merge_near(entries: list[dict[str, Any]],
                near_vectors: dict[str, list[float] | None]) -> list[dict[str, Any]]:
    """Exact attractors of near-repeat runs joined where their criterion says they are one
    place (see the module's docstring); exact runs' attractors as they are."""
    out = [e for e in entries if e["criterion"] == "exact"]
    for criterion in ("text", "image"):
        group = [e for e in entries if e["criterion"] == criterion]
        if not group:
            continue
        means: list[list[float] | None] = []
        for entry in group:
            members = [near_vectors[m] for m in entry["members"] if near_vectors.get(m)]
            if not members:
                means.append(None)
                continue
            mean = [sum(column) / len(members) for column in zip(*members)]
            norm = math.sqrt(sum(x * x for x in mean)) or 1.0
            means.append([x / norm for x in mean])
        thresholds = [e["threshold"] for e in group if isinstance(e.get("threshold"),
                                                                  (int, float))]
        labels = group_near(means, max(thresholds) if thresholds else 1.0)
        joined: dict[int, list[dict[str, Any]]] = {}
        for label, entry in zip(labels, group):
            joined.setdefault(label, []).append(entry)
        for parts in joined.values():
            # The biggest basin names the place (then the first prompts, for a fixed order).
            parts.sort(key=lambda e: (-len(e["members"]), e["prompts"]))
            head = dict(parts[0])
            for key in ("members", "iterations", "transients"):
                head[key] = [x for part in parts for x in part[key]]
            head["variants"] = [part["prompts"] for part in parts]
            out.append(head)
    return out


def _motifs(attractors: list[dict[str, Any]], vectors: dict[str, list[float]],
            min_cluster_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import numpy as np

    means: list[Any] = []
    for entry in attractors:
        members = [vectors[m] for m in entry["members"] if m in vectors]
        if members:
            mean = np.mean(np.asarray(members, dtype=float), axis=0)
            means.append(mean / (np.linalg.norm(mean) or 1.0))
        else:
            means.append(None)
    usable = [i for i, m in enumerate(means) if m is not None]
    labels = {i: -1 for i in range(len(attractors))}
    method: dict[str, Any] = {"method": "hdbscan", "min_cluster_size": min_cluster_size,
                              "min_samples": 1, "allow_single_cluster": True,
                              "features": "concat(unit CLIP image mean, unit CLIP text mean)",
                              "units": "exact attractors"}
    if len(usable) > min_cluster_size:
        from sklearn.cluster import HDBSCAN

        # allow_single_cluster: without it a sweep with one motif (plus outliers) would report
        # every attractor as noise, since HDBSCAN never selects its root cluster by default.
        found = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=1, copy=True,
                        allow_single_cluster=True).fit_predict(
            np.stack([means[i] for i in usable]))
        labels.update({i: int(label) for i, label in zip(usable, found)})
    else:
        method["note"] = f"{count(len(usable), 'embedded attractor')}: too few to cluster"
    # Noise and unembedded attractors: a motif each.
    groups: dict[Any, list[int]] = {}
    for i in range(len(attractors)):
        groups.setdefault(labels[i] if labels[i] >= 0 else ("alone", i), []).append(i)
    motifs = []
    for members in groups.values():
        basin = sum(attractors[i]["basin_size"] for i in members)
        medoid = members[0]
        if len(members) > 1 and all(means[i] is not None for i in members):
            dist = [sum(float(np.linalg.norm(means[i] - means[j])) for j in members)
                    for i in members]
            medoid = members[int(np.argmin(dist))]
        motifs.append({"basin_size": basin, "attractors": sorted(members), "medoid": medoid})
    motifs.sort(key=lambda m: (-m["basin_size"], m["attractors"]))
    for number, motif in enumerate(motifs):
        motif["id"] = number
        medoid = attractors[motif["medoid"]]
        motif["medoid_attractor"] = motif.pop("medoid")
        motif["medoid_trajectory"] = medoid["members"][0]
        motif["medoid_image"] = (medoid["truth"]["images"] or [None])[0]
        motif["representative_prompt"] = (medoid["truth"]["prompts"] or [None])[0]
        for i in motif["attractors"]:
            attractors[i]["motif"] = number
    return motifs, method


def _map(attractors: list[dict[str, Any]],
         vectors: dict[str, list[float]]) -> tuple[list[dict], list[float] | None]:
    """Every embedded truth in 2-D (PCA of the embeddings), with its attractor and motif; and
    the share of the variance each axis explains (None without a PCA)."""
    import numpy as np

    points = [(name, a) for a in attractors for name in a["members"] if name in vectors]
    if not points:
        return [], None
    data = np.asarray([vectors[name] for name, _ in points], dtype=float)
    explained = None
    if len(points) >= 2 and data.shape[1] >= 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2)
        xy = pca.fit_transform(data - data.mean(axis=0))
        explained = [round(float(v), 4) for v in np.nan_to_num(pca.explained_variance_ratio_)]
    else:
        xy = np.zeros((len(points), 2))
    return [{"trajectory": name, "attractor": a["id"], "motif": a.get("motif"),
             "x": round(float(x), 5), "y": round(float(y), 5)}
            for (name, a), (x, y) in zip(points, xy)], explained


# -- writing ------------------------------------------------------------------------------------
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def write_atlas(sweep_dir: Path, out: Path | None = None,
                min_cluster_size: int = 2) -> tuple[dict[str, Any], Path]:
    sweep_dir = Path(sweep_dir)
    atlas = build_atlas(sweep_dir, min_cluster_size)
    out = Path(out) if out else sweep_dir / ATLAS_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "atlas.json", atlas)
        atomic_write_bytes(out / "atlas.png", _png(sweep_dir, atlas))
        atomic_write_bytes(out / "atlas.html", _html(sweep_dir, atlas).encode())
    except OSError as error:
        raise AtlasError(f"cannot write the atlas into {out}: {error.strerror or error}") from None
    return atlas, out


def thumbnail(sweep_dir: Path, relative: str | None, size: int) -> Any:
    from PIL import Image

    if relative:
        try:
            with Image.open(sweep_dir / relative) as image:
                return image.convert("RGB").resize((size, size))
        except OSError:
            pass
    return Image.new("RGB", (size, size), (60, 60, 60))


TILE = 176        # a motif's medoid image, in pixels
TILE_WIDTH = 200  # a motif's column: the image and its prompt under it
MARGIN = 16
MAP_HEIGHT = 340
LEGEND_WIDTH = 250
TINY_COLOUR = (190, 40, 40)


def _png(sweep_dir: Path, atlas: dict[str, Any]) -> bytes:
    image, _ = render_atlas(sweep_dir, atlas)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_atlas(sweep_dir: Path, atlas: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """atlas.png and what is written where: a header (what the sweep was; the tiny models'
    warning), one medoid image per motif with its basin and prompt (up to four lines), then the
    2-D map of the truths with its axes and a legend of the motifs."""
    from PIL import Image, ImageDraw

    motifs = atlas["motifs"]
    columns = max(1, min(6, len(motifs)))
    rows = math.ceil(len(motifs) / columns) if motifs else 0
    width = max(2 * MARGIN + columns * TILE_WIDTH, 760)
    title_font, font, small = _font(18), _font(13), _font(11)
    line, small_line = _line_height(font), _line_height(small)
    prompt_lines = 4
    tile_height = TILE + 8 + line + small_line * prompt_lines + 10
    header = [(f"Attractor atlas · {Path(atlas['sweep']).name}", title_font, (0, 0, 0)),
              (_summary(atlas), font, (70, 70, 70))]
    if atlas.get("models") == "tiny":
        header.append((TINY_LABEL + ": these attractors say nothing about real models", font,
                       TINY_COLOUR))
    header_height = MARGIN + sum(_line_height(f) for _, f, _ in header) + 10
    motifs_top = header_height + line + 4
    map_top = motifs_top + rows * tile_height + line + 10
    height = map_top + MAP_HEIGHT + 2 * line + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    layout: dict[str, Any] = {"header": [text for text, _, _ in header], "tiles": {}}
    y = MARGIN
    for text, face, colour in header:
        draw_text(draw, (MARGIN, y), text, face, colour)
        y += _line_height(face)

    draw_text(draw, (MARGIN, header_height), "Motifs: the medoid truth of each (basin = "
              "trajectories that end in it)", font, (0, 0, 0))
    for number, motif in enumerate(motifs):
        x = MARGIN + (number % columns) * TILE_WIDTH
        y = motifs_top + (number // columns) * tile_height
        colour = _colour(motif["id"])
        canvas.paste(thumbnail(sweep_dir, motif["medoid_image"], TILE - 8), (x + 4, y + 4))
        draw.rectangle([x + 1, y + 1, x + TILE - 2, y + TILE - 2], outline=colour, width=3)
        label = f"motif {motif['id']} · basin {motif['basin_size']}"
        draw_text(draw, (x + 2, y + TILE + 6), label, font, (0, 0, 0))
        draw_text(draw, (x + 8 + text_length(font, label), y + TILE + 8),
                  f"({count(len(motif['attractors']), 'attractor')})", small, (80, 80, 80))
        lines = wrap_text(motif["representative_prompt"] or "", small, TILE_WIDTH - 12,
                          prompt_lines)
        layout["tiles"][motif["id"]] = [label, *lines]
        for row, text in enumerate(lines):
            draw_text(draw, (x + 2, y + TILE + 6 + line + row * small_line), text, small,
                      (80, 80, 80))
    layout["map_box"] = (MARGIN + 64, map_top, width - MARGIN - LEGEND_WIDTH,
                         map_top + MAP_HEIGHT)
    layout.update(_draw_map(canvas, draw, atlas, layout["map_box"], font, small))
    return canvas, layout


def _colour(motif: Any) -> tuple[int, int, int]:
    return PALETTE[(motif or 0) % len(PALETTE)]


def _summary(atlas: dict[str, Any]) -> str:
    return (f"{count(atlas['trajectories'], 'trajectory')}, {atlas['converged']} converged "
            f"(never converged: {atlas['never_converged_fraction']:.0%}); "
            f"{count(len(atlas['attractors']), 'exact attractor')} in "
            f"{count(len(atlas['motifs']), 'motif')}")


def _draw_map(canvas: Any, draw: Any, atlas: dict[str, Any], box: tuple[int, int, int, int], font: Any,
              small: Any) -> dict[str, Any]:
    """The truths on the first two principal components: axes with ticks and what they
    explain, one disc per place (bigger where several trajectories end at the same point), and
    a legend of the motifs' colours."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = box
    line = _line_height(font)
    draw_text(draw, (MARGIN, top - line - 4), "Where the truths lie: PCA of their CLIP "
              "embeddings (image + prompt), one disc per place, coloured by motif", font,
              (0, 0, 0))
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    points = atlas["map"]
    if not points:
        message = "no embeddings stored: nothing to map"
        draw_text(draw, ((left + right) / 2 - text_length(font, message) / 2,
                         (top + bottom) / 2), message, font, (120, 120, 120))
        return {"axes": None, "legend": []}
    xs, ys = [p["x"] for p in points], [p["y"] for p in points]
    pad_x = ((max(xs) - min(xs)) or 1.0) * 0.08
    pad_y = ((max(ys) - min(ys)) or 1.0) * 0.08
    x0, x1 = min(xs) - pad_x, max(xs) + pad_x
    y0, y1 = min(ys) - pad_y, max(ys) + pad_y

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    grey = (90, 90, 90)
    for i in range(5):  # ticks and grid lines
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        draw.line([px(xv), top + 1, px(xv), bottom - 1], fill=(235, 235, 235))
        draw.line([left + 1, py(yv), right - 1, py(yv)], fill=(235, 235, 235))
        draw.line([px(xv), bottom, px(xv), bottom + 4], fill=grey)
        draw.line([left - 4, py(yv), left, py(yv)], fill=grey)
        text = f"{xv:.2f}"
        draw_text(draw, (px(xv) - text_length(small, text) / 2, bottom + 6), text, small, grey)
        text = f"{yv:.2f}"
        draw_text(draw, (left - 7 - text_length(small, text), py(yv) - 6), text, small, grey)
    explained = atlas.get("map_explained_variance") or [None, None]

    def axis(number: int) -> str:
        share = explained[number - 1]
        return f"PC {number}" + (f" ({share:.0%} of the variance)" if share is not None else "")

    x_name = axis(1)
    draw_text(draw, ((left + right) / 2 - text_length(small, x_name) / 2, bottom + 20), x_name,
              small, grey)
    y_name = axis(2)
    label = Image.new("RGB", (int(text_length(small, y_name)) + 4, 16), (255, 255, 255))
    draw_text(ImageDraw.Draw(label), (2, 1), y_name, small, grey)
    label = label.rotate(90, expand=True)
    canvas.paste(label, (MARGIN - 4, int((top + bottom) / 2 - label.height / 2)))

    places: dict[tuple[float, float, Any], int] = {}
    for p in points:
        key = (round(px(p["x"])), round(py(p["y"])), p["motif"])
        places[key] = places.get(key, 0) + 1
    for (x, y, motif), number in sorted(places.items(), key=lambda item: -item[1]):
        radius = 5 + 2.5 * math.sqrt(number - 1)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=_colour(motif),
                     outline=(0, 0, 0))
        if number > 1:
            draw_text(draw, (x + radius + 3, y - 7), f"n={number}", small, (40, 40, 40))

    # the legend: each motif's colour, basin and prompt
    legend_x, y = right + 18, top
    shown = atlas["motifs"][:14]
    legend = []
    for motif in shown:
        draw.ellipse([legend_x, y + 3, legend_x + 10, y + 13], fill=_colour(motif["id"]),
                     outline=(0, 0, 0))
        text = f"motif {motif['id']} · basin {motif['basin_size']}"
        draw_text(draw, (legend_x + 16, y), text, small, (0, 0, 0))
        prompt = visible(motif["representative_prompt"] or "")
        room = LEGEND_WIDTH - 40 - text_length(small, text + "  ")
        while prompt and text_length(small, prompt + "…") > room:
            prompt = prompt[:-1]
        if prompt:
            shown_prompt = prompt if prompt == visible(motif["representative_prompt"] or "") \
                else prompt.rstrip() + "…"
            draw_text(draw, (legend_x + 20 + text_length(small, text), y), shown_prompt, small,
                      (110, 110, 110))
        legend.append((_colour(motif["id"]), text))
        y += 20
    if len(atlas["motifs"]) > len(shown):
        draw_text(draw, (legend_x, y), f"+ {count(len(atlas['motifs']) - len(shown), 'motif')} "
                  "more (atlas.html lists all)", small, grey)
        y += 20
    draw_text(draw, (legend_x, y + 6), "a bigger disc, n=N: N trajectories", small, grey)
    draw_text(draw, (legend_x, y + 20), "at one place", small, grey)
    return {"axes": (x_name, y_name), "legend": legend}


def _data_uri(sweep_dir: Path, relative: str | None, size: int = 192) -> str:
    buffer = io.BytesIO()
    thumbnail(sweep_dir, relative, size).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _html(sweep_dir: Path, atlas: dict[str, Any]) -> str:
    """One file, images inlined; every text goes through text.html_text, the one escaping rule
    of every page (untrusted captions: never markup, control characters shown as \\xNN)."""
    e = html_text
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>truthloop atlas</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        ".motif{display:inline-block;vertical-align:top;width:210px;margin:6px}"
        "img{width:192px;height:192px;border:1px solid #999}"
        "td,th{padding:2px 8px;text-align:left;vertical-align:top}</style></head><body>",
        f"<h1>Attractor atlas: {e(atlas['sweep'])}</h1>",
        f"<p>{e(_summary(atlas))}.</p>",
    ]
    if atlas.get("models") == "tiny":
        parts.append(f"<p style='color:#b22'><b>{e(TINY_LABEL)}</b>: these attractors say "
                     "nothing about real models.</p>")
    parts.append("<h2>Motifs</h2>")
    for motif in atlas["motifs"]:
        parts.append(
            f"<div class='motif'><img alt='medoid of motif {motif['id']}' "
            f"src='{_data_uri(sweep_dir, motif['medoid_image'])}'>"
            f"<br><b>motif {e(motif['id'])}</b> · basin {e(motif['basin_size'])}<br>"
            f"{e(motif['representative_prompt'] or '')}</div>")
    parts.append("<h2>Exact attractors</h2><table><tr><th>#</th><th>kind</th><th>basin</th>"
                 "<th>iterations (min/median/max)</th><th>motif</th><th>prompts</th></tr>")
    for a in atlas["attractors"]:
        its = a["iterations_to_converge"]
        prompts = "<br>".join(e(p) for p in a["prompts"])
        parts.append(f"<tr><td>{e(a['id'])}</td><td>{e(a['kind'])} ({e(a['length'])})"
                     f"{e(_near_note(a))}</td>"
                     f"<td>{e(a['basin_size'])}</td><td>{e(its['min'])} / {e(its['median'])} / "
                     f"{e(its['max'])}</td><td>{e(a.get('motif'))}</td><td>{prompts}</td></tr>")
    parts.append("</table><h2>Cycle lengths</h2><p>")
    parts.append(e(", ".join(f"length {k}: {count(v, 'trajectory')}"
                             for k, v in atlas["cycle_length_histogram"].items()) or "none"))
    parts.append("</p></body></html>\n")
    return "".join(parts)


def _near_note(attractor: dict[str, Any]) -> str:
    """`, near (text), 2 variants` for an attractor of near-repeat runs; "" for an exact one."""
    if attractor.get("criterion", "exact") == "exact":
        return ""
    return (f", near ({attractor['criterion']}), "
            f"{count(len(attractor.get('variants') or []), 'variant')}")


def describe(atlas: dict[str, Any]) -> list[str]:
    """The lines `truthloop atlas` prints (captions made visible, never markup)."""
    lines = [_summary(atlas)]
    for a in atlas["attractors"]:
        kind = ("fixed point" if a["length"] == 1 else f"{a['length']}-cycle") + _near_note(a)
        lines.append(f"  attractor {a['id']}: {kind}, basin {a['basin_size']}, motif "
                     f"{a.get('motif')}: {visible(' -> '.join(a['prompts']))[:100]}")
    return lines

