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
from truthloop.lookback.report import build_report, write_report  # noqa: E402

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
    assert page.count("src='data:image/png;base64,") == len(names)  # self-contained
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
    out = capsys.readouterr().out
    assert "24 runs, 16 converged" in out and (tmp_path / "r" / "report.html").exists()
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.func(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "not a sweep directory" in error[0]
