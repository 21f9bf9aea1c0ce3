"""The study report of a sweep, made from what its runs recorded (no GPU, no Ray, no model).

`truthloop report SWEEP_DIR` writes SWEEP_DIR/report/ (or --out):

    report.html    one page, every caption escaped: the charts and a thumbnail of every motif
                   inlined (it stands alone); the contact sheets referenced (files beside it:
                   a sweep of 70 motifs made a 31 MB page with them inlined)
    report.json    every number on the page, and "skipped": what could not be read
    figures/       curves-image.png, curves-text.png, curves-cross.png (similarity to the start
                   over generations: median and interquartile band per group, and the fitted
                   drift), convergence.png, basins.png, rates.png, and motif-N.png (contact
                   sheets) of the MOTIF_SHEETS biggest motifs
    tables/        groups.csv, curves.csv, runs.csv, series.csv, attractors.csv

Groups are the sweep's grid points (a generator/captioner pair is a grid point of those two
names, labelled `generator + captioner` in full); with two or more grid names, each name=value
is also summed over the others ("marginals"). Every figure's title names the pairs its runs
used. Files of the sweep that cannot be read in full (a torn or bad log line, a log emptier
than summary.json says, a damaged run.json, summary.json or embedding.json) are skipped and
each named in "skipped" (report_command prints them as notes and exits 1). Attractors and motifs
are the atlas's (lookback/atlas.py), near-repeat runs grouped by their own criterion. The drift
measures, the generations they are counted in and the fitted model are truthloop/measures.py's;
docs/study-measures.md says why that model.
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
from truthloop import named_measures as nm
from truthloop.lookback.atlas import PALETTE, AtlasError, thumbnail, build_atlas
from truthloop.lookback.render import _font, _line_height, draw_text, text_length, wrap_text
from truthloop.lookback.runs import TINY_LABEL
from truthloop.record import PERSON
from truthloop.store import (
    LOG_FILE, RUN_FILE, SUMMARY_FILE, atomic_write_bytes, atomic_write_json, read_records,
)
from truthloop.sweep import state as st
from truthloop.sweep.spec import SpecError, read_spec, trajectories
from truthloop.text import count, html_text, visible

REPORT_DIR = "report"
UNMEASURED = ("No similarities recorded in these runs (no model measured them): no drift "
              "curves or rates.")
FIT_MODEL = "floor + (start - floor) * exp(-rate * generation)"
# What the figures call the measures: Pillow's default font has no arrows or dashes.
FIGURE_LABELS = {"image": "image-image", "text": "text-text", "cross": "caption-image"}


class ReportError(Exception):
    """One line for the user."""


# -- the numbers ---------------------------------------------------------------------------------
def pair_label(config: dict[str, Any]) -> str:
    """`sd + blip`: the generator and the captioner a run's config names."""
    models = config.get("models") or {}
    return f"{models.get('generator') or '?'} + {models.get('captioner') or '?'}"


def pairs_label(pairs: list[str]) -> str:
    """The pairs of several runs in one name: `sd + blip`, `sd + blip/florence-2`."""
    sides = [sorted({p.split(" + ", 1)[i] for p in pairs}) for i in (0, 1)]
    return " + ".join("/".join(side) for side in sides)


def group_label(settings: dict[str, Any], pair: str | None = None) -> str:
    """`guidance=3.0 · steps=20`; `all runs` for a sweep without a grid. A grid over the
    generator or the captioner names the whole pair first (`sd + blip · guidance=3.0`): a
    captioner alone does not say what drew the images."""
    rest = settings
    if pair and ("generator" in settings or "captioner" in settings):
        rest = {k: v for k, v in settings.items() if k not in ("generator", "captioner")}
        return " · ".join([pair, *(f"{name}={value}" for name, value in rest.items())])
    return " · ".join(f"{name}={value}" for name, value in rest.items()) or "all runs"


def _run_info(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict):
        notes.append(f"{path} is not valid JSON (ignored: this run's embedding is not named)")
        return {}
    return info


def _run_records(run_dir: Path, state: str, summary: dict[str, Any] | None,
                 notes: list[str]) -> list[Any]:
    """The run's records, and a note for each thing in its log that the report cannot use: a
    torn last line (but for a run still being written, whose writer may be mid-append), a
    line that is not a record, a log emptier than summary.json says."""
    log = run_dir / LOG_FILE
    problems: list[str] = []
    records = read_records(run_dir, problems)
    for problem in problems:
        if state == "running" and "last line is incomplete" in problem:
            continue
        notes.append(problem.replace("(ignored)", "(skipped)"))
    written = (summary or {}).get("records")
    if not problems and isinstance(written, int) and len(records) < written:
        if not log.exists() or log.stat().st_size == 0:
            what = "missing" if not log.exists() else "empty"
            notes.append(f"{log} is {what}, but summary.json counts {count(written, 'record')} "
                         "(this run has no curves)")
        else:
            notes.append(f"{log} holds {len(records)} of the {written} records summary.json "
                         "counts (the rest are missing from the curves)")
    elif not records and log.exists() and state in st.DONE:
        notes.append(f"{log} is empty, but the run is {state} (this run has no curves)")
    return records


def _named_series(run_dir: Path, info: dict[str, Any], image_start: bool, notes: list[str]
                  ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{embedder: {measure: series}} of the named embedders run.json says measured the run
    (named_measures.py); a file it names that cannot be read is a note."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name in nm.measured_by(info):
        named = nm.EMBEDDERS.get(name)
        if named is None:  # measured by a newer truthloop's embedder: not this one's to read
            continue
        try:
            data = nm.read_measured(run_dir, name)
        except ValueError as error:
            notes.append(f"{error} (skipped: this run has no {named.label} numbers)")
            continue
        if data is None:
            notes.append(f"{run_dir / named.file} is missing, but run.json names it (skipped: "
                         f"this run has no {named.label} numbers)")
            continue
        out[name] = {m: nm.named_series(data, m, image_start) for m in named.measures}
    return out


def read_runs(sweep_dir: Path, trajs: list[Any], atlas: dict[str, Any],
              notes: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per trajectory: its group, state, convergence, attractor and motif, and its
    similarity-to-start series per measure. `notes` gets one line per file the report could
    not read in full (what was skipped, and what that costs)."""
    notes = [] if notes is None else notes
    attractor_of = {m: a["id"] for a in atlas["attractors"] for m in a["members"]}
    motif_of = {m: a.get("motif") for a in atlas["attractors"] for m in a["members"]}
    embedded = {point["trajectory"] for point in atlas["map"]}  # the atlas read their vectors
    rows = st.table(sweep_dir, trajs)
    runs = []
    for trajectory, row in zip(trajs, rows):
        run_dir = trajectory.run_dir(sweep_dir)
        summary, records, info = None, [], {}
        if row["state"] == "damaged":  # the sweep's table calls it so (a damaged run.json)
            notes.append(f"{run_dir}: {row.get('message') or 'damaged'} (skipped: the run "
                         "counts as damaged, none of its records are used)")
        elif run_dir.is_dir():
            summary = st.read_summary(run_dir)
            if summary is None and (run_dir / SUMMARY_FILE).exists():
                notes.append(f"{run_dir / SUMMARY_FILE} is not valid JSON (skipped: this run "
                             f"reads as {row['state']})")
            records = _run_records(run_dir, row["state"], summary, notes)
            info = _run_info(run_dir, notes)
        summary = summary or {}
        image_start = "image" in trajectory.start
        converged = row["state"] == "converged"
        if converged and trajectory.name not in embedded \
                and (run_dir / st.EMBEDDING_FILE).exists():
            notes.append(f"{run_dir / st.EMBEDDING_FILE} holds no readable embedding (skipped: "
                         "this run's truth is not placed among the motifs by its own)")
        cycle = summary.get("cycle") or {}
        pair = pair_label(trajectory.config)
        runs.append({
            "name": trajectory.name, "number": trajectory.number, "start": trajectory.label,
            "seed": trajectory.seed, "settings": dict(trajectory.settings),
            "pair": pair, "group": group_label(trajectory.settings, pair),
            "state": row["state"], "converged": converged,
            # images drawn before the run stopped (summary.json's "iterations")
            "iterations": summary.get("iterations", row["iterations"]),
            "found_at": cycle.get("found_at") if converged else None,
            "criterion": cycle.get("criterion", "exact") if converged else None,
            "control": (trajectory.config.get("loop") or {}).get("control", ""),
            "attractor": attractor_of.get(trajectory.name),
            "motif": motif_of.get(trajectory.name),
            "embedding": (info.get("measures") or {}).get("embedding"),
            "series": {name: ms.series(records, name, image_start) for name in ms.MEASURES},
            # the same, measured after the fact by named embedders (truthloop measure)
            "named": _named_series(run_dir, info, image_start, notes),
            # a chain imported from a Telephone Game layout: its kind and name there
            "imported_as": _imported_as(info),
            "measured_after": isinstance(info.get("named_measures"), dict)
            and bool(info["named_measures"]),
        })
    # Each run's own drift rate: every run's fit searched at once (measures.fit_decays).
    rates = {name: ms.fit_decays([run["series"][name] for run in runs], start=1.0)
             for name in ("image", "text")}
    for number, run in enumerate(runs):
        run["rates"] = {name: None if rates[name][number] is None else rates[name][number].rate
                        for name in rates}
    return runs


def _imported_as(info: dict[str, Any]) -> str | None:
    """`text-first/0.png`: where an imported chain was in its layout (telephone_game.py)."""
    where = info.get("telephone_game")
    if not isinstance(where, dict) or not all(isinstance(where.get(k), str)
                                              for k in ("chain", "filename")):
        return None
    return f"{where['chain']}/{where['filename']}"


def _unmeasured(runs: list[dict[str, Any]]) -> bool:
    """No run recorded a similarity (an imported sweep: no model ran), and none was measured
    afterwards (`truthloop measure`): no curves, no rates."""
    return bool(runs) and not any(
        run["measured_after"] or any(g > 0 for points in run["series"].values()
                                     for g, _ in points) for run in runs)


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
    pairs = sorted({r["pair"] for r in runs})
    basins = Counter(r["attractor"] for r in converged if r["attractor"] is not None)
    motif_basins = Counter(r["motif"] for r in converged if r["motif"] is not None)
    stats: dict[str, Any] = {
        "group": label, "kind": kind, "settings": settings, "pairs": pairs,
        "runs": len(runs),
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
        stats["mean_similarity"][name], stats["mean_steps"][name] = mcd_sdr(points)
        if name in ("image", "text"):
            stats["run_rates"][name] = _spread([r["rates"][name] for r in runs
                                                if r["rates"][name] is not None])
    stats["named"] = named_stats(runs)
    return stats


def mcd_sdr(points: list[tuple[int, float]]) -> tuple[float | None, float | None]:
    """Of the per-generation means past the start: their mean (the Telephone Game's mean
    cumulative drift, MCD) and their mean change per generation (its code's semantic drift
    rate, SDR; measures.mean_step)."""
    past = [v for g, v in _means_by_generation(points) if g > 0]
    return (sum(past) / len(past) if past else None), ms.mean_step(past)


def named_stats(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{embedder: {measure: {"mcd", "sdr", "runs"}}} over the runs a named embedder measured
    (`runs`: how many of them)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, named in nm.EMBEDDERS.items():
        having = [r for r in runs if name in r.get("named", {})]
        if having:
            out[name] = {}
            for measure in named.measures:
                mcd, sdr = mcd_sdr([p for r in having for p in r["named"][name][measure]])
                out[name][measure] = {"mcd": mcd, "sdr": sdr, "runs": len(having)}
    return out


def named_columns(groups: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(embedder, measure, MCD | SDR) of every named number some group has, in the order of
    named_measures.EMBEDDERS: the report's columns beside the run's own."""
    return [(name, measure, statistic) for name, named in nm.EMBEDDERS.items()
            if any(name in g.get("named", {}) for g in groups)
            for measure in named.measures for statistic in ("MCD", "SDR")]


def named_title(column: tuple[str, str, str]) -> str:
    """`MCD (DINO ViT-B/16, image ↔ image)`."""
    name, measure, statistic = column
    return nm.EMBEDDERS[name].column(statistic, measure)


def named_value(group: dict[str, Any], column: tuple[str, str, str]) -> float | None:
    name, measure, statistic = column
    found = ((group.get("named") or {}).get(name) or {}).get(measure) or {}
    return found.get(statistic.lower())


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
    notes: list[str] = []
    runs = read_runs(sweep_dir, trajs, atlas, notes)
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
                label = f"{name}={value}"
                if name in ("generator", "captioner") and members:
                    label = pairs_label([r["pair"] for r in members])
                marginals.append(group_stats(label, {name: value}, members, "marginal"))
    embeddings = sorted({r["embedding"] for r in runs if r["embedding"]})
    config = spec.get("config") or {}
    return {
        "sweep": str(sweep_dir),
        "models": (config.get("models") or {}).get("models"),
        "grid": spec.get("grid") or {},
        "loop": {k: (config.get("loop") or {}).get(k)
                 for k in ("converge", "near_threshold", "near_window", "control",
                           "max_iters", "clauses", "generations")},
        "embeddings": embeddings,
        # the embedders that measured runs again after the fact (truthloop measure)
        "named_embedders": [{"name": name, "label": nm.EMBEDDERS[name].label,
                             "measures": list(nm.EMBEDDERS[name].measures),
                             "runs": sum(1 for r in runs if name in r["named"])}
                            for name in nm.EMBEDDERS if any(name in r["named"] for r in runs)],
        # every generator + captioner pair the runs used (a grid or not: titles name them)
        "pairs": sorted({r["pair"] for r in runs}),
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
        "runs": [{k: v for k, v in r.items() if k not in ("series", "named")} for r in runs],
        # runs forked from the sweep's (not trajectories: not in the numbers), with their starts
        "forks": sweep_forks(sweep_dir, trajs),
        # what could not be read in full, one line each (the page and stderr list them)
        "skipped": notes,
        # a sweep imported from a Telephone Game layout (telephone_game.import_layout): whence
        "imported": spec.get("imported") if isinstance(spec.get("imported"), dict) else None,
        "unmeasured": _unmeasured(runs),
        "_series": {r["name"]: r["series"] for r in runs},  # for the figures and series.csv
        "_named_series": {r["name"]: r["named"] for r in runs},  # for series.csv
    }


def sweep_forks(sweep_dir: Path, trajs: list[Any]) -> list[dict[str, Any]]:
    """The runs beside the sweep's own in its runs folder that are forks (`truthloop fork`, `f`
    and `w` in the app): not trajectories of the study, so none of the numbers count them; listed
    with where they start, a person's prompt said as such (a human turn is not the model's)."""
    from truthloop.fork import parent_of
    from truthloop.lookback.runs import runs_folder, start_label
    from truthloop.store import read_run_info

    folder = runs_folder(sweep_dir)
    own = {trajectory.run_dir(sweep_dir).name for trajectory in trajs}
    try:
        children = sorted(child for child in folder.iterdir()
                          if child.is_dir() and not child.name.startswith(".")
                          and child.name not in own)
    except OSError:
        return []
    forks = []
    for child in children:
        try:
            info = read_run_info(child)
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        relation = parent_of(info) if isinstance(info, dict) else None
        if relation is None:
            continue
        parent = {"run": relation.path.name, "at": relation.at, "prompt_by": relation.prompt_by}
        forks.append({"run": child.name, "parent": relation.path.name, "at": relation.at,
                      "prompt_by": relation.prompt_by, "start": start_label({"parent": parent})})
    return forks


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


def _titled(report: dict[str, Any], title: str) -> str:
    """A figure's title with the pair(s) that made its runs, generator and captioner both."""
    pairs = report.get("pairs") or []
    return f"{title} ({pairs_label(pairs)})" if pairs else title


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
    generations = [p["generation"] for g in groups for p in g["curves"][measure]]
    values = [v for g in groups for p in g["curves"][measure]
              for v in (p["q25"], p["median"], p["q75"])]
    x0, x1 = 0, max(1, max(generations))
    y0, y1 = zoomed_range(min(values), max(values))
    title = _titled(report, f"{FIGURE_LABELS[measure]}: similarity to the start over "
                            "generations")
    top = _header(draw, width, title, [
        (f"cosine of {embedding} embeddings; line: median over the runs that reached the "
         f"generation, band: 25th-75th percentile, dashed: fitted {FIT_MODEL}", GREY),
        (f"y axis zoomed to the data: {y0:.2f} to {y1:.2f}", GREY),
        *_tiny_lines(report)])
    font, small = _font(12), _font(11)
    legend_width = 300
    left, right, bottom = 70, width - legend_width - 10, height - 50

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
    return canvas, {"title": title, "groups": shown, "x": (x0, x1), "y": (y0, y1)}


def zoomed_range(lo: float, hi: float) -> tuple[float, float]:
    """An axis from `lo` to `hi` widened to the round ticks around them: data that lie within
    0.92-1 are drawn over the whole height, not as flat lines at the top of 0-1. Similarities
    are cosines: never past -1 or 1."""
    top = hi
    if hi - lo < 0.01:  # flat: a little room around it
        lo, hi = lo - 0.005, hi + 0.005
    ticks = _ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else (hi - lo)
    y0 = max(-1.0, math.floor(lo / step + 1e-9) * step)
    y1 = math.ceil(hi / step - 1e-9) * step
    if top <= 1.0:
        y1 = min(1.0, y1)
    return round(y0, 10), round(y1, 10)


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
    top = _header(draw, width, _titled(report, "Convergence per group"), [
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


BASIN_ROWS = 60     # motifs drawn one bar each in basins.png; the rest share the last bar
BASIN_MIN_PX = 3    # the narrowest segment drawn: one run must stay visible at any scale


def draw_basins(report: dict[str, Any], width: int = 980) -> tuple[Any, dict[str, Any]]:
    """The motifs, biggest basin first, one bar each: the runs that converged into it, split by
    group (a colour per group: groups are few, motifs many), labelled on the axis with the
    motif's number and representative prompt; no motif colours to tell apart. A segment is at
    least BASIN_MIN_PX wide. Past BASIN_ROWS motifs, one last bar sums the rest."""
    from PIL import Image, ImageDraw

    groups = report["groups"]
    motifs = report["motifs"]
    colour_of = {g["group"]: colour(number) for number, g in enumerate(groups)}
    # runs per motif and group
    per: dict[int, Counter] = {}
    for run in report["runs"]:
        if run["converged"] and run["motif"] is not None:
            per.setdefault(run["motif"], Counter())[run["group"]] += 1
    rows: list[tuple[str, Counter, str]] = []
    for motif in motifs[:BASIN_ROWS]:
        label = f"motif {motif['id']}: {visible(motif.get('representative_prompt') or '')}"
        rows.append((label, per.get(motif["id"], Counter()),
                     f"{count(motif['basin_size'], 'run')} · "
                     f"{count(len(motif['attractors']), 'attractor')}"))
    rest = motifs[BASIN_ROWS:]
    if rest:
        summed: Counter = Counter()
        for motif in rest:
            summed.update(per.get(motif["id"], Counter()))
        rows.append((f"{count(len(rest), 'other motif')}, of {count(rest[0]['basin_size'], 'run')} "
                     "or fewer each", summed,
                     f"{count(sum(m['basin_size'] for m in rest), 'run')} in all"))
    font, small = _font(12), _font(11)
    row = 18
    not_converged = sum(1 for r in report["runs"] if not r["converged"])
    lines = [(f"each bar: the runs that converged into one motif (biggest first), split by "
              f"group; {count(not_converged, 'run')} did not converge (convergence.png)", GREY),
             *_tiny_lines(report)]
    title = _titled(report, "Motif basins")
    legend_rows = math.ceil(len(groups) / 3) if len(groups) > 1 else 0
    header = _header(ImageDraw.Draw(Image.new("RGB", (width, 10), WHITE)), width, title, lines)
    height = header + legend_rows * 18 + 6 + row * max(1, len(rows)) + 50
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    top = _header(draw, width, title, lines)
    layout: dict[str, Any] = {"title": title, "rows": [], "legend": []}
    if len(groups) > 1:  # the groups' colours
        for number, group in enumerate(groups):
            x = 16 + (number % 3) * 315
            y = top + (number // 3) * 18
            draw.rectangle([x, y + 2, x + 12, y + 12], fill=colour_of[group["group"]])
            text = _legend_label(group["group"], small, 290)
            draw_text(draw, (x + 18, y), text, small, BLACK)
            layout["legend"].append(text)
        top += legend_rows * 18 + 6
    if not rows:
        draw_text(draw, (16, top + 4), "No run converged: no motifs.", font, GREY)
        return canvas, layout
    label_width, bar_left, bar_right = 330, 350, width - 150
    most = max(sum(c.values()) for _, c, _ in rows) or 1
    scale = (bar_right - bar_left) / most
    axis_y = top + row * len(rows) + 4
    for v in _ticks(0, most, 8):
        if v != int(v):
            continue
        x = bar_left + v * scale
        draw.line([x, top - 2, x, axis_y], fill=LIGHT)
        text = str(int(v))
        draw_text(draw, (x - text_length(small, text) / 2, axis_y + 4), text, small, GREY)
    draw_text(draw, (bar_left, axis_y + 20), "runs that converged into the motif", font, GREY)
    for number, (label, counts, note) in enumerate(rows):
        y = top + number * row
        text = _legend_label(label, small, label_width)
        draw_text(draw, (16, y + 2), text, small, BLACK)
        x = bar_left
        segments = []
        for group in groups:  # in the legend's order
            runs = counts.get(group["group"], 0)
            if not runs:
                continue
            end = x + max(BASIN_MIN_PX, runs * scale)
            draw.rectangle([x, y + 3, end - 1, y + row - 3], fill=colour_of[group["group"]])
            segments.append((group["group"], runs, round(end - x, 1)))
            x = end
        draw_text(draw, (x + 6, y + 2), note, small, GREY)
        layout["rows"].append({"label": text, "segments": segments, "note": note})
    return canvas, layout


def rate_box(values: list[float]) -> dict[str, Any] | None:
    """A box plot of positive rates on a log scale, as matplotlib draws one: box 25th-75th
    percentile, median, whiskers out to the furthest value within 1.5 interquartile ranges of
    the box (on the log scale), every value beyond them a flier of its own. Every value is
    inside the whiskers or a flier, so no mark sits outside its whisker unexplained."""
    values = sorted(v for v in values if v > 0)
    if not values:
        return None
    q25, median, q75 = (ms.quantile(values, q) for q in (0.25, 0.5, 0.75))
    spread = math.log10(q75) - math.log10(q25)
    low_fence = 10 ** (math.log10(q25) - 1.5 * spread)
    high_fence = 10 ** (math.log10(q75) + 1.5 * spread)
    inside = [v for v in values if low_fence <= v <= high_fence]
    # A whisker never ends inside the box (matplotlib's rule too): the quartiles interpolate
    # between values, so the nearest value inside the fences can lie past them.
    low, high = min([q25, *inside]), max([q75, *inside])
    return {"q25": q25, "median": median, "q75": q75, "low": low, "high": high,
            "fliers": [v for v in values if v < low_fence or v > high_fence], "n": len(values)}


def draw_rates(report: dict[str, Any], width: int = 980) -> tuple[Any, dict[str, Any]] | None:
    """Fitted drift rates per group, image and text side by side: a box plot of the runs' own
    fits (`rate_box`) and, as a diamond, the one fit to all the group's points pooled (longer
    runs weigh more in it, so it need not sit in the box)."""
    from PIL import Image, ImageDraw

    groups = report["groups"]
    if not any(g["fits"][m] for g in groups for m in ("image", "text")):
        return None
    run_rates = {(g["group"], m): [r["rates"][m] for r in report["runs"]
                                   if r["group"] == g["group"] and r["rates"][m] is not None]
                 for g in groups for m in ("image", "text")}
    font, small = _font(12), _font(11)
    row = 30
    height = 190 + row * len(groups)
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    title = _titled(report, "Drift rate per group (per generation)")
    top = _header(draw, width, title, [
        (f"rate of the fitted {FIT_MODEL}, on a log scale. Box: the runs' own fits (25th-75th "
         "percentile, line: median; whiskers: the furthest run within 1.5 box lengths; "
         "circles: runs beyond). Diamond: one fit to all the group's points pooled. Higher: "
         "the start is forgotten faster", GREY), *_tiny_lines(report)])
    label_width = 250
    panels = [("image", 280, 590), ("text", 670, width - 30)]
    layout: dict[str, Any] = {"title": title, "boxes": {}, "pooled": {}}
    for measure, lo_x, hi_x in panels:
        rates = [g["fits"][measure]["rate"] for g in groups if g["fits"][measure]]
        rates += [v for g in groups for v in run_rates[(g["group"], measure)]]
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
            values = run_rates[(group["group"], measure)]
            box = rate_box(values)
            layout["boxes"][(group["group"], measure)] = box
            if box:
                draw.line([rx(box["low"]), y, rx(box["q25"]), y], fill=GREY, width=1)
                draw.line([rx(box["q75"]), y, rx(box["high"]), y], fill=GREY, width=1)
                for end in (box["low"], box["high"]):
                    draw.line([rx(end), y - 4, rx(end), y + 4], fill=GREY)
                draw.rectangle([rx(box["q25"]), y - 7, max(rx(box["q75"]), rx(box["q25"]) + 2),
                                y + 7], fill=colour(number), outline=BLACK)
                draw.line([rx(box["median"]), y - 9, rx(box["median"]), y + 9], fill=BLACK,
                          width=2)
                for flier in box["fliers"]:
                    draw.ellipse([rx(flier) - 3, y - 3, rx(flier) + 3, y + 3], outline=GREY)
            still = sum(1 for v in values if v == 0)
            fit = group["fits"][measure]
            layout["pooled"][(group["group"], measure)] = \
                None if not fit or fit["no_drift"] else fit["rate"]
            if fit and fit["no_drift"]:  # said on a white ground, over the box
                note = "no drift (pooled fit)"
                box_width = text_length(small, note)
                draw.rectangle([lo_x + 2, y - 8, lo_x + 8 + box_width, y + 7], fill=WHITE,
                               outline=(170, 170, 170))
                draw_text(draw, (lo_x + 5, y - 7), note, small, GREY)
            elif fit:
                x = rx(fit["rate"])
                # hollow, so the median line under it shows
                draw.polygon([(x, y - 7), (x + 7, y), (x, y + 7), (x - 7, y)], outline=BLACK,
                             width=2)
                if fit["within_one_generation"]:  # the rate is a lower bound: said past the box
                    note = "all within 1 generation"
                    at = max(x, rx(box["high"]) if box else x) + 9
                    if at + text_length(small, note) > hi_x + 20:  # no room: before the box
                        at = min(x, rx(box["low"]) if box else x) - 9 - text_length(small, note)
                    draw_text(draw, (at, y - 7), note, small, GREY)
            if still:
                draw_text(draw, (hi_x - text_length(small, f"{still} no drift"), y - 15),
                          f"{still} no drift", small, GREY)
    for number, group in enumerate(groups):
        y = top + 18 + number * row + 7
        draw_text(draw, (16, y), _legend_label(group["group"], font, label_width), font, BLACK)
    return canvas, layout


SHEET_TILE = 150
SHEET_COLUMNS = 6
SHEET_MOST = 36
MOTIF_SHEETS = 12   # contact sheets drawn: the biggest basins; every motif is in the page's table
THUMB = 64          # the page's inlined thumbnail of each motif's medoid (JPEG)


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
    pair_of = {r["name"]: r["pair"] for r in report["runs"]}
    pairs = sorted({pair_of[member] for _, member in tiles if member in pair_of})
    title = f"Motif {motif['id']}" + (f" ({pairs_label(pairs)})" if pairs else "")
    top = _header(ImageDraw.Draw(probe), width, title, header_lines)
    canvas = Image.new("RGB", (width, top + rows * tile_height + 12), WHITE)
    draw = ImageDraw.Draw(canvas)
    _header(draw, width, title, header_lines)
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


def png_bytes(image: Any, optimize: bool = True) -> bytes:
    """optimize: worth it for a chart's flat colours; a contact sheet's photos gain ~0.3% for
    half again the time."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=optimize)
    return buffer.getvalue()


def jpeg_bytes(image: Any) -> bytes:
    """A photo-like thumbnail for the page: a few kilobytes where a PNG takes ten times that."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
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
    named = named_columns(groups)
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
            *[named_value(g, column) for column in named],
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
    series_rows += [[name, by_group[name], f"{m} ({nm.EMBEDDERS[embedder].label})", g, v]
                    for name, per in report.get("_named_series", {}).items()
                    for embedder, measured in per.items() for m, points in measured.items()
                    for g, v in points]
    attractor_rows = [[a["id"], a["kind"], a["length"], a.get("criterion") or "exact",
                       a["basin_size"], a.get("motif"), " | ".join(a["prompts"]),
                       " || ".join(" | ".join(v) for v in a.get("variants") or [])]
                      for a in report["attractors"]]
    return {
        "groups.csv": _csv(["group", "kind", "runs", "converged", "converged_share",
                            "iterations_median", "iterations_q25", "iterations_q75",
                            "iterations_min", "iterations_max", "attractors", "basins",
                            "motifs", "motif_basins", *measure_cols,
                            *map(named_title, named)], group_rows),
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


def _named_cell(group: dict[str, Any], column: tuple[str, str, str]) -> str:
    """A named MCD or SDR, with how many of the group's runs it covers when not all."""
    value = _number(named_value(group, column), 4)
    measured = ((group.get("named") or {}).get(column[0]) or {}).get(column[1]) or {}
    if measured and measured["runs"] < group["runs"]:
        value += f" ({measured['runs']} of {group['runs']} runs)"
    return value


def _group_table(groups: list[dict[str, Any]]) -> str:
    e = html_text
    named = named_columns(groups)
    head = ("<table><tr><th>group</th><th>runs</th><th>converged</th>"
            "<th>images drawn before converging<br>median [25th–75th] (min–max)</th>"
            "<th>attractors (basins)</th><th>motifs (basins)</th>"
            "<th>image drift rate</th><th>text drift rate</th>"
            "<th>caption ↔ image<br>mean to the start</th>"
            + "".join(f"<th>{e(named_title(column))}</th>" for column in named) + "</tr>")
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
            f"<td>{e(_number(g['mean_similarity']['cross']))}</td>"
            + "".join(f"<td>{e(_named_cell(g, column))}</td>" for column in named) + "</tr>")
    return head + "".join(rows) + "</table>"


def _motif_table(report: dict[str, Any], thumbnails: dict[int, bytes],
                 figures: dict[str, bytes]) -> str:
    """Every motif, biggest first: an inlined thumbnail of its medoid truth image, its basin,
    attractors, the pairs whose runs reached it, its representative prompt, and its contact
    sheet where one was drawn."""
    e = html_text
    pair_of = {r["name"]: r["pair"] for r in report["runs"]}
    members = {a["id"]: a["members"] for a in report["attractors"]}
    rows = ["<table><tr><th>motif</th><th>medoid</th><th>basin</th><th>attractors</th>"
            "<th>pairs</th><th>representative prompt</th></tr>"]
    for motif in report["motifs"]:
        pairs = sorted({pair_of[m] for a in motif["attractors"] for m in members.get(a, [])
                        if m in pair_of})
        thumb = thumbnails.get(motif["id"])
        image = (f"<img alt='medoid of motif {e(motif['id'])}' width='{THUMB}' "
                 f"height='{THUMB}' src='data:image/jpeg;base64,"
                 f"{base64.b64encode(thumb).decode()}'>" if thumb else "–")
        name = f"motif-{motif['id']}.png"
        link = f" <a href='#motif-{e(motif['id'])}'>sheet</a>" if name in figures else ""
        rows.append(f"<tr><td>{e(motif['id'])}{link}</td><td>{image}</td>"
                    f"<td>{e(motif['basin_size'])}</td><td>{e(len(motif['attractors']))}</td>"
                    f"<td>{e(', '.join(pairs) or '–')}</td>"
                    f"<td>{e(motif.get('representative_prompt') or '')}</td></tr>")
    return "".join(rows) + "</table>"


def _named_note(report: dict[str, Any]) -> str:
    """The page's word on the embedders that measured the runs again (truthloop measure)."""
    named = report.get("named_embedders") or []
    if not named:
        return ""
    e = html_text
    which = ", ".join(
        f"{e(n['label'])} ({e(' / '.join(ms.MEASURES[m].label for m in n['measures']))}; "
        f"{e(count(n['runs'], 'run'))})" for n in named)
    return ("<li>Measured again after the fact (<code>truthloop measure</code>), the same "
            f"pairs from the runs' own images and texts, by {which}. Per group, MCD: the mean "
            "similarity to the start past generation 0 (the Telephone Game's mean cumulative "
            "drift), SDR: the mean change per generation of the mean curve (its code's "
            "semantic drift rate), beside the runs' own.</li>")


def html_page(report: dict[str, Any], figures: dict[str, bytes],
              thumbnails: dict[int, bytes] | None = None) -> str:
    """The page: every text through text.html_text (captions are untrusted: never markup,
    control characters shown as \\xNN); the charts and a thumbnail of every motif inlined, the
    contact sheets referenced (files in figures/ beside it: at study scale, inlined, they made
    the page tens of megabytes)."""
    e = html_text
    loop = report["loop"]
    criterion = loop.get("converge") or "exact"
    rule = ("exact repeats of the compared prompt" if criterion == "exact" else
            f"near repeats ({criterion}: cosine ≥ {loop.get('near_threshold')} to an earlier "
            f"iteration, {loop.get('near_window')} in a row) or exact ones")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e('truthloop study report: ' + Path(report['sweep']).name)}"
        f"{e(' (' + pairs_label(report['pairs']) + ')' if report.get('pairs') else '')}</title>",
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
    if report.get("pairs"):
        parts.append(f"<p>Generator + captioner: <b>{e(', '.join(report['pairs']))}</b></p>")
    skipped = report.get("skipped") or []
    if skipped:
        parts.append("<p class='warn'><b>Some of the sweep's files could not be read in "
                     f"full</b> ({e(count(len(skipped), 'note'))}): the numbers below leave out "
                     "what they held. <a href='#skipped'>What was skipped</a>.</p>")
    if report.get("unmeasured"):
        parts.append(f"<p class='warn'><b>{e(UNMEASURED)}</b> <code>truthloop measure "
                     f"{e(report['sweep'])} --embedder NAME</code> adds them.</p>")
    imported = report.get("imported")
    if imported:
        parts.append(f"<h2>Imported chains</h2><p>From the Telephone Game layout "
                     f"<code>{e(imported.get('from'))}</code>: each chain's place there, and its "
                     f"run.</p><ul>")
        parts.extend(f"<li>{e(run['imported_as'])}: {e(run['name'])} ({e(run['start'])})</li>"
                     for run in report["runs"])
        parts.append("</ul>")
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
        "drift rate) for comparison.</li>" + _named_note(report) + "</ul>")
    parts.append("<h2>Groups</h2>")
    parts.append(_group_table(report["groups"]))
    if report["marginals"]:
        parts.append("<h3>Each grid value over the others</h3>")
        parts.append(_group_table(report["marginals"]))
    captions = {
        "convergence.png": "Share of runs that converged, and images drawn before they did.",
        "basins.png": "Motif basins, biggest first: the runs that converged into each motif, "
                      "split by group.",
        "curves-image.png": "Image ↔ image similarity to the start over generations.",
        "curves-text.png": "Text ↔ text similarity to the start over generations.",
        "curves-cross.png": "Caption ↔ image: each caption vs the start image.",
        "rates.png": "Fitted drift rates per group: the runs' own fits (box plot) and the "
                     "group's pooled fit (diamond).",
    }
    parts.append("<h2>Figures</h2>")
    for name, caption in captions.items():  # the charts are inlined (the contact sheets not)
        if name in figures:
            parts.append(f"<figure><img alt='{e(caption)}' src='{_data_uri(figures[name])}'>"
                         f"<figcaption>{e(caption)} <a href='figures/{e(name)}'>"
                         f"{e(name)}</a></figcaption></figure>")
    parts.append("<h2>Motifs</h2>")
    if not report["motifs"]:
        parts.append("<p>No run converged: no motifs.</p>")
    else:
        parts.append(_motif_table(report, thumbnails or {}, figures))
    sheets = [m for m in report["motifs"] if f"motif-{m['id']}.png" in figures]
    if sheets:
        parts.append(f"<h3>Contact sheets of the {e(count(len(sheets), 'biggest motif'))}</h3>"
                     "<p>Each run's truth image; the sheets are files beside this page "
                     "(figures/), not inlined.</p>")
    for motif in sheets:
        name = f"motif-{motif['id']}.png"
        caption = (f"Motif {motif['id']}: basin {motif['basin_size']}; "
                   f"{motif.get('representative_prompt') or ''}")
        parts.append(f"<figure id='motif-{e(motif['id'])}'><img loading='lazy' "
                     f"alt='{e(caption)}' src='figures/{e(name)}'>"
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
    parts.append("</table>")
    forks = report.get("forks") or []
    if forks:
        parts.append("<h2 id='forks'>Forks beside the runs</h2><p>Runs forked from the sweep's "
                     "(in its runs folder): not trajectories of the study, so not in the numbers "
                     "above. Where a person wrote the fork's first caption, it says "
                     "<b>your prompt</b>: a human turn, not the model's.</p><ul>")
        parts.extend(f"<li>{e(fork['run'])}: {e(fork['start'])}</li>" for fork in forks)
        parts.append("</ul>")
    if skipped:
        parts.append("<h2 id='skipped'>What was skipped</h2><p>Files of the sweep that could "
                     "not be read in full, and what the report left out for each (also printed "
                     "on stderr by <code>truthloop report</code>):</p><ul>")
        parts.extend(f"<li>{e(note)}</li>" for note in skipped)
        parts.append("</ul>")
    parts.append("<h2>Files</h2><p>")
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
    figures["basins.png"] = png_bytes(draw_basins(report)[0])
    rates = draw_rates(report)
    if rates is not None:
        figures["rates.png"] = png_bytes(rates[0])
    for motif in report["motifs"][:MOTIF_SHEETS]:
        figures[f"motif-{motif['id']}.png"] = png_bytes(
            draw_motif_sheet(sweep_dir, report, motif), optimize=False)
    thumbnails = {motif["id"]: jpeg_bytes(thumbnail(sweep_dir, motif.get("medoid_image"),
                                                    THUMB))
                  for motif in report["motifs"]}
    saved = {k: v for k, v in report.items() if not k.startswith("_")}
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "tables").mkdir(parents=True, exist_ok=True)
        # An earlier report's contact sheets that this one does not draw would pass for its own.
        for stale in (out / "figures").glob("motif-*.png"):
            if stale.name not in figures:
                stale.unlink(missing_ok=True)
        for name, data in figures.items():
            atomic_write_bytes(out / "figures" / name, data)
        for name, data in tables(report).items():
            atomic_write_bytes(out / "tables" / name, data)
        atomic_write_json(out / "report.json", saved)
        atomic_write_bytes(out / "report.html",
                           html_page(report, figures, thumbnails).encode())
    except OSError as error:
        raise ReportError(f"cannot write the report into {out}: "
                          f"{error.strerror or error}") from None
    saved["figures"] = sorted(figures)
    return saved, out


def describe(report: dict[str, Any]) -> list[str]:
    """The lines `truthloop report` prints (captions made visible, never markup)."""
    generations = (report.get("loop") or {}).get("generations")
    if generations:  # fixed-length chains: none stops at a repeat, so none "converges"
        lines = [f"{count(report['trajectories'], 'chain')} of "
                 f"{count(generations, 'generation')} each (--generations: fixed length, "
                 f"no stop at a repeat)"]
    else:
        lines = [f"{count(report['trajectories'], 'run')}, {report['converged']} converged; "
                 f"{count(len(report['attractors']), 'attractor')} in "
                 f"{count(len(report['motifs']), 'motif')}"]
    for g in report["groups"]:
        its = g["iterations_to_converge"]
        image = g["fits"]["image"]
        drift = f"image drift: {fit_text(image)}" if image else ""
        if generations:
            lines.append(f"  {visible(g['group'])}: {count(g['runs'], 'chain')}"
                         + (f"; {drift}" if drift else ""))
            continue
        lines.append(
            f"  {visible(g['group'])}: {g['converged']}/{g['runs']} converged"
            + (f" after a median {its['median']:g} images" if its else "")
            + f"; {count(g['attractors'], 'attractor')}"
            + (f"; {drift}" if drift else ""))
    imported = report.get("imported")
    if imported:
        names = [visible(run["imported_as"] or run["name"]) for run in report["runs"]]
        more = f" and {len(names) - 6} more (report.html names each)" if len(names) > 6 else ""
        lines.append(f"  imported from {visible(str(imported.get('from')))} (a Telephone Game "
                     f"layout): {', '.join(names[:6])}{more}")
    if report.get("unmeasured"):
        lines.append(f"  {UNMEASURED} `truthloop measure {visible(report['sweep'])} --embedder "
                     f"NAME` adds them")
    named = report.get("named_embedders") or []
    if named:
        lines.append("  measured again by " + ", ".join(n["label"] for n in named)
                     + " (truthloop measure): MCD and SDR per group in groups.csv and "
                       "report.html")
    forks = report.get("forks") or []
    if forks:
        yours = sum(1 for fork in forks if fork.get("prompt_by") == PERSON)
        lines.append(f"  beside them: {count(len(forks), 'fork')} of its runs, not counted"
                     + (f" ({yours} from your prompt)" if yours else ""))
    return lines
