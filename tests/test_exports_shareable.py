"""Exports a person can share (issue 15): the HTML page works after its folder is moved, the GIF
and the contact sheet start with the start image, the drift plot names its axis and its zoom and
comes with its series as CSV, and the models shown are the ones loaded. Issue 30: the page writes
no image bytes (hard links, else the run's own images by relative path); --self-contained copies
them only where links cannot be made."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote

from PIL import Image

from test_review import PageParser, make_run
from truthloop.cli import main
from truthloop.lookback.export import export
from truthloop.lookback.render import make_drift
from truthloop.lookback.runs import list_runs, models_label, open_run


def test_html_page_works_after_moving_its_folder(tmp_path):
    run_dir = make_run(tmp_path)
    export(run_dir, ["html"])
    moved = tmp_path / "somewhere else" / "shared"
    moved.parent.mkdir()
    shutil.move(run_dir / "exports", moved)
    shutil.rmtree(run_dir)  # nothing of the run is left to link to
    parser = PageParser()
    parser.feed((moved / "index.html").read_text(encoding="utf-8"))
    files = [src for src in parser.images if not src.startswith("data:")]
    assert len(files) == 1 + 3  # the start image and three iterations
    for src in files:
        assert not src.startswith(("/", "file:", "http", "..")), src
        with Image.open(moved / unquote(src)) as image:
            image.load()


def _page_images(page: Path) -> list[Path]:
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    return [page.parent / unquote(src) for src in parser.images if not src.startswith("data:")]


def _run_images(run_dir: Path) -> list[Path]:
    return [run_dir / "input.png"] + sorted((run_dir / "images").glob("*.png"))


def _no_hard_links(monkeypatch):
    """A file system that cannot hard-link (another device, FAT, some network shares)."""
    def link(source, target, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", link)


def _png_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.suffix == ".png" and path.is_file()]


def test_html_page_writes_no_image_bytes(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    assert main(["export", str(run_dir), "--html"]) == 0
    assert "4 images hard-linked in index_files/" in capsys.readouterr().out
    shown = _page_images(run_dir / "exports" / "index.html")
    assert len(shown) == 4
    for image, original in zip(shown, _run_images(run_dir)):
        assert os.path.samefile(image, original)  # the run's own file: no bytes written
        assert image.is_relative_to(run_dir / "exports")  # and it goes where the page goes


def test_without_hard_links_the_page_shows_the_runs_own_images(tmp_path, monkeypatch, capsys):
    run_dir = make_run(tmp_path)
    _no_hard_links(monkeypatch)
    out = tmp_path / "pages" / "this run"
    assert main(["export", str(run_dir), "--html", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "4 images shown from the run by relative path" in said
    assert _png_files(out) == []  # no copy anywhere
    assert not (out / "index_files").exists()
    parser = PageParser()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    files = [src for src in parser.images if not src.startswith("data:")]
    assert all(src.startswith("../../run/") for src in files), files  # relative: the page
    for image, original in zip(_page_images(out / "index.html"), _run_images(run_dir)):
        assert os.path.samefile(image, original)  # works where it is


def test_self_contained_copies_only_what_cannot_be_linked(tmp_path, monkeypatch, capsys):
    run_dir = make_run(tmp_path)
    assert main(["export", str(run_dir), "--html", "--self-contained"]) == 0
    assert "4 images hard-linked" in capsys.readouterr().out  # linked where it can be
    linked = _page_images(run_dir / "exports" / "index.html")
    assert all(os.path.samefile(a, b) for a, b in zip(linked, _run_images(run_dir)))
    _no_hard_links(monkeypatch)
    out = tmp_path / "sent"
    assert main(["export", str(run_dir), "--html", "--out", str(out), "--self-contained",
                 "--json"]) == 0
    page = json.loads(capsys.readouterr().out)["files"][0]
    assert page["images"] == {"linked": 0, "referenced": 0, "copied": 4}
    copies = _page_images(out / "index.html")
    for image, original in zip(copies, _run_images(run_dir)):
        assert image.parent == out / "index_files"
        assert not os.path.samefile(image, original)
        assert image.read_bytes() == original.read_bytes()
    shutil.rmtree(run_dir)  # the copies stand alone
    for image in copies:
        with Image.open(image) as opened:
            opened.load()


def test_self_contained_without_a_page_is_one_clear_line(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    assert main(["export", str(run_dir), "--self-contained"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "--self-contained" in err and "--html" in err
    assert not (run_dir / "exports").exists()  # nothing written


def test_gif_and_sheet_begin_with_the_start_image(tmp_path):
    run_dir = make_run(tmp_path)
    gif, sheet = export(run_dir, ["gif", "sheet"], captions=False, size=32)
    with Image.open(gif["path"]) as frames:
        assert frames.n_frames == 4
        assert frames.convert("RGB").getpixel((16, 16)) == (1, 2, 3)  # fakes.start_image()
    with Image.open(sheet["path"]) as image:
        x, y = sheet["gap"] + 16, sheet["header_height"] + 16
        assert image.convert("RGB").getpixel((x, y)) == (1, 2, 3)
    assert sheet["tiles"] == 4 and sheet["start"]


def test_drift_names_its_axis_and_zoom_and_writes_csv(tmp_path):
    run_dir = make_run(tmp_path)
    result = export(run_dir, ["drift"])[0]
    assert result["csv"] == run_dir / "exports" / "drift.csv"
    rows = list(csv.DictReader(result["csv"].open()))
    view = open_run(run_dir)
    drawn = [r for r in view.records if r.image]
    assert [int(row["iteration"]) for row in rows] == [r.index for r in drawn]
    assert [float(row["sim_start"]) for row in rows] == [r.sim_start for r in drawn]
    assert [row["in_cycle"] for row in rows] == ["0", "1", "1"]  # the 2-cycle from #1
    plot, layout = make_drift(view)
    # The fakes' similarities sit close together: the axis zooms and says so, in red, under it.
    assert layout.y_zoomed and layout.y_min > 0
    left, top, right, bottom = layout.plot_box
    band = plot.convert("RGB").crop((left, bottom + 20, left + 150, plot.height))
    assert (200, 60, 60) in [colour for _, colour in band.getcolors(10000)]
    axis = plot.convert("RGB").crop((0, top, 20, bottom))  # the rotated axis label
    assert len(axis.getcolors(10000)) > 2


def test_runs_and_exports_show_the_models_loaded(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["models_loaded"] = {  # what the loader records for a tiny run
        "generator_model": {"requested": "/c/tiny-v3/sd", "repo": None, "revision": None,
                     "path": "/c/tiny-v3/sd"},
        "caption_model": {"requested": "blip-large", "repo": "Salesforce/blip-image-captioning-"
                          "large", "revision": "353689b859fcf0523410b1806dace5fb46ecdf41",
                          "path": "/hf/snap"},
        "clip_model": {"requested": "x", "repo": None, "revision": None,
                       "path": "/c/tiny-v3/clip/open_clip_model.safetensors"}}
    summary_path.write_text(json.dumps(summary))
    row = list_runs(run_dir)[0]
    assert row["models_loaded"]["caption_model"] == "Salesforce/blip-image-captioning-large@353689b8"
    assert models_label(row) == ("sd + clip-interrogator (tiny random: sd / "
                                 "blip-image-captioning-large@353689b8 / clip)")
    assert main(["runs", str(run_dir)]) == 0
    assert "sd + clip-interrogator (tiny" in capsys.readouterr().out  # the table's models column
    page = export(run_dir, ["html"])[0]["path"].read_text(encoding="utf-8")
    assert "/c/tiny-v3/sd" in page and "Salesforce/blip-image-captioning-large@353689b8" in page


def test_read_run_for_notebooks(tmp_path):
    import subprocess
    import sys

    run_dir = make_run(tmp_path)
    code = ("import sys, truthloop; assert 'truthloop.store' not in sys.modules; "
            f"run = truthloop.read_run({str(run_dir)!r}); "
            "print(type(run.records[0]).__name__, len(run.records), run.status)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Record", "4", "converged"]
    info = json.loads((run_dir / "run.json").read_text())
    info["format"] = 99
    (run_dir / "run.json").write_text(json.dumps(info))
    import pytest

    import truthloop
    from truthloop.store import RunDirError

    with pytest.raises(RunDirError, match="newer truthloop"):
        truthloop.read_run(run_dir)


def _word_gaps(strip: Image.Image, ink) -> list[int]:
    """Widths of the blank column runs between the first and last inked column."""
    pixels = strip.load()
    inked = [any(ink(pixels[x, y]) for y in range(strip.height)) for x in range(strip.width)]
    columns = [x for x, hit in enumerate(inked) if hit]
    gaps, run = [], 0
    for x in range(columns[0], columns[-1] + 1):
        if inked[x]:
            if run:
                gaps.append(run)
            run = 0
        else:
            run += 1
    return gaps


def test_drift_labels_keep_their_spaces(tmp_path):
    """Pillow's default font has a 2-px space at 11 px: "0.984to 1.000", "startimage"."""
    run_dir = make_run(tmp_path)
    plot, layout = make_drift(open_run(run_dir))
    plot = plot.convert("RGB")
    left, top, right, bottom = layout.plot_box
    note = plot.crop((left, bottom + 20, left + 260, plot.height))  # "y axis zoomed: a to b"
    gaps = _word_gaps(note, lambda p: p[0] - p[1] > 40)
    assert len([gap for gap in gaps if gap >= 4]) == 5, gaps  # y|axis|zoomed:|a|to|b
    legend = plot.crop((right - 300, 4, right - 150, 24))  # "to start image" after its line
    gaps = _word_gaps(legend, lambda p: p[0] < 150 and abs(p[0] - p[2]) < 20)
    assert len([gap for gap in gaps if gap >= 4]) == 2, gaps  # to|start|image (grey ink only)
