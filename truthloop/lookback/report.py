"""The study report of a sweep, made from what its runs recorded (no GPU, no Ray, no model).

`truthloop report SWEEP_DIR` writes SWEEP_DIR/report/ (or --out):

    report.html    one self-contained page: every figure inlined, every caption escaped
    report.json    every number on the page
    figures/       curves-image.png, curves-text.png, curves-cross.png (similarity to the start
                   over generations: median and interquartile band per group, and the fitted
                   drift), convergence.png, basins.png, rates.png, motif-N.png (contact sheets)
    tables/        groups.csv, curves.csv, runs.csv, series.csv, attractors.csv

Groups are the sweep's grid points (a generator/captioner pair is a grid point of those two
names); with two or more grid names, each name=value is also summed over the others
("marginals"). Attractors and motifs are the atlas's (lookback/atlas.py), near-repeat runs
grouped by their own criterion. The drift measures, the generations they are counted in and the
fitted model are truthloop/measures.py's; docs/study-measures.md says why that model.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from truthloop import measures as ms
from truthloop.lookback.atlas import PALETTE, AtlasError, thumbnail, build_atlas
from truthloop.lookback.render import _font, _line_height, draw_text, text_length, wrap_text
from truthloop.lookback.runs import TINY_LABEL
from truthloop.store import RUN_FILE, atomic_write_bytes, atomic_write_json, read_records
from truthloop.sweep import state as st
from truthloop.sweep.spec import SpecError, read_spec, trajectories
from truthloop.text import count, html_text, visible

REPORT_DIR = "report"
FIT_MODEL = "floor + (start - floor) * exp(-rate * generation)"
# What the figures call the measures: Pillow's default font has no arrows or dashes.
FIGURE_LABELS = {"image": "image-image", "text": "text-text", "cross": "caption-image"}


class ReportError(Exception):
    """One line for the user."""


# -- the numbers ---------------------------------------------------------------------------------
def group_label(settings: dict[str, Any]) -> str:
    """`guidance=3.0 · steps=20`; `all runs` for a sweep without a grid."""
    return " · ".join(f"{name}={value}" for name, value in settings.items()) or "all runs"


def _run_info(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def read_runs(sweep_dir: Path, trajs: list[Any], atlas: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per trajectory: its group, state, convergence, attractor and motif, and its
    similarity-to-start series per measure."""
    attractor_of = {m: a["id"] for a in atlas["attractors"] for m in a["members"]}
    motif_of = {m: a.get("motif") for a in atlas["attractors"] for m in a["members"]}
    rows = st.table(sweep_dir, trajs)
    runs = []
    for trajectory, row in zip(trajs, rows):
        run_dir = trajectory.run_dir(sweep_dir)
        summary = st.read_summary(run_dir) or {}
        records = read_records(run_dir) if run_dir.is_dir() else []
        info = _run_info(run_dir)
        image_start = "image" in trajectory.start
        converged = row["state"] == "converged"
        cycle = summary.get("cycle") or {}
        series = {name: ms.series(records, name, image_start) for name in ms.MEASURES}
        runs.append({
            "name": trajectory.name, "number": trajectory.number, "start": trajectory.label,
            "seed": trajectory.seed, "settings": dict(trajectory.settings),
            "group": group_label(trajectory.settings), "state": row["state"],
            "converged": converged,
            # images drawn before the run stopped (summary.json's "iterations")
            "iterations": summary.get("iterations", row["iterations"]),
            "found_at": cycle.get("found_at") if converged else None,
            "criterion": cycle.get("criterion", "exact") if converged else None,
            "control": (trajectory.config.get("loop") or {}).get("control", ""),
            "attractor": attractor_of.get(trajectory.name),
            "motif": motif_of.get(trajectory.name),
            "embedding": (info.get("measures") or {}).get("embedding"),
            "series": series,
            "rates": {name: _rate(series[name], name) for name in ("image", "text")},
        })
    return runs


def _rate(points: list[tuple[int, float]], measure: str) -> float | None:
    fit = ms.fit_decay(points, start=1.0) if ms.MEASURES[measure].anchored else None
    return None if fit is None else fit.rate


def _spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"min": min(values), "q25": ms.quantile(values, 0.25), "median": ms.median(values),
            "q75": ms.quantile(values, 0.75), "max": max(values), "n": len(values)}


def _fit(runs: list[dict[str, Any]], measure: str) -> dict[str, Any] | None:
    """The group's drift: one fit to every run's points past the start; "from_generation":
    the generation its own generation 0 is."""
    points = [p for run in runs for p in run["series"][measure]]
    if ms.MEASURES[measure].anchored:
        fit, first = ms.fit_decay(points, start=1.0), 0
    elif not points:
        return None
    else:
        # Caption-image has no value fixed by definition (and a run from a prompt has no
        # caption at generation 0): the start is the median at its first generation, and the
        # fit counts from there.
        first = min(g for g, _ in points)
        start = ms.median([v for g, v in points if g == first])
        fit = ms.fit_decay([(g - first, v) for g, v in points], start=start)
    return None if fit is None else {**fit.to_json(), "from_generation": first}


def group_stats(label: str, settings: dict[str, Any], runs: list[dict[str, Any]],
                kind: str = "grid point") -> dict[str, Any]:
    converged = [r for r in runs if r["converged"]]
    basins = Counter(r["attractor"] for r in converged if r["attractor"] is not None)
    motif_basins = Counter(r["motif"] for r in converged if r["motif"] is not None)
    stats: dict[str, Any] = {
        "group": label, "kind": kind, "settings": settings, "runs": len(runs),
        "states": dict(sorted(Counter(r["state"] for r in runs).items())),
        "converged": len(converged),
        "converged_share": len(converged) / len(runs) if runs else None,
        "iterations_to_converge": _spread([r["iterations"] for r in converged]),
        "criteria": dict(sorted(Counter(r["criterion"] for r in converged).items())),
        "attractors": len(basins), "basins": sorted(basins.values(), reverse=True),
        "basin_of": {str(k): v for k, v in sorted(basins.items())},
        "motifs": len(motif_basins), "motif_basins": sorted(motif_basins.values(), reverse=True),
        "motif_basin_of": {str(k): v for k, v in sorted(motif_basins.items())},
        "curves": {}, "fits": {}, "slopes": {}, "mean_steps": {}, "mean_similarity": {},
        "run_rates": {},
    }
    for name in ms.MEASURES:
        stats["curves"][name] = ms.curve([r["series"][name] for r in runs])
        stats["fits"][name] = _fit(runs, name)
        points = [p for r in runs for p in r["series"][name]]
        stats["slopes"][name] = ms.linear_slope(points)
        # per-generation means past the start (the Telephone Game's MCD and its code's SDR)
        means = _means_by_generation(points)
        stats["mean_steps"][name] = ms.mean_step([v for g, v in means if g > 0])
        past = [v for g, v in means if g > 0]
        stats["mean_similarity"][name] = sum(past) / len(past) if past else None
        if name in ("image", "text"):
            stats["run_rates"][name] = _spread([r["rates"][name] for r in runs
                                                if r["rates"][name] is not None])
    return stats


def _means_by_generation(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    by: dict[int, list[float]] = {}
    for g, v in points:
        by.setdefault(g, []).append(v)
    return [(g, sum(vs) / len(vs)) for g, vs in sorted(by.items())]


def build_report(sweep_dir: Path, min_cluster_size: int = 2) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    try:
        spec = read_spec(sweep_dir)
    except SpecError as error:
        raise ReportError(str(error)) from None
    if spec is None:
        raise ReportError(f"{sweep_dir} is not a sweep directory (no sweep.json)")
    try:
        atlas = build_atlas(sweep_dir, min_cluster_size)
    except AtlasError as error:
        raise ReportError(str(error)) from None
    trajs = trajectories(spec)
    runs = read_runs(sweep_dir, trajs, atlas)
    names = list(spec.get("grid") or {})
    groups: dict[str, list[dict[str, Any]]] = {}
    settings_of: dict[str, dict[str, Any]] = {}
    for run in runs:
        groups.setdefault(run["group"], []).append(run)
        settings_of[run["group"]] = run["settings"]
    marginals = []
    if len(names) >= 2:
        for name in names:
            for value in spec["grid"][name]:
                members = [r for r in runs if r["settings"].get(name) == value]
                marginals.append(group_stats(f"{name}={value}", {name: value}, members,
                                             "marginal"))
    embeddings = sorted({r["embedding"] for r in runs if r["embedding"]})
    config = spec.get("config") or {}
    return {
        "sweep": str(sweep_dir),
        "models": (config.get("models") or {}).get("models"),
        "grid": spec.get("grid") or {},
        "loop": {k: (config.get("loop") or {}).get(k)
                 for k in ("converge", "near_threshold", "near_window", "control",
                           "max_iters", "clauses")},
        "embeddings": embeddings,
        "trajectories": len(runs),
        "converged": sum(1 for r in runs if r["converged"]),
        "groups": [group_stats(label, settings_of[label], members)
                   for label, members in groups.items()],
        "marginals": marginals,
        "attractors": [{k: a.get(k) for k in ("id", "kind", "length", "criterion", "basin_size",
                                               "motif", "prompts", "variants", "members",
                                               "iterations_to_converge", "truth")}
                       for a in atlas["attractors"]],
        "motifs": atlas["motifs"],
        "clustering": atlas["clustering"],
        "runs": [{k: v for k, v in r.items() if k != "series"} for r in runs],
        "_series": {r["name"]: r["series"] for r in runs},  # for the figures and series.csv
    }


# -- figures (Pillow) ------------------------------------------------------------------------------
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (90, 90, 90), (228, 228, 228)
TINY_COLOUR = (190, 40, 40)


def colour(number: int) -> tuple[int, int, int]:
    return PALETTE[number % len(PALETTE)]


def _ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values covering lo..hi."""
    span = hi - lo or 1.0
    raw = span / most
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, value = [], first
    while value <= hi + 1e-9:
        out.append(round(value, 10))
        value += step
    return out


def _header(draw: Any, width: int, title: str, lines: list[tuple[str, tuple[int, int, int]]]
            ) -> int:
    """A title and lines under it; returns the y below them."""
    big, small = _font(17), _font(12)
    y = 12
    for text in wrap_text(title, big, width - 32, 2):
        draw_text(draw, (16, y), text, big, BLACK)
        y += _line_height(big)
    for text, fill in lines:
        for part in wrap_text(text, small, width - 32, 3):
            draw_text(draw, (16, y), part, small, fill)
            y += _line_height(small)
    return y + 8


def _tiny_lines(report: dict[str, Any]) -> list[tuple[str, tuple[int, int, int]]]:
    if report.get("models") == "tiny":
        return [(TINY_LABEL + ": these numbers say nothing about real models", TINY_COLOUR)]
    return []


def _legend_label(label: str, font: Any, room: float) -> str:
    text = visible(label)
    if text_length(font, text) <= room:
        return text
    while text and text_length(font, text + "…") > room:
        text = text[:-1]
    return text + "…"


def draw_curves(report: dict[str, Any], measure: str, width: int = 980, height: int = 520
                ) -> tuple[Any, dict[str, Any]] | None:
    """Similarity to the start over generations for one measure: per group the median (line),
    the interquartile band (shaded) and the fitted decay (dashed). None without data."""
    from PIL import Image, ImageDraw

    groups = [g for g in report["groups"] if g["curves"][measure]]
    if not groups:
        return None
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    embedding = ", ".join(report["embeddings"]) or "the run's embedder"
    top = _header(draw, width, f"{FIGURE_LABELS[measure]}: similarity to the start over "
                  "generations", [
        (f"cosine of {embedding} embeddings; line: median over the runs that reached the "
         f"generation, band: 25th-75th percentile, dashed: fitted {FIT_MODEL}", GREY),
        *_tiny_lines(report)])
    font, small = _font(12), _font(11)
    legend_width = 300
    left, right, bottom = 70, width - legend_width - 10, height - 50
    generations = [p["generation"] for g in groups for p in g["curves"][measure]]
    values = [v for g in groups for p in g["curves"][measure] for v in (p["q25"], p["q75"])]
    x0, x1 = 0, max(1, max(generations))
    y0 = min(0.0, math.floor(min(values) * 10) / 10)
    y1 = 1.0 if max(values) <= 1.0 else math.ceil(max(values) * 10) / 10

    def px(g: float) -> float:
        return left + (g - x0) / (x1 - x0) * (right - left)

    def py(v: float) -> float:
        return bottom - (v - y0) / (y1 - y0) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline=(150, 150, 150))
    for v in _ticks(y0, y1):
        draw.line([left, py(v), right, py(v)], fill=LIGHT)
        text = f"{v:.2f}"
        draw_text(draw, (left - 8 - text_length(small, text), py(v) - 7), text, small, GREY)
    for g in _ticks(x0, x1, 10):
        if g != int(g):
            continue
        draw.line([px(g), bottom, px(g), bottom + 4], fill=GREY)
        text = str(int(g))
        draw_text(draw, (px(g) - text_length(small, text) / 2, bottom + 6), text, small, GREY)
    draw_text(draw, ((left + right) / 2 - 30, bottom + 24), "generation", font, GREY)
    axis = Image.new("RGB", (int(text_length(font, "similarity to the start")) + 6, 18), WHITE)
    draw_text(ImageDraw.Draw(axis), (2, 1), "similarity to the start", font, GREY)
    axis = axis.rotate(90, expand=True)
    canvas.paste(axis, (8, int((top + bottom) / 2 - axis.height / 2)))

    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    shade = ImageDraw.Draw(overlay)
    for number, group in enumerate(groups):
        points = group["curves"][measure]
        if len(points) > 1:
            upper = [(px(p["generation"]), py(p["q75"])) for p in points]
            lower = [(px(p["generation"]), py(p["q25"])) for p in reversed(points)]
            shade.polygon(upper + lower, fill=(*colour(number), 60))
    canvas.paste(Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB"))
    draw = ImageDraw.Draw(canvas)
    legend = []
    for number, group in enumerate(groups):
        points = group["curves"][measure]
        line = [(px(p["generation"]), py(p["median"])) for p in points]
        if len(line) > 1:
            draw.line(line, fill=colour(number), width=3)
        for x, y in line:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour(number))
        fit = group["fits"][measure]
        if fit and not fit["no_drift"]:
            model = ms.DecayFit(fit["rate"], fit["floor"], fit["start"], fit["rmse"],
                                fit["points"])
            steps = 120
            origin = fit.get("from_generation", 0)
            xs = [origin + (x1 - origin) * i / steps for i in range(steps + 1)]
            dashes = [(px(x), py(min(y1, max(y0, model.predict(x - origin))))) for x in xs]
            for i in range(0, steps, 2):
                draw.line([dashes[i], dashes[i + 1]], fill=colour(number), width=1)
        legend.append((group["group"], fit))
    # the legend: colour, group, fitted rate
    y = top
    legend_x = right + 16
    shown = []
    for number, (label, fit) in enumerate(legend[:12]):
        draw.rectangle([legend_x, y + 3, legend_x + 14, y + 13], fill=colour(number))
        text = _legend_label(label, font, legend_width - 40)
        draw_text(draw, (legend_x + 20, y), text, font, BLACK)
        y += _line_height(font)
        detail = fit_text(fit)
        draw_text(draw, (legend_x + 20, y), detail, small, GREY)
        y += _line_height(small) + 6
        shown.append(text)
    if len(legend) > 12:
        draw_text(draw, (legend_x, y), f"+ {count(len(legend) - 12, 'group')} more "
                  "(report.html lists all)", small, GREY)
    return canvas, {"groups": shown, "x": (x0, x1), "y": (y0, y1)}


def fit_text(fit: dict[str, Any] | None) -> str:
    """A fit in words: `rate 0.15/gen, floor 0.40, half-life 4.62`, or what it cannot say."""
    if not fit:
        return "too few points to fit"
    if fit["no_drift"]:
        return f"no drift (stays at {fit['start']:.2f})"
    if fit["within_one_generation"]:
        return f"fell within one generation, to {fit['floor']:.2f}"
    if fit["floor"] <= -0.999:  # still falling straight: no floor in sight
        return f"rate {fit['rate']:.3g}/gen, no floor reached yet"
    return (f"rate {fit['rate']:.3g}/gen, floor {fit['floor']:.2f}, "
            f"half-life {fit['half_life']:.3g}")


def draw_convergence(report: dict[str, Any], width: int = 980) -> Any:
    """Per group: the share of runs that converged (bar) and the images drawn before they did
    (box: 25th–75th percentile, tick: median, whiskers: min and max)."""
    from PIL import Image, ImageDraw

    groups = report["groups"]
    font, small = _font(12), _font(11)
    row = 34
    height = 150 + row * len(groups)
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    top = _header(draw, width, "Convergence per group", [
        ("left: share of runs that converged (k of n); right: images drawn before converging "
         "(box 25th-75th percentile, tick median, whiskers min-max)", GREY),
        *_tiny_lines(report)])
    label_width, bar_left, bar_right = 250, 270, 520
    box_left, box_right = 580, width - 30
    spreads = [g["iterations_to_converge"] for g in groups if g["iterations_to_converge"]]
    most = max([s["max"] for s in spreads], default=1) * 1.05 or 1

    def bx(v: float) -> float:
        return box_left + v / most * (box_right - box_left)

    axis_y = top + row * len(groups) + 4
    for i in range(0, 101, 25):
        x = bar_left + i / 100 * (bar_right - bar_left)
        draw.line([x, top - 2, x, axis_y], fill=LIGHT)
        text = f"{i}%"
        draw_text(draw, (x - text_length(small, text) / 2, axis_y + 4), text, small, GREY)
    for v in _ticks(0, most, 6):
        draw.line([bx(v), top - 2, bx(v), axis_y], fill=LIGHT)
        text = f"{v:g}"
        draw_text(draw, (bx(v) - text_length(small, text) / 2, axis_y + 4), text, small, GREY)
    draw_text(draw, (bar_left, axis_y + 20), "converged", font, GREY)
    draw_text(draw, (box_left, axis_y + 20), "images drawn before converging", font, GREY)
    for number, group in enumerate(groups):
        y = top + number * row
        draw_text(draw, (16, y + 8), _legend_label(group["group"], font, label_width), font,
                  BLACK)
        share = group["converged_share"] or 0.0
        draw.rectangle([bar_left, y + 6, bar_right, y + row - 8], outline=(170, 170, 170))
        if share > 0:
            draw.rectangle([bar_left, y + 6, bar_left + share * (bar_right - bar_left),
                            y + row - 8], fill=colour(number))
        draw_text(draw, (bar_right + 6, y + 9), f"{group['converged']}/{group['runs']}", small,
                  BLACK)
        spread = group["iterations_to_converge"]
        if spread:
            mid = y + row / 2 - 1
            draw.line([bx(spread["min"]), mid, bx(spread["max"]), mid], fill=GREY, width=1)
            for end in (spread["min"], spread["max"]):
                draw.line([bx(end), mid - 5, bx(end), mid + 5], fill=GREY)
            draw.rectangle([bx(spread["q25"]), mid - 8, max(bx(spread["q75"]),
                                                              bx(spread["q25"]) + 2), mid + 8],
                           fill=(*colour(number),), outline=BLACK)
            draw.line([bx(spread["median"]), mid - 10, bx(spread["median"]), mid + 10],
                      fill=BLACK, width=2)
        else:
            draw_text(draw, (box_left + 4, y + 9), "none converged", small, GREY)
    return canvas


def draw_basins(report: dict[str, Any], width: int = 980) -> Any:
    """Per group: its converged runs as one bar cut into attractor basins (biggest first),
    coloured by motif; the counts beside it."""
    from PIL import Image, ImageDraw

    groups = report["groups"]
    motif_of = {a["id"]: a.get("motif") for a in report["attractors"]}
    font, small = _font(12), _font(11)
    row = 34
    motifs = sorted({m for m in motif_of.values() if m is not None})
    legend_rows = math.ceil(len(motifs[:30]) / 6) if motifs else 0
    height = 150 + row * len(groups) + 20 * legend_rows
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    top = _header(draw, width, "Attractor basins per group", [
        ("each bar: the group's converged runs, cut into the attractors they reached (biggest "
         "basin first; a segment's number is its basin), coloured by motif", GREY),
        *_tiny_lines(report)])
    label_width, bar_left, bar_right = 250, 270, 700
    most = max([g["runs"] for g in groups], default=1) or 1
    for number, group in enumerate(groups):
        y = top + number * row
        draw_text(draw, (16, y + 8), _legend_label(group["group"], font, label_width), font,
                  BLACK)
        x = bar_left
        scale = (bar_right - bar_left) / most
        for attractor, basin in sorted(group["basin_of"].items(), key=lambda kv: -kv[1]):
            motif = motif_of.get(int(attractor))
            end = x + basin * scale
            draw.rectangle([x, y + 6, end - 1, y + row - 8],
                           fill=colour(motif if motif is not None else 0), outline=WHITE)
            text = str(basin)
            if text_length(small, text) + 4 < end - x:
                draw_text(draw, ((x + end) / 2 - text_length(small, text) / 2, y + 9), text,
                          small, WHITE)
            x = end
        unconverged = group["runs"] - group["converged"]
        if unconverged:
            draw.rectangle([x, y + 6, x + unconverged * scale - 1, y + row - 8],
                           outline=(170, 170, 170))
        note = (f"{count(group['attractors'], 'attractor')} in "
                f"{count(group['motifs'], 'motif')}; {unconverged} not converged")
        draw_text(draw, (bar_right + 12, y + 9), note, small, BLACK)
    y = top + row * len(groups) + 8
    draw_text(draw, (16, y), "motif colours (grey outline: runs that did not converge):", small,
              GREY)
    y += 18
    for i, motif in enumerate(motifs[:30]):
        x = 16 + (i % 6) * 150
        yy = y + (i // 6) * 20
        draw.rectangle([x, yy + 2, x + 12, yy + 12], fill=colour(motif))
        draw_text(draw, (x + 18, yy), f"motif {motif}", small, BLACK)
    return canvas


def draw_rates(report: dict[str, Any], width: int = 980) -> Any | None:
    """Fitted drift rates per group, image and text side by side: the group's fit to all its
    runs (dot) and the spread of the runs' own fits (whiskers: 25th–75th percentile)."""
    from PIL import Image, ImageDraw

    groups = report["groups"]
    if not any(g["fits"][m] for g in groups for m in ("image", "text")):
        return None
    font, small = _font(12), _font(11)
    row = 30
    height = 170 + row * len(groups)
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    top = _header(draw, width, "Drift rate per group (per generation)", [
        (f"rate of the fitted {FIT_MODEL}, on a log scale; dot: one fit to all the group's "
         "runs, whiskers: 25th-75th percentile of the runs' own fits. Higher: the start is "
         "forgotten faster", GREY), *_tiny_lines(report)])
    label_width = 250
    panels = [("image", 280, 590), ("text", 670, width - 30)]
    for measure, lo_x, hi_x in panels:
        rates = [g["fits"][measure]["rate"] for g in groups if g["fits"][measure]]
        rates += [v for g in groups if g["run_rates"][measure]
                  for v in (g["run_rates"][measure]["q25"], g["run_rates"][measure]["q75"])]
        rates = [r for r in rates if r > 0]  # a log scale: "no drift" is said in words
        low = 10 ** math.floor(math.log10(max(min(rates, default=0.01), ms.RATE_MIN)))
        high = 10 ** math.ceil(math.log10(max(max(rates, default=1.0), low * 10)))

        def rx(v: float, lo_x: int = lo_x, hi_x: int = hi_x, low: float = low,
               high: float = high) -> float:
            v = min(high, max(low, v))
            return lo_x + math.log10(v / low) / math.log10(high / low) * (hi_x - lo_x)

        draw_text(draw, (lo_x, top - 4), FIGURE_LABELS[measure], font, BLACK)
        axis_y = top + 18 + row * len(groups)
        decade = low
        while decade <= high * 1.0001:
            draw.line([rx(decade), top + 16, rx(decade), axis_y], fill=LIGHT)
            text = f"{decade:g}"
            draw_text(draw, (rx(decade) - text_length(small, text) / 2, axis_y + 4), text,
                      small, GREY)
            decade *= 10
        draw_text(draw, ((lo_x + hi_x) / 2 - 50, axis_y + 20), "rate per generation", small,
                  GREY)
        for number, group in enumerate(groups):
            y = top + 18 + number * row + row / 2
            spread = group["run_rates"][measure]
            if spread:
                draw.line([rx(spread["q25"]), y, rx(spread["q75"]), y], fill=GREY, width=2)
                for end in (spread["q25"], spread["q75"]):
                    draw.line([rx(end), y - 5, rx(end), y + 5], fill=GREY)
            fit = group["fits"][measure]
            if fit and fit["no_drift"]:  # said on a white ground, over the whiskers
                box = text_length(small, "no drift (group fit)")
                draw.rectangle([lo_x + 2, y - 8, lo_x + 8 + box, y + 7], fill=WHITE,
                               outline=(170, 170, 170))
                draw_text(draw, (lo_x + 5, y - 7), "no drift (group fit)", small, GREY)
            elif fit:
                x = rx(fit["rate"])
                draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour(number), outline=BLACK)
                if fit["within_one_generation"]:  # the rate is a lower bound
                    draw_text(draw, (x + 9, y - 7), "all within 1 generation", small, GREY)
    for number, group in enumerate(groups):
        y = top + 18 + number * row + 7
        draw_text(draw, (16, y), _legend_label(group["group"], font, label_width), font, BLACK)
    return canvas


SHEET_TILE = 150
SHEET_COLUMNS = 6
SHEET_MOST = 36


def draw_motif_sheet(sweep_dir: Path, report: dict[str, Any], motif: dict[str, Any]) -> Any:
    """A contact sheet of one motif: the truth image each run in it ended at (up to 36), with
    its attractor and run, and the attractor's prompt."""
    from PIL import Image, ImageDraw

    by_id = {a["id"]: a for a in report["attractors"]}
    tiles = []
    for attractor_id in motif["attractors"]:
        attractor = by_id[attractor_id]
        for member in attractor["members"]:
            tiles.append((attractor, member))
    shown = tiles[:SHEET_MOST]
    font, small = _font(12), _font(11)
    line, small_line = _line_height(font), _line_height(small)
    tile_height = SHEET_TILE + line + 2 * small_line + 12
    columns = max(1, min(SHEET_COLUMNS, len(shown)))
    width = max(620, 16 * 2 + columns * (SHEET_TILE + 12))
    rows = math.ceil(len(shown) / columns) if shown else 1
    probe = Image.new("RGB", (width, 10))
    header_lines = [
        (f"{count(motif['basin_size'], 'run')} in {count(len(motif['attractors']), 'attractor')}"
         f"; representative: {visible(motif.get('representative_prompt') or '')}", GREY),
        *_tiny_lines(report)]
    if len(tiles) > len(shown):
        header_lines.append((f"the first {len(shown)} of {len(tiles)} runs", GREY))
    top = _header(ImageDraw.Draw(probe), width, f"Motif {motif['id']}", header_lines)
    canvas = Image.new("RGB", (width, top + rows * tile_height + 12), WHITE)
    draw = ImageDraw.Draw(canvas)
    _header(draw, width, f"Motif {motif['id']}", header_lines)
    for number, (attractor, member) in enumerate(shown):
        x = 16 + (number % columns) * (SHEET_TILE + 12)
        y = top + (number // columns) * tile_height
        truth = attractor.get("truth") or {}
        images = truth.get("images") or []
        # the truth image of this member's own run (the attractor's first member's otherwise)
        own = f"runs/{member}/"
        relative = next((i for i in images if i.startswith(own)), None)
        if relative is None:
            relative = _member_truth_image(sweep_dir, member) or (images or [None])[0]
        canvas.paste(thumbnail(sweep_dir, relative, SHEET_TILE), (x, y))
        draw.rectangle([x - 1, y - 1, x + SHEET_TILE, y + SHEET_TILE],
                       outline=colour(motif["id"]), width=2)
        label = f"attractor {attractor['id']} · {member.split('-')[0]}"
        draw_text(draw, (x, y + SHEET_TILE + 4), label, font, BLACK)
        for row, text in enumerate(wrap_text(" -> ".join(attractor["prompts"]), small,
                                             SHEET_TILE, 2)):
            draw_text(draw, (x, y + SHEET_TILE + 4 + line + row * small_line), text, small, GREY)
    return canvas


def _member_truth_image(sweep_dir: Path, member: str) -> str | None:
    summary = st.read_summary(Path(sweep_dir) / "runs" / member) or {}
    images = summary.get("truth_images") or []
    return f"runs/{member}/{images[0]}" if images else None


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# -- tables ----------------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    """A CSV cell: numbers as they are; text made visible (control characters as \\xNN) and, when
    it starts like a spreadsheet formula (= + - @), led by an apostrophe so a spreadsheet shows
    it instead of running it (captions are untrusted text)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return round(value, 6) if isinstance(value, float) else value
    text = visible(str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue().encode()


def tables(report: dict[str, Any]) -> dict[str, bytes]:
    groups = report["groups"] + report["marginals"]
    group_rows = []
    for g in groups:
        its = g["iterations_to_converge"] or {}
        fits = g["fits"]
        group_rows.append([
            g["group"], g["kind"], g["runs"],
            g["converged"], g["converged_share"], its.get("median"), its.get("q25"),
            its.get("q75"), its.get("min"), its.get("max"), g["attractors"],
            " ".join(map(str, g["basins"])), g["motifs"], " ".join(map(str, g["motif_basins"])),
            *[x for m in ms.MEASURES for x in (
                (fits[m] or {}).get("rate"), (fits[m] or {}).get("half_life"),
                (fits[m] or {}).get("floor"), (fits[m] or {}).get("rmse"), g["slopes"][m],
                g["mean_steps"][m], g["mean_similarity"][m])],
        ])
    measure_cols = [f"{m}_{x}" for m in ms.MEASURES for x in (
        "rate", "half_life", "floor", "fit_rmse", "linear_slope", "mean_step",
        "mean_similarity")]
    curve_rows = [[g["group"], m, p["generation"], p["n"], p["median"], p["q25"], p["q75"]]
                  for g in report["groups"] for m in ms.MEASURES for p in g["curves"][m]]
    run_rows = [[r["name"], r["group"], r["start"], r["seed"], r["control"], r["state"],
                 r["iterations"], r["found_at"], r["criterion"], r["attractor"], r["motif"],
                 r["rates"]["image"], r["rates"]["text"], r["embedding"]]
                for r in report["runs"]]
    by_group = {r["name"]: r["group"] for r in report["runs"]}
    series_rows = [[name, by_group[name], m, g, v]
                   for name, per in report["_series"].items() for m, points in per.items()
                   for g, v in points]
    attractor_rows = [[a["id"], a["kind"], a["length"], a.get("criterion") or "exact",
                       a["basin_size"], a.get("motif"), " | ".join(a["prompts"]),
                       " || ".join(" | ".join(v) for v in a.get("variants") or [])]
                      for a in report["attractors"]]
    return {
        "groups.csv": _csv(["group", "kind", "runs", "converged", "converged_share",
                            "iterations_median", "iterations_q25", "iterations_q75",
                            "iterations_min", "iterations_max", "attractors", "basins",
                            "motifs", "motif_basins", *measure_cols], group_rows),
        "curves.csv": _csv(["group", "measure", "generation", "runs", "median", "q25", "q75"],
                           curve_rows),
        "runs.csv": _csv(["run", "group", "start", "seed", "control", "state",
                          "images_drawn", "found_at", "criterion", "attractor", "motif",
                          "image_rate", "text_rate", "embedding"], run_rows),
        "series.csv": _csv(["run", "group", "measure", "generation", "similarity_to_start"],
                           series_rows),
        "attractors.csv": _csv(["attractor", "kind", "length", "criterion", "basin", "motif",
                                "prompts", "variants"], attractor_rows),
    }


# -- the page ----------------------------------------------------------------------------------
def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fit_cell(fit: dict[str, Any] | None) -> str:
    return fit_text(fit) if fit else "–"


def _group_table(groups: list[dict[str, Any]]) -> str:
    e = html_text
    head = ("<table><tr><th>group</th><th>runs</th><th>converged</th>"
            "<th>images drawn before converging<br>median [25th–75th] (min–max)</th>"
            "<th>attractors (basins)</th><th>motifs (basins)</th>"
            "<th>image drift rate</th><th>text drift rate</th>"
            "<th>caption ↔ image<br>mean to the start</th></tr>")
    rows = []
    for g in groups:
        its = g["iterations_to_converge"]
        spread = (f"{_number(its['median'], 1)} [{_number(its['q25'], 1)}–"
                  f"{_number(its['q75'], 1)}] ({its['min']}–{its['max']})" if its else "–")
        share = g["converged_share"]
        rows.append(
            f"<tr><td>{e(g['group'])}</td><td>{e(g['runs'])}</td>"
            f"<td>{e(g['converged'])} ({e(f'{share:.0%}' if share is not None else '–')})</td>"
            f"<td>{e(spread)}</td>"
            f"<td>{e(g['attractors'])} ({e(' '.join(map(str, g['basins'])) or '–')})</td>"
            f"<td>{e(g['motifs'])} ({e(' '.join(map(str, g['motif_basins'])) or '–')})</td>"
            f"<td>{e(_fit_cell(g['fits']['image']))}</td>"
            f"<td>{e(_fit_cell(g['fits']['text']))}</td>"
            f"<td>{e(_number(g['mean_similarity']['cross']))}</td></tr>")
    return head + "".join(rows) + "</table>"


def html_page(report: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The page: every text through text.html_text (captions are untrusted: never markup,
    control characters shown as \\xNN), every figure inlined."""
    e = html_text
    loop = report["loop"]
    criterion = loop.get("converge") or "exact"
    rule = ("exact repeats of the compared prompt" if criterion == "exact" else
            f"near repeats ({criterion}: cosine ≥ {loop.get('near_threshold')} to an earlier "
            f"iteration, {loop.get('near_window')} in a row) or exact ones")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e('truthloop study report: ' + Path(report['sweep']).name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:72em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{padding:3px 8px;text-align:left;"
        "vertical-align:top;border-bottom:1px solid #ddd}th{background:#f4f4f4}"
        "figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ccc}"
        "figcaption{color:#555;font-size:90%}.warn{color:#b22}code{background:#f4f4f4}"
        "</style></head><body>",
        f"<h1>Study report: {e(report['sweep'])}</h1>",
        f"<p>{e(count(report['trajectories'], 'run'))}, {e(report['converged'])} converged "
        f"(criterion: {e(rule)}); {e(count(len(report['groups']), 'group'))}; "
        f"{e(count(len(report['attractors']), 'attractor'))} in "
        f"{e(count(len(report['motifs']), 'motif'))}.</p>",
    ]
    if loop.get("control"):
        parts.append(f"<p>Control runs: <b>{e(loop['control'])}</b> (they never converge; "
                     "their curves are the baseline drift of one model alone).</p>")
    if report.get("models") == "tiny":
        parts.append(f"<p class='warn'><b>{e(TINY_LABEL)}</b>: these numbers say nothing "
                     "about real models.</p>")
    embedding = ", ".join(report["embeddings"]) or "no embedding recorded"
    parts.append(
        "<h2>How these were measured</h2><ul>"
        f"<li>Every similarity is the cosine of two unit embeddings by {e(embedding)} (named in "
        "each run's run.json, <code>measures</code>), recorded by the loop per iteration.</li>"
        "<li><b>image ↔ image</b>: the image drawn vs the start image; <b>text ↔ text</b>: the "
        "compared prompt vs the first one; <b>caption ↔ image</b>: the caption vs the start "
        "image (the loop also records each caption vs the image it describes).</li>"
        "<li>Generation 0 is the start: a run from an image starts at the input image, so its "
        "first drawn image is generation 1; a run from a prompt draws generation 0 itself.</li>"
        "<li>Curves: per generation, the median and the 25th–75th percentile over the runs "
        "that reached that generation. Runs that converged stop, so late generations hold "
        "only the runs still going.</li>"
        f"<li>Drift rate: least-squares fit of <code>{e(FIT_MODEL)}</code> to every point of "
        "a group past generation 0 (start = 1 within a modality; for caption ↔ image, the "
        "observed median at its first generation, counted from there). Each generation keeps a share of what is left of "
        "the start, and unrelated content does not fall to 0 but to a floor the embedding "
        "gives unrelated pairs, so a straight line would depend on how long the runs were. "
        "Half-life: generations for the distance left to the floor to halve. groups.csv also "
        "has the linear slope and the mean change per generation (the Telephone Game code's "
        "drift rate) for comparison.</li></ul>")
    parts.append("<h2>Groups</h2>")
    parts.append(_group_table(report["groups"]))
    if report["marginals"]:
        parts.append("<h3>Each grid value over the others</h3>")
        parts.append(_group_table(report["marginals"]))
    captions = {
        "convergence.png": "Share of runs that converged, and images drawn before they did.",
        "basins.png": "Attractor basins per group, coloured by motif.",
        "curves-image.png": "Image ↔ image similarity to the start over generations.",
        "curves-text.png": "Text ↔ text similarity to the start over generations.",
        "curves-cross.png": "Caption ↔ image: each caption vs the start image.",
        "rates.png": "Fitted drift rates per group.",
    }
    parts.append("<h2>Figures</h2>")
    for name, caption in captions.items():
        if name in figures:
            parts.append(f"<figure><img alt='{e(caption)}' src='{_data_uri(figures[name])}'>"
                         f"<figcaption>{e(caption)} <a href='figures/{e(name)}'>"
                         f"{e(name)}</a></figcaption></figure>")
    parts.append("<h2>Motifs</h2>")
    if not report["motifs"]:
        parts.append("<p>No run converged: no motifs.</p>")
    for motif in report["motifs"]:
        name = f"motif-{motif['id']}.png"
        if name in figures:
            caption = (f"Motif {motif['id']}: basin {motif['basin_size']}; "
                       f"{motif.get('representative_prompt') or ''}")
            parts.append(f"<figure><img alt='{e(caption)}' src='{_data_uri(figures[name])}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Attractors</h2><table><tr><th>#</th><th>kind</th><th>criterion</th>"
                 "<th>basin</th><th>motif</th><th>prompts</th></tr>")
    for a in report["attractors"]:
        prompts = "<br>".join(e(p) for p in a["prompts"])
        variants = a.get("variants") or []
        if len(variants) > 1:
            prompts += "<br><small>variants: " + "; ".join(
                e(" → ".join(v)) for v in variants) + "</small>"
        parts.append(f"<tr><td>{e(a['id'])}</td><td>{e(a['kind'])} ({e(a['length'])})</td>"
                     f"<td>{e(a.get('criterion') or 'exact')}</td><td>{e(a['basin_size'])}</td>"
                     f"<td>{e(a.get('motif'))}</td><td>{prompts}</td></tr>")
    parts.append("</table><h2>Files</h2><p>")
    parts.append(" · ".join(f"<a href='tables/{e(n)}'>{e(n)}</a>" for n in (
        "groups.csv", "curves.csv", "runs.csv", "series.csv", "attractors.csv")))
    parts.append(" · <a href='report.json'>report.json</a></p></body></html>\n")
    return "".join(parts)


def write_report(sweep_dir: Path, out: Path | None = None, min_cluster_size: int = 2
                 ) -> tuple[dict[str, Any], Path]:
    sweep_dir = Path(sweep_dir)
    report = build_report(sweep_dir, min_cluster_size)
    out = Path(out) if out else sweep_dir / REPORT_DIR
    figures: dict[str, bytes] = {}
    for measure in ms.MEASURES:
        drawn = draw_curves(report, measure)
        if drawn is not None:
            figures[f"curves-{measure}.png"] = png_bytes(drawn[0])
    figures["convergence.png"] = png_bytes(draw_convergence(report))
    figures["basins.png"] = png_bytes(draw_basins(report))
    rates = draw_rates(report)
    if rates is not None:
        figures["rates.png"] = png_bytes(rates)
    for motif in report["motifs"]:
        figures[f"motif-{motif['id']}.png"] = png_bytes(draw_motif_sheet(sweep_dir, report,
                                                                         motif))
    saved = {k: v for k, v in report.items() if k != "_series"}
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "tables").mkdir(parents=True, exist_ok=True)
        for name, data in figures.items():
            atomic_write_bytes(out / "figures" / name, data)
        for name, data in tables(report).items():
            atomic_write_bytes(out / "tables" / name, data)
        atomic_write_json(out / "report.json", saved)
        atomic_write_bytes(out / "report.html", html_page(report, figures).encode())
    except OSError as error:
        raise ReportError(f"cannot write the report into {out}: "
                          f"{error.strerror or error}") from None
    saved["figures"] = sorted(figures)
    return saved, out


def describe(report: dict[str, Any]) -> list[str]:
    """The lines `truthloop report` prints (captions made visible, never markup)."""
    lines = [f"{count(report['trajectories'], 'run')}, {report['converged']} converged; "
             f"{count(len(report['attractors']), 'attractor')} in "
             f"{count(len(report['motifs']), 'motif')}"]
    for g in report["groups"]:
        its = g["iterations_to_converge"]
        image = g["fits"]["image"]
        lines.append(
            f"  {visible(g['group'])}: {g['converged']}/{g['runs']} converged"
            + (f" after a median {its['median']:g} images" if its else "")
            + f"; {count(g['attractors'], 'attractor')}"
            + (f"; image drift: {fit_text(image)}" if image else ""))
    return lines
