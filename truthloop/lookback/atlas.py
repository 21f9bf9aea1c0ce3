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

Needs no GPU and no Ray: only the sweep directory. Writes atlas.json, atlas.png, atlas.html.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from truthloop.record import canonical_cycle, cycle_prompts
from truthloop.store import atomic_write_bytes, atomic_write_json, read_records
from truthloop.sweep import state as st
from truthloop.sweep.spec import ATLAS_DIR, SpecError, read_spec, trajectories
from truthloop.text import visible


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
    attractors: dict[tuple[str, ...], dict[str, Any]] = {}
    vectors: dict[str, list[float]] = {}  # run name -> embedding
    for trajectory, row in zip(trajs, rows):
        if row["state"] != "converged":
            continue
        run_dir = trajectory.run_dir(sweep_dir)
        summary = st.read_summary(run_dir) or {}
        stored = _embedding(run_dir)
        key = canonical_cycle(_compared_cycle(run_dir, stored))
        entry = attractors.setdefault(key, {
            "prompts": list(key), "length": len(key),
            "kind": "fixed_point" if len(key) == 1 else "cycle",
            "members": [], "iterations": [], "transients": [], "truth": None,
        })
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

    ordered = sorted(attractors.values(), key=lambda a: (-len(a["members"]), a["prompts"]))
    for number, entry in enumerate(ordered):
        entry["id"] = number
        entry["basin_size"] = len(entry["members"])
        its, trans = entry.pop("iterations"), entry.pop("transients")
        entry["iterations_to_converge"] = {"min": min(its), "median": statistics.median(its),
                                           "max": max(its)}
        entry["transient"] = {"min": min(trans), "median": statistics.median(trans),
                              "max": max(trans)}
    motifs, method = _motifs(ordered, vectors, min_cluster_size)
    total = len(trajs)
    converged = states.get("converged", 0)
    return {
        "sweep": str(sweep_dir),
        "trajectories": total,
        "converged": converged,
        "never_converged_fraction": round((total - converged) / total, 4) if total else 0.0,
        "not_converged": {s: n for s, n in sorted(states.items()) if s != "converged"},
        "cycle_length_histogram": {str(k): v for k, v in sorted(Counter(
            a["length"] for a in ordered for _ in a["members"]).items())},
        "attractors": ordered,
        "motifs": motifs,
        "clustering": method,
        "map": _map(ordered, vectors),
    }


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
        method["note"] = f"{len(usable)} embedded attractor(s): too few to cluster"
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


def _map(attractors: list[dict[str, Any]], vectors: dict[str, list[float]]) -> list[dict]:
    """Every embedded truth in 2-D (PCA of the embeddings), with its attractor and motif."""
    import numpy as np

    points = [(name, a) for a in attractors for name in a["members"] if name in vectors]
    if not points:
        return []
    data = np.asarray([vectors[name] for name, _ in points], dtype=float)
    if len(points) >= 2 and data.shape[1] >= 2:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2).fit_transform(data - data.mean(axis=0))
    else:
        xy = np.zeros((len(points), 2))
    return [{"trajectory": name, "attractor": a["id"], "motif": a.get("motif"),
             "x": round(float(x), 5), "y": round(float(y), 5)}
            for (name, a), (x, y) in zip(points, xy)]


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


def _thumb(sweep_dir: Path, relative: str | None, size: int) -> Any:
    from PIL import Image

    if relative:
        try:
            with Image.open(sweep_dir / relative) as image:
                return image.convert("RGB").resize((size, size))
        except OSError:
            pass
    return Image.new("RGB", (size, size), (60, 60, 60))


def _png(sweep_dir: Path, atlas: dict[str, Any], tile: int = 160) -> bytes:
    """Top: one medoid image per motif with its basin size; below: the 2-D map by motif."""
    from PIL import Image, ImageDraw

    motifs = atlas["motifs"]
    columns = max(1, min(6, len(motifs)))
    rows = max(1, math.ceil(len(motifs) / columns))
    label = 34
    map_size = 360
    width = max(columns * tile, map_size + 20)
    height = rows * (tile + label) + map_size + 30
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for number, motif in enumerate(motifs):
        x, y = (number % columns) * tile, (number // columns) * (tile + label)
        canvas.paste(_thumb(sweep_dir, motif["medoid_image"], tile - 8), (x + 4, y + 4))
        colour = PALETTE[motif["id"] % len(PALETTE)]
        draw.rectangle([x + 2, y + 2, x + tile - 3, y + tile - 3], outline=colour, width=3)
        prompt = visible(motif["representative_prompt"] or "")
        draw.text((x + 4, y + tile), f"motif {motif['id']} · basin {motif['basin_size']}",
                  fill=(0, 0, 0))
        draw.text((x + 4, y + tile + 14), prompt[:24], fill=(90, 90, 90))
    top = rows * (tile + label) + 20
    draw.text((10, top - 14), "truths in 2-D (PCA of CLIP embeddings), coloured by motif",
              fill=(0, 0, 0))
    draw.rectangle([10, top, 10 + map_size, top + map_size - 10], outline=(200, 200, 200))
    points = atlas["map"]
    if points:
        xs, ys = [p["x"] for p in points], [p["y"] for p in points]
        span_x = (max(xs) - min(xs)) or 1.0
        span_y = (max(ys) - min(ys)) or 1.0
        for p in points:
            px = 20 + (p["x"] - min(xs)) / span_x * (map_size - 20)
            py = top + 10 + (p["y"] - min(ys)) / span_y * (map_size - 30)
            colour = PALETTE[(p["motif"] or 0) % len(PALETTE)]
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour, outline=(0, 0, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(sweep_dir: Path, relative: str | None, size: int = 192) -> str:
    buffer = io.BytesIO()
    _thumb(sweep_dir, relative, size).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _html(sweep_dir: Path, atlas: dict[str, Any]) -> str:
    """One file, images inlined; every caption goes through html.escape (untrusted text)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>truthloop atlas</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        ".motif{display:inline-block;vertical-align:top;width:210px;margin:6px}"
        "img{width:192px;height:192px;border:1px solid #999}"
        "td,th{padding:2px 8px;text-align:left;vertical-align:top}</style></head><body>",
        f"<h1>Attractor atlas: {e(atlas['sweep'])}</h1>",
        f"<p>{atlas['trajectories']} trajectories, {atlas['converged']} converged; "
        f"never converged: {atlas['never_converged_fraction']:.1%}; "
        f"{len(atlas['attractors'])} exact attractors in {len(atlas['motifs'])} motifs.</p>",
        "<h2>Motifs</h2>",
    ]
    for motif in atlas["motifs"]:
        parts.append(
            f"<div class='motif'><img alt='medoid of motif {motif['id']}' "
            f"src='{_data_uri(sweep_dir, motif['medoid_image'])}'>"
            f"<br><b>motif {motif['id']}</b> · basin {motif['basin_size']}<br>"
            f"{e(motif['representative_prompt'] or '')}</div>")
    parts.append("<h2>Exact attractors</h2><table><tr><th>#</th><th>kind</th><th>basin</th>"
                 "<th>iterations (min/median/max)</th><th>motif</th><th>prompts</th></tr>")
    for a in atlas["attractors"]:
        its = a["iterations_to_converge"]
        prompts = "<br>".join(e(p) for p in a["prompts"])
        parts.append(f"<tr><td>{a['id']}</td><td>{e(a['kind'])} ({a['length']})</td>"
                     f"<td>{a['basin_size']}</td><td>{its['min']} / {its['median']} / "
                     f"{its['max']}</td><td>{a.get('motif')}</td><td>{prompts}</td></tr>")
    parts.append("</table><h2>Cycle lengths</h2><p>")
    parts.append(", ".join(f"length {k}: {v}" for k, v in atlas["cycle_length_histogram"].items())
                 or "none")
    parts.append("</p></body></html>\n")
    return "".join(parts)


def describe(atlas: dict[str, Any]) -> list[str]:
    """The lines `truthloop atlas` prints (captions made visible, never markup)."""
    lines = [f"{atlas['trajectories']} trajectories, {atlas['converged']} converged "
             f"(never converged: {atlas['never_converged_fraction']:.0%}); "
             f"{len(atlas['attractors'])} attractors, {len(atlas['motifs'])} motifs"]
    for a in atlas["attractors"]:
        kind = "fixed point" if a["length"] == 1 else f"{a['length']}-cycle"
        lines.append(f"  attractor {a['id']}: {kind}, basin {a['basin_size']}, motif "
                     f"{a.get('motif')}: {visible(' -> '.join(a['prompts']))[:100]}")
    return lines

