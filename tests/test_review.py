"""`truthloop runs` and `truthloop export`: every export from run directories made by the fake
backends (instant), bad input, untrusted captions, a run still being written, and one end-to-end
check on a run of the real tiny models."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # fakes.py, however pytest is configured

from fakes import FakeCaptioner, FakePainter, factory, start_image  # noqa: E402
from truthloop.lookback.export import EXPORTS_DIR, export, export_default  # noqa: E402
from truthloop.lookback.html import diff_html  # noqa: E402
from truthloop.lookback.render import _font, frame_layout, wrap_text  # noqa: E402
from truthloop.lookback.runs import find_cycle, image_records, list_runs, open_run, runs_table  # noqa: E402
from truthloop.lookback.video import find_encoder  # noqa: E402
from truthloop.cli import main  # noqa: E402
from truthloop.config import RunConfig  # noqa: E402
from truthloop.loop import TruthLoop  # noqa: E402

# start -> a -> b -> a: a cycle of length 2 from #1; 3 images, 4 records
CYCLE_SCRIPT = {"start": "a, x", "a": "b, y", "b": "a, z"}
HOSTILE = "[bold red]boom[/] \x1b[31mred\x1b[0m <script>alert(1)</script> " + "w" * 300


def make_run(tmp_path: Path, script=None, name="run", start="start, s", max_iters=30,
             clauses=1) -> Path:
    config = RunConfig(input_image="start.png")
    config.loop.clauses = clauses
    config.loop.max_iters = max_iters
    config.models.models = "tiny"
    run_dir = tmp_path / name
    loop = TruthLoop(config, run_dir,
                     factory(FakeCaptioner(script if script is not None else CYCLE_SCRIPT,
                                           start=start), FakePainter()),
                     input_image=start_image())
    loop.run()
    return run_dir


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of the run (not its exports) with a hash of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and EXPORTS_DIR not in p.relative_to(run_dir).parts}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("truthloop: error: ")
    return lines[0]


@pytest.fixture
def cycle_run(tmp_path) -> Path:
    return make_run(tmp_path)


# -- gif / mp4 --------------------------------------------------------------------------------
def test_gif_has_one_frame_per_iteration(cycle_run, capsys):
    before = snapshot(cycle_run)
    assert main(["export", str(cycle_run), "--gif", "--fps", "4"]) == 0
    out = capsys.readouterr().out
    gif = cycle_run / "exports" / "trajectory.gif"
    assert f"wrote {gif}" in out
    with Image.open(gif) as image:
        assert image.n_frames == 4  # the start, 3 images; the 4th record only repeated a caption
        assert image.info["duration"] == 250
        assert image.info["loop"] == 0
        layout = frame_layout(256, captions=True)
        assert image.size == (layout.width, layout.height)
        assert image.height > image.width  # the caption band under the image
    assert snapshot(cycle_run) == before  # the run's own files are untouched


def test_gif_without_captions_is_just_the_images(cycle_run):
    results = export(cycle_run, ["gif"], captions=False, size=64)
    assert results[0]["frames"] == 4 and results[0]["start"]
    with Image.open(results[0]["path"]) as image:
        assert image.size == (64, 64)
        assert image.convert("RGB").getpixel((32, 32)) == (1, 2, 3)  # the start image first
        image.seek(2)
        # The fake painter draws flat colours: the frame is the image of iteration 1, enlarged.
        with Image.open(cycle_run / "images" / "0001.png") as original:
            expected = original.convert("RGB").getpixel((0, 0))
        got = image.convert("RGB").getpixel((32, 32))
        assert max(abs(a - b) for a, b in zip(got, expected)) <= 8  # GIF palette rounding


def test_mp4_without_an_encoder_says_so(cycle_run, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # `import imageio_ffmpeg` fails
    assert find_encoder() is None
    code = main(["export", str(cycle_run), "--mp4", "--gif"])
    assert code == 1
    line = one_line_error(capsys)
    assert "--mp4 needs an ffmpeg encoder" in line and "imageio-ffmpeg" in line
    assert not (cycle_run / "exports").exists()  # said before writing anything


@pytest.mark.skipif(find_encoder() is None, reason="no ffmpeg / imageio-ffmpeg here")
def test_mp4_with_an_encoder(cycle_run):
    results = export(cycle_run, ["mp4"], fps=2)
    path = results[0]["path"]
    data = path.read_bytes()
    assert data[4:8] == b"ftyp"
    assert results[0]["frames"] == 4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    ffprobe = shutil.which("ffprobe")
    if ffprobe:
        frames = subprocess.run(
            [ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
            capture_output=True, text=True, timeout=60).stdout.strip()
        assert frames == "3"


# -- contact sheet ----------------------------------------------------------------------------
def test_sheet_tiles_all_iterations(cycle_run):
    result = export(cycle_run, ["sheet"], size=64)[0]
    assert result["path"] == cycle_run / "exports" / "sheet.png"
    assert result["tiles"] == 4 and result["indices"] == [0, 1, 2] and result["start"]
    assert result["columns"] * result["rows"] >= 3 > result["columns"] * (result["rows"] - 1)
    with Image.open(result["path"]) as sheet:
        assert sheet.size == (result["width"], result["height"])
        gap = result["gap"]
        assert sheet.width == gap + result["columns"] * (64 + gap)
        assert sheet.height == (result["header_height"]
                                + result["rows"] * (result["tile_height"] + gap) + gap)


def test_sheet_cycle_only(cycle_run):
    result = export(cycle_run, ["sheet"], cycle_only=True, size=64, columns=1)[0]
    assert result["path"].name == "sheet-cycle.png"
    assert result["tiles"] == 2 and result["indices"] == [1, 2] and not result["start"]
    assert (result["columns"], result["rows"]) == (1, 2)


def test_cycle_only_without_a_cycle_is_a_clear_error(tmp_path, capsys):
    run_dir = make_run(tmp_path, script={}, max_iters=2, start="start, s")
    # no script: every caption is "lost, in, noise" -> repeats at #2? max_iters=2 stops first
    assert find_cycle(open_run(run_dir).records) is None
    assert main(["export", str(run_dir), "--sheet", "--cycle-only"]) == 2
    assert "no cycle yet" in one_line_error(capsys)


def test_long_words_wrap_inside_the_tile():
    font = _font(12)
    lines = wrap_text("x" * 500 + " tail", font, 100, 3)
    assert len(lines) == 3
    assert all(font.getlength(line) <= 100 for line in lines)
    assert lines[-1].endswith("…")
    assert wrap_text("\x1b[31mred", font, 200, 2) == ["\\x1b[31mred"]


# -- drift plot -------------------------------------------------------------------------------
def test_drift_plot_marks_the_cycle(cycle_run):
    result = export(cycle_run, ["drift"])[0]
    assert result["path"].name == "drift.png"
    assert result["points"] == 3
    assert result["cycle"] == (1, 2)
    with Image.open(result["path"]) as plot:
        left, top, right, bottom = result["plot_box"]
        # the cycle's shading is drawn inside the plot, right of iteration 1
        width = right - left
        x = int(left + (1 - result["x_min"] + 0.5) / (result["x_max"] - result["x_min"] + 1)
                * width) + 10
        assert plot.convert("RGB").getpixel((x, bottom - 3)) == (255, 241, 204)


# -- HTML -------------------------------------------------------------------------------------
class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures: list[str] = []
        self.images: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append(attrs.get("id"))
        elif tag == "img":
            self.images.append(attrs.get("src"))
        elif tag == "script":
            self.scripts += 1


def check_page(page: Path, run_dir: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    view = open_run(run_dir)
    assert parser.figures == ["start"] + [f"iter-{r.index}" for r in view.records]
    files = [src for src in parser.images if not src.startswith("data:")]
    assert len(files) == 1 + len(image_records(view))  # start + every image
    for src in files:
        assert not src.startswith(("/", "file:", "http")), src  # relative
        assert (page.parent / unquote(src)).resolve().is_file(), src
    # The images travel with the page (index_files/ beside it): the same bytes as the run's.
    assert (page.parent / unquote(files[1])).read_bytes() == (run_dir / "images/0000.png").read_bytes()
    assert (page.parent / unquote(files[0])).read_bytes() == (run_dir / "input.png").read_bytes()
    assert parser.scripts == 0
    return parser


def test_html_lists_every_iteration_by_relative_path(cycle_run):
    result = export(cycle_run, ["html"])[0]
    page = result["path"]
    assert page == cycle_run / "exports" / "index.html"
    check_page(page, cycle_run)
    text = page.read_text(encoding="utf-8")
    assert "<del>" in text or "<ins>" in text  # the prompts are diffed against the previous
    assert 'src="data:image/png;base64,' in text  # the drift plot travels inside the page


def test_html_elsewhere_with_out(cycle_run, tmp_path):
    out = tmp_path / "some where" / "pages"
    page = export(cycle_run, ["html"], out=out)[0]["path"]
    assert page.parent == out
    parser = check_page(page, cycle_run)
    assert all(src.startswith(("index_files/", "data:")) for src in parser.images)
    assert not (cycle_run / "exports").exists()


def test_html_escapes_hostile_captions(tmp_path):
    run_dir = make_run(tmp_path, script={"start": HOSTILE + ", more", HOSTILE: "start, s"},
                       clauses=1)
    page = export(run_dir, ["html"])[0]["path"]
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "\x1b" not in text and "\\x1b[31m" in text
    check_page(page, run_dir)


def test_diff_html_escapes_both_sides():
    html_text = diff_html("a <b>bold</b>, c", "a <i>x</i>, c")
    assert "<b>" not in html_text and "<i>" not in html_text
    assert "&lt;i&gt;x&lt;/i&gt;" in html_text
    assert "<ins>" in html_text and "<del>" in html_text
    assert diff_html(None, "<x>") == "&lt;x&gt;"


CHROMIUM = "/usr/bin/chromium"
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-total', imgs.length);
  document.body.setAttribute('data-loaded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);
});
</script>"""


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium here")
@pytest.mark.timeout(120)
def test_html_images_load_in_headless_chromium(cycle_run, tmp_path):
    page = export(cycle_run, ["html"])[0]["path"]
    text = page.read_text(encoding="utf-8")
    # A copy of the page beside it, with a checking script; the page's own CSP stays, except
    # that this one script is let through (the images must load under the page's img-src).
    assert "default-src 'none';" in text
    probe_text = text.replace("default-src 'none';", "default-src 'none'; script-src "
                              "'unsafe-inline';").replace("</body>", CHECK_SCRIPT + "</body>")
    probe = page.with_name("probe.html")
    probe.write_text(probe_text, encoding="utf-8")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=90)
    match = re.search(r'<body data-total="(\d+)" data-loaded="(\d+)"', result.stdout)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    total, loaded = int(match.group(1)), int(match.group(2))
    assert total == 1 + 3 + 1  # start, three iterations, the drift plot
    assert loaded == total


# -- runs ---------------------------------------------------------------------------------
def test_runs_json_parses(tmp_path, capsys):
    make_run(tmp_path, name="20260101-000000-a")
    make_run(tmp_path, script={}, name="20260101-000001-b", max_iters=2)
    (tmp_path / "not-a-run").mkdir()
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["run"] for row in rows] == ["20260101-000000-a", "20260101-000001-b"]
    first, second = rows
    assert first["status"] == "converged" and first["iterations"] == 3
    assert (first["cycle_start"], first["cycle_length"]) == (1, 2)
    assert first["truth_prompts"] == ["a", "b"]
    assert first["models"] == "tiny" and first["seed_mode"] == "reseed" and first["clauses"] == 1
    assert first["start_image"] == "start.png"
    assert isinstance(first["duration_s"], float)
    assert second["status"] == "max_iters" and second["cycle_length"] is None


def test_runs_table_shows_hostile_text_literally(tmp_path, capsys):
    make_run(tmp_path, script={"start": HOSTILE + ", x", HOSTILE: HOSTILE + ", y"})
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # no escape sequence reaches the terminal
    assert "[bold red]boom[/]" in out  # markup shown, not interpreted
    assert "\\x1b[31m" in out
    table = runs_table(list_runs(tmp_path))
    from rich.text import Text

    for column in table.columns:
        assert all(isinstance(cell, Text) for cell in column._cells)


def test_runs_of_an_empty_dir_and_of_one_run(tmp_path, cycle_run, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["runs", str(empty)]) == 0
    assert "no runs" in capsys.readouterr().out
    assert main(["runs", str(empty), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", str(cycle_run), "--json"]) == 0  # a run directory itself: that run
    assert [row["run"] for row in json.loads(capsys.readouterr().out)] == ["run"]


def test_runs_lists_a_damaged_run_without_failing(tmp_path, capsys):
    make_run(tmp_path, name="good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["good"]["status"] == "converged"
    assert rows["bad"]["status"] == "unreadable" and "run.json" in rows["bad"]["problems"][0]
    assert main(["runs", str(tmp_path)]) == 0
    assert "unreadable" in capsys.readouterr().out


# -- bad input ----------------------------------------------------------------------------
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in one_line_error(capsys)
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "no such directory" in one_line_error(capsys)
    (tmp_path / "plain").mkdir()
    assert main(["export", str(tmp_path / "plain")]) == 2
    assert "not a truthloop run directory" in one_line_error(capsys)
    run_dir = make_run(tmp_path)
    assert main(["export", str(run_dir), "--fps", "0"]) == 2
    assert "--fps" in one_line_error(capsys)
    log = run_dir / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = "{this is not json\n"
    log.write_text("".join(lines))
    assert main(["export", str(run_dir)]) == 2
    line = one_line_error(capsys)
    assert "line 2 is not valid JSON" in line and "damaged" in line


def test_a_run_without_images_yet(tmp_path, capsys):
    run_dir = make_run(tmp_path, max_iters=1)
    (run_dir / "log.jsonl").write_text("")
    assert main(["export", str(run_dir)]) == 2
    assert "no iterations with images yet" in one_line_error(capsys)


def test_export_a_run_still_being_written(cycle_run, capsys):
    """A writer holds the lock and is mid-append: only complete records are exported."""
    summary = json.loads((cycle_run / "summary.json").read_text())
    summary["status"] = "running"
    (cycle_run / "summary.json").write_text(json.dumps(summary))
    with open(cycle_run / "log.jsonl", "ab") as log:
        log.write(b'{"index": 4, "caption": "half a li')  # torn: no newline yet
    fd = os.open(cycle_run / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        paths = export_default(cycle_run)
        assert [p.name for p in paths] == ["trajectory.gif", "sheet.png"]
        assert all(p.parent == cycle_run / "exports" for p in paths)
        with Image.open(paths[0]) as gif:
            assert gif.n_frames == 4
        assert main(["runs", str(cycle_run), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["status"] == "running"
    finally:
        os.close(fd)


def test_default_export_is_gif_and_sheet(cycle_run, capsys):
    assert main(["export", str(cycle_run)]) == 0
    assert sorted(p.name for p in (cycle_run / "exports").iterdir()) == ["sheet.png",
                                                                         "trajectory.gif"]


def test_cli_imports_nothing_heavy():
    code = ("import sys, truthloop.cli; "
            "bad = [m for m in ('PIL', 'rich', 'torch', 'textual') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- end to end, real tiny models -----------------------------------------------------------
@pytest.mark.timeout(600)
def test_end_to_end_tiny_models(tmp_path, truthloop_cache):
    run_dir = tmp_path / "tiny-run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    exe = [sys.executable, "-m", "truthloop.cli"]
    demo = subprocess.run(exe + ["demo", "--headless", "--out", str(run_dir), "--max-iters", "3"],
                          capture_output=True, text=True, env=env, timeout=540)
    assert demo.returncode == 0, demo.stderr[-3000:]
    import torch

    if not torch.cuda.is_available():  # --device auto fell back to the CPU: said once
        assert demo.stderr.count("note: --device auto: running on the CPU") == 1, demo.stderr
    export = subprocess.run(exe + ["export", str(run_dir), "--gif", "--sheet", "--drift",
                                   "--html"], capture_output=True, text=True, env=env, timeout=120)
    assert export.returncode == 0, export.stderr[-3000:]
    assert "Traceback" not in export.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    exports = run_dir / "exports"
    with Image.open(exports / "trajectory.gif") as gif:
        assert gif.n_frames == summary["iterations"] + 1  # the start image first
    check_page(exports / "index.html", run_dir)
    listing = subprocess.run(exe + ["runs", str(tmp_path), "--json"], capture_output=True,
                             text=True, env=env, timeout=60)
    rows = json.loads(listing.stdout)
    assert rows[0]["iterations"] == summary["iterations"]
    assert rows[0]["models"] == "tiny"


def test_html_diff_is_the_core_diff_without_the_tui():
    code = ("import sys; from truthloop.lookback.html import diff_html; "
            "print(diff_html('a red <b> house', 'a blue <b> house')); "
            "sys.exit(1 if any(m.startswith(('tui', 'textual')) for m in sys.modules) else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "a <del>[-red-]</del> <ins>{+blue+}</ins> &lt;b&gt; house"
