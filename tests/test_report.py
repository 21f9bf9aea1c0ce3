"""`truthloop report SWEEP_DIR`: the study report from what the runs recorded. Its sweeps are run in
this process by the sweep worker over designed fake backends (tests/fakes.py: StudyDesign), whose
drift rates, near attractors and basins are known; its numbers are checked against a plain
recomputation from the run directories' own files."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from fakes import run_sweep  # noqa: E402
from truthloop.config import RunConfig  # noqa: E402
from truthloop.lookback import report_command  # noqa: E402
from truthloop.text import html_text  # noqa: E402
from truthloop.lookback import report as report_module  # noqa: E402
from truthloop.lookback.report import (  # noqa: E402
    BASIN_MIN_PX, BASIN_ROWS, build_report, describe, draw_basins, draw_curves, draw_rates,
    rate_box, write_report,
)

HOSTILE = "=HYPERLINK(\"x\") <script>alert(1)</script><img src=x onerror=alert(2)> \x1b[31m"


def base_config(**loop) -> RunConfig:
    config = RunConfig()
    config.loop.clauses, config.loop.max_iters = 1, 12
    for key, value in loop.items():
        setattr(config.loop, key, value)
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Near attractors and a drifting chain, at two guidance values (the fake's image drift rate
    is guidance / 10), two seeds, the text near-repeat criterion."""
    sweep_dir = tmp_path_factory.mktemp("study") / "sweep"
    run_sweep(sweep_dir, base_config(converge="text"), ["s1", "s2", "s3", "s4", "s5", "drift 0"],
              [0, 1], {"guidance": [1.0, 3.0]})
    report, out = write_report(sweep_dir)
    return sweep_dir, report, out


def plain_runs(sweep_dir: Path) -> list[dict]:
    """Each run read straight from its files: run.json, summary.json, log.jsonl."""
    runs = []
    for run_dir in sorted((sweep_dir / "runs").iterdir()):
        config = json.loads((run_dir / "run.json").read_text())["config"]
        summary = json.loads((run_dir / "summary.json").read_text())
        lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        embedding = json.loads((run_dir / "embedding.json").read_text()) \
            if (run_dir / "embedding.json").exists() else None
        runs.append({"name": run_dir.name, "guidance": config["generate"]["guidance"],
                     "status": summary["status"], "iterations": summary["iterations"],
                     "truth": summary.get("truth_prompts"), "lines": lines,
                     "text": embedding and embedding["text"]})
    return runs


def test_report_numbers_equal_a_plain_recomputation(study):
    sweep_dir, report, _ = study
    runs = plain_runs(sweep_dir)
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"guidance=1.0", "guidance=3.0"}
    for guidance in (1.0, 3.0):
        group = groups[f"guidance={guidance}"]
        mine = [r for r in runs if r["guidance"] == guidance]
        done = [r for r in mine if r["status"] == "converged"]
        assert group["runs"] == len(mine) == 12
        assert group["converged"] == len(done)
        assert group["converged_share"] == pytest.approx(len(done) / len(mine))
        iterations = [r["iterations"] for r in done]
        assert group["iterations_to_converge"]["median"] == statistics.median(iterations)
        assert group["iterations_to_converge"]["min"] == min(iterations)
        # attractors: runs grouped by truth, then truths whose text embeddings are >= 0.95
        # apart joined (the runs' --near-threshold), as a union of pairs
        truths = sorted({tuple(r["truth"]) for r in done})
        vectors = {tuple(r["truth"]): r["text"] for r in done}
        place = {t: t for t in truths}
        for a in truths:
            for b in truths:
                if a < b and sum(x * y for x, y in zip(vectors[a], vectors[b])) >= 0.95:
                    old = place[b]
                    place.update({k: place[a] for k, v in place.items() if v == old})
        basins = sorted([sum(1 for r in done if place[tuple(r["truth"])] == p)
                         for p in set(place.values())], reverse=True)
        assert group["attractors"] == len(set(place.values())) == 3
        assert group["basins"] == basins == [4, 2, 2]
        # the curves: median and quartiles of each generation's values, as numpy computes them
        import numpy as np

        for field, measure in (("sim_start", "image"), ("text_start", "text"),
                               ("cross_start", "cross")):
            by_generation: dict[int, list[float]] = {}
            for r in mine:
                for line in r["lines"]:
                    if line.get(field) is not None:
                        by_generation.setdefault(line["index"], []).append(line[field])
            curve = group["curves"][measure]
            assert [p["generation"] for p in curve] == sorted(by_generation)
            for point in curve:
                values = by_generation[point["generation"]]
                assert point["n"] == len(values)
                assert point["median"] == pytest.approx(float(np.median(values)))
                assert point["q25"] == pytest.approx(float(np.percentile(values, 25)))
                assert point["q75"] == pytest.approx(float(np.percentile(values, 75)))
    # groups.csv carries the same numbers
    rows = {row["group"]: row for row in
            csv.DictReader((study[2] / "tables" / "groups.csv").open())}
    assert int(rows["guidance=3.0"]["converged"]) == groups["guidance=3.0"]["converged"]
    assert rows["guidance=1.0"]["basins"] == "4 2 2"


def test_attractors_and_motifs_are_the_atlas(study):
    _, report, _ = study
    found = {tuple(a["prompts"]): a for a in report["attractors"]}
    assert set(found) == {("barn 1",), ("moon 1", "sea 1"), ("fixZ",)}
    assert found[("barn 1",)]["basin_size"] == 8  # s1 and s2, two seeds, two grid values
    assert sorted(found[("barn 1",)]["variants"]) == [["barn 1"], ["barn 7"]]
    assert sum(m["basin_size"] for m in report["motifs"]) == report["converged"] == 16


def test_fitted_drift_rates_per_group_are_the_designed_ones(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_sweep(sweep_dir, base_config(max_iters=30), ["drift 0"], [0, 1],
              {"guidance": [1.0, 3.0]})
    report = build_report(sweep_dir)
    groups = {g["group"]: g for g in report["groups"]}
    for guidance in (1.0, 3.0):
        group = groups[f"guidance={guidance}"]
        assert group["converged"] == 0
        image = group["fits"]["image"]
        assert image["rate"] == pytest.approx(guidance / 10, rel=2e-3)
        assert image["floor"] == pytest.approx(0.4, abs=2e-3)
        assert image["half_life"] == pytest.approx(math.log(2) / (guidance / 10), rel=2e-3)
        assert group["fits"]["text"]["rate"] == pytest.approx(0.3, rel=2e-3)
        assert group["run_rates"]["image"]["median"] == pytest.approx(guidance / 10, rel=2e-3)
        # the Telephone Game code's rate: the mean change per generation of the mean curve
        means = [p["median"] for p in group["curves"]["image"] if p["generation"] > 0]
        assert group["mean_steps"]["image"] == pytest.approx(
            (means[-1] - means[0]) / (len(means) - 1), abs=1e-6)


def test_report_files_are_written_and_figures_decode(study):
    from PIL import Image

    _, report, out = study
    names = {p.name for p in (out / "figures").iterdir()}
    assert {"curves-image.png", "curves-text.png", "curves-cross.png", "convergence.png",
            "basins.png", "rates.png"} <= names
    assert {f"motif-{m['id']}.png" for m in report["motifs"]} <= names
    for name in names:
        with Image.open(out / "figures" / name) as image:
            image.load()
            assert image.size[0] >= 600 and image.size[1] >= 150
    page = (out / "report.html").read_text()
    # The charts and a thumbnail per motif are inlined (the page stands alone); the contact
    # sheets are files beside it, referenced.
    charts = names - {f"motif-{m['id']}.png" for m in report["motifs"]}
    assert page.count("src='data:image/png;base64,") == len(charts) == 6
    assert page.count("src='data:image/jpeg;base64,") == len(report["motifs"]) >= 1
    for motif in report["motifs"]:
        assert f"src='figures/motif-{motif['id']}.png'" in page
    for table in ("groups.csv", "curves.csv", "runs.csv", "series.csv", "attractors.csv"):
        assert (out / "tables" / table).stat().st_size > 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["groups"][0]["curves"]["image"] == report["groups"][0]["curves"]["image"]


def test_report_escapes_untrusted_captions(tmp_path):
    """A caption full of markup, HTML and an escape sequence: literal on the page, never a tag;
    in the CSV led by an apostrophe (it starts like a formula) with the escape made visible."""
    import fakes

    fakes.NEAR_SCRIPT["s9"] = HOSTILE + ", h"
    fakes.NEAR_SCRIPT[HOSTILE] = HOSTILE + ", h"
    try:
        sweep_dir = tmp_path / "sweep"
        run_sweep(sweep_dir, base_config(), ["s9", "s4"], [0], {})
        _, out = write_report(sweep_dir)
    finally:
        del fakes.NEAR_SCRIPT["s9"], fakes.NEAR_SCRIPT[HOSTILE]
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page and "\x1b" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "\\x1b[31m" in page
    table = (out / "tables" / "attractors.csv").read_text()
    assert "'=HYPERLINK" in table and "\x1b" not in table


def test_control_sweeps_pass_through_and_report(tmp_path):
    """--control is an option like any other: every trajectory of the sweep is a control run,
    and the report reads runs that never converge (captioner-only draws no images)."""
    sweep_dir = tmp_path / "sweep"
    trajs = run_sweep(sweep_dir, base_config(control="captioner-only", max_iters=4),
                      ["drift 0"], [0, 1], {})
    assert all(t.config["loop"]["control"] == "captioner-only" for t in trajs)
    report, out = write_report(sweep_dir)
    group = report["groups"][0]
    assert group["converged"] == 0 and group["runs"] == 2
    assert [p["n"] for p in group["curves"]["image"]] == [2]  # only the start image drawn
    assert len(group["curves"]["text"]) == 4
    assert "Control runs" in (out / "report.html").read_text()


def test_report_command(tmp_path, capsys, study):
    sweep_dir = study[0]
    parser = argparse.ArgumentParser()
    report_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(sweep_dir), "--out", str(tmp_path / "r")])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "24 runs, 16 converged" in out and (tmp_path / "r" / "report.html").exists()
    assert err == ""  # nothing skipped, nothing to say
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.func(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "not a sweep directory" in error[0]


# -- at study scale --------------------------------------------------------------------------------
def test_contact_sheets_are_bounded_and_beside_the_page(tmp_path, monkeypatch):
    """Only the biggest motifs get a contact sheet (a file, referenced); every motif is in the
    page's table with its thumbnail; an earlier report's extra sheet does not stay behind."""
    sweep_dir = tmp_path / "sweep"
    # two near attractors: too few to cluster, so two motifs
    run_sweep(sweep_dir, base_config(converge="text"), ["s1", "s3"], [0], {})
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "motif-9.png").write_bytes(b"an earlier report's sheet")
    monkeypatch.setattr(report_module, "MOTIF_SHEETS", 1)
    report, _ = write_report(sweep_dir, out)
    assert len(report["motifs"]) == 2
    sheets = sorted(p.name for p in (out / "figures").glob("motif-*.png"))
    assert sheets == ["motif-0.png"] and "motif-0.png" in report["figures"]
    page = (out / "report.html").read_text()
    assert page.count("src='figures/motif-") == 1 and "figures/motif-1.png" not in page
    assert page.count("data:image/jpeg;base64,") == 2
    for motif in report["motifs"]:
        assert f"<tr><td>{motif['id']}" in page


def many_motifs(motifs: int = 70, groups: tuple[str, ...] = ("sd + blip", "sd + florence-2")):
    """A report as build_report makes it, as far as the basins chart reads it: one huge basin
    (motif 0: 600 runs) and a long tail of one-run motifs."""
    sizes = [600] + [max(1, 40 // k) for k in range(1, motifs)]
    runs = [{"name": f"r{m}-{i}", "converged": True, "motif": m, "group": groups[i % len(groups)],
             "pair": groups[i % len(groups)]} for m, size in enumerate(sizes) for i in range(size)]
    runs += [{"name": "never", "converged": False, "motif": None, "group": groups[0],
              "pair": groups[0]}]
    return {"groups": [{"group": g} for g in groups], "runs": runs, "pairs": list(groups),
            "motifs": [{"id": m, "basin_size": size, "attractors": [m],
                        "representative_prompt": f"place number {m}"}
                       for m, size in enumerate(sizes)]}


def test_the_basins_chart_stays_legible_at_70_motifs():
    """Labels on the axis (no colour legend to decode for motifs), one bar per motif up to
    BASIN_ROWS, the rest summed in one bar, and a one-run basin still visible beside a basin
    of 600."""
    report = many_motifs(70)
    image, layout = draw_basins(report)
    rows = layout["rows"]
    assert len(rows) == BASIN_ROWS + 1
    assert rows[0]["label"] == "motif 0: place number 0" and rows[0]["note"].startswith("600 runs")
    assert rows[BASIN_ROWS - 1]["label"].startswith(f"motif {BASIN_ROWS - 1}:")
    assert rows[-1]["label"] == f"{70 - BASIN_ROWS} other motifs, of 1 run or fewer each"
    widths = [w for row in rows for _, _, w in row["segments"]]
    assert min(widths) >= BASIN_MIN_PX
    assert [g for g, _, _ in rows[0]["segments"]] == ["sd + blip", "sd + florence-2"]
    assert layout["legend"] == ["sd + blip", "sd + florence-2"]  # colours are groups
    assert "sd + blip/florence-2" in layout["title"]
    assert image.size[1] < 1400  # one readable row per motif, not one per run


def test_curves_zoom_to_the_data_and_say_the_range():
    """Similarities within 0.92-1 fill the plot (not flat lines at the top of 0-1)."""
    curve = [{"generation": g, "n": 5, "median": 0.92 + 0.08 * math.exp(-g / 10),
              "q25": 0.921 + 0.079 * math.exp(-g / 8) - 0.001, "q75": 1.0 - 0.07 * (g / 50)}
             for g in range(0, 50)]
    report = {"groups": [{"group": "sd + blip", "curves": {"image": curve},
                          "fits": {"image": None}}], "embeddings": ["ViT-L-14/openai"],
              "pairs": ["sd + blip"], "models": "real"}
    _, layout = draw_curves(report, "image")
    assert layout["y"] == (0.92, 1.0)
    assert "(sd + blip)" in layout["title"]


def test_rate_boxes_hold_every_run_as_a_box_whisker_or_flier(study):
    """Every run's own rate lies within its group's whiskers or is drawn as a flier; the
    median inside the box; the pooled fit is a separate mark."""
    _, report, _ = study
    report = build_report(study[0])
    _, layout = draw_rates(report)
    assert "(sd + clip-interrogator)" in layout["title"]
    checked = 0
    for (group, measure), box in layout["boxes"].items():
        rates = [r["rates"][measure] for r in report["runs"]
                 if r["group"] == group and r["rates"][measure]]
        assert box["low"] <= box["q25"] <= box["median"] <= box["q75"] <= box["high"]
        for rate in rates:
            assert box["low"] <= rate <= box["high"] or rate in box["fliers"]
            checked += 1
    assert checked >= 24
    outlier = rate_box([0.10, 0.11, 0.12, 0.13, 0.14, 3.0])
    assert outlier["fliers"] == [3.0] and outlier["high"] == 0.14
    assert rate_box([0.0, 0.0]) is None  # no drift: said in words, not on a log axis


def test_the_pair_is_named_when_only_the_captioner_varies(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_sweep(sweep_dir, base_config(max_iters=6), ["s4", "drift 0"], [0],
              {"captioner": ["blip", "florence-2"]})
    report, out = write_report(sweep_dir)
    assert [g["group"] for g in report["groups"]] == ["sd + blip", "sd + florence-2"]
    assert report["pairs"] == ["sd + blip", "sd + florence-2"]
    page = (out / "report.html").read_text()
    assert "Generator + captioner: <b>sd + blip, sd + florence-2</b>" in page
    assert "(sd + blip/florence-2)</title>" in page
    assert any(line.startswith("  sd + blip: ") for line in describe(report))
    full = build_report(sweep_dir)
    for measure in ("image", "text"):
        assert "(sd + blip/florence-2)" in draw_curves(full, measure)[1]["title"]
    assert "(sd + blip/florence-2)" in draw_basins(full)[1]["title"]


# -- damaged sweeps --------------------------------------------------------------------------------
def test_damaged_files_are_named_on_stderr_and_in_the_page(tmp_path, capsys):
    """A log cut mid-line, a run.json truncated to 200 bytes and an emptied log: each one
    note on stderr and a line under the page's "What was skipped"; the report is written,
    the exit code is 1. A run still being written (its lock held) may have a torn last line:
    no note."""
    import fcntl

    sweep_dir = tmp_path / "sweep"
    run_sweep(sweep_dir, base_config(), ["s1", "s4", "drift 0", "s3"], [0], {})
    cut, truncated, emptied, live = sorted((sweep_dir / "runs").iterdir())
    log = cut / "log.jsonl"
    data = log.read_bytes()
    kept = data.count(b"\n") - 1
    log.write_bytes(data[:-len(data.splitlines()[-1]) // 2])  # the last line, half of it
    (truncated / "run.json").write_bytes((truncated / "run.json").read_bytes()[:200])
    (emptied / "log.jsonl").write_bytes(b"")
    summary = json.loads((live / "summary.json").read_text())
    (live / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    live_log = (live / "log.jsonl").read_bytes()
    (live / "log.jsonl").write_bytes(live_log + b'{"index": 99, "capt')
    with open(live / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the run's writer holds it
        parser = argparse.ArgumentParser()
        report_command.add_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["report", str(sweep_dir)])
        assert args.func(args) == 1
        report = build_report(sweep_dir)
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("truthloop: note: ") for line in err)
    notes = report["skipped"]
    assert len(notes) == 3 and len(err) == 4  # one each, and what the exit code means
    assert f"{log}: last line is incomplete" in notes[0]
    assert str(truncated) in notes[1] and "run.json" in notes[1]
    assert f"{emptied / 'log.jsonl'} is empty" in notes[2]
    assert not any(str(live) in line for line in err)
    for note in notes:
        assert f"truthloop: note: {note}" in err
    page = (sweep_dir / "report" / "report.html").read_text()
    assert "What was skipped" in page and "could not be read in full" in page
    for note in notes:
        assert f"<li>{html_text(note)}</li>" in page
    # what was skipped is left out, the rest is read
    runs = {r["name"]: r for r in report["runs"]}
    assert len(report["_series"][cut.name]["text"]) == kept
    assert report["_series"][emptied.name]["text"] == []
    assert runs[cut.name]["converged"]
