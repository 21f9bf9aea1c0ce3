"""Fixed-length chains (`--generations N`, the Telephone Game's: no stop at a repeat, image-first
and text-first in one sweep) and the paper's layout: `truthloop export SWEEP --telephone-game OUT`
writes what its published scripts read (semantic-drift/mcd-sdr.py, mgg.py), `truthloop
import-telephone-game LAYOUT SWEEP` reads such a layout back as a sweep that `truthloop report`
reads, and the round trip gives the same files. Fake models (tests/sweep_fakes.py), the sweep's
trajectories run in this process (no Ray).

What the scripts read, as checked here (their code, not vendored): under text-first/ and
image-first/, gen-0 to gen-N; text-first has captions (gen-k.csv) at even k and images (gen-k/)
at odd k, image-first the other way round; every csv has the columns filename, caption, is read
as latin-1, sorted by filename and matched row by row, so all of a folder's csvs hold the same
filenames; an image is looked up as NAME.png, else NAME.jpg, for a filename with `.png`/`.jpg`
taken out; mgg.py reads text-first/gen-{1,3,..}/{i}.png, i the prompt's line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

import sweep_fakes
from faulthelpers import assert_one_clean_error_line, run_main
from truthloop.config import RunConfig
from truthloop.loop import LoopControl, TruthLoop
from truthloop import events as ev
from truthloop.store import read_run

BACKEND = "sweep_fakes:attractor_factory"
# A caption no csv may mangle: commas, quotes, a line break, markup, an escape, non-ASCII.
QUOTED = 'a "quoted" caption, with a comma\nand a line <b>bold</b> [red]x[/red] \x1b[31m é 猫'
PROMPTS = ["a1", "q1", "n1"]  # a1 repeats at its third caption (fixA); n1 never repeats


@pytest.fixture
def scripted(monkeypatch):
    """sweep_fakes' script with QUOTED in it: q1 -> QUOTED -> a1 -> a2 -> fixA -> fixA ..."""
    monkeypatch.setitem(sweep_fakes.SCRIPT, "q1", QUOTED)
    monkeypatch.setitem(sweep_fakes.SCRIPT, QUOTED, "a1")


@pytest.fixture
def in_process(monkeypatch):
    """`truthloop sweep` with its trajectories run here, one after another, by the sweep's own
    worker (each an ordinary TruthLoop run): what the command writes and records is tested."""
    import truthloop.sweep.command as command
    from truthloop.sweep.spec import trajectories
    from truthloop.sweep.worker import TrajectoryWorker

    def run(args, sweep_dir, spec):
        worker = TrajectoryWorker(spec["backend"])
        for trajectory in trajectories(spec):
            outcome = worker.run({"run_dir": str(trajectory.run_dir(sweep_dir)),
                                  "config": trajectory.config})
            assert outcome["status"] in ("converged", "max_iters"), outcome
        return 0

    monkeypatch.setattr(command, "_run", run)


def starts(tmp_path: Path) -> tuple[Path, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    sweep_fakes.start_image("a1").save(images / "alpha.png")  # captioned "a1"
    sweep_fakes.start_image("d1").save(images / "delta.jpg")  # captioned "d1" -> cyc3y ...
    return prompts, images


def fixed_sweep(tmp_path: Path, generations: int, *extra: str) -> Path:
    prompts, images = starts(tmp_path)
    sweep_dir = tmp_path / f"sweep-{generations}"
    code = run_main(["sweep", sweep_dir, "--images", images, "--prompts", prompts,
                     "--generations", str(generations), "--backend", BACKEND, "--no-atlas",
                     *extra])
    assert code == 0
    return sweep_dir


def their_csv(path: Path) -> list[dict[str, str]]:
    """A gen-k.csv as mcd-sdr.py's open_annotation_file reads it: latin-1, sorted by filename."""
    rows = list(csv.DictReader(io.StringIO(path.read_bytes().decode("latin1"), newline="")))
    return sorted(rows, key=lambda row: row["filename"])


def their_image(folder: Path, filename: str) -> Path | None:
    """mcd-sdr.py's open_image: `.png`/`.jpg` taken out of the filename, then .png or .jpg."""
    stem = str(folder / filename).replace(".png", "").replace(".jpg", "")
    for suffix in (".png", ".jpg"):
        if Path(stem + suffix).exists():
            return Path(stem + suffix)
    return None


def utf8(text: str) -> str:
    """What the scripts' latin-1 reading makes of a caption written as UTF-8."""
    return text.encode("utf-8").decode("latin1")


def layout_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


# -- fixed-length chains --------------------------------------------------------------------------
@pytest.mark.parametrize("generations", [5, 6])
def test_a_fixed_length_sweep_runs_exactly_n_generations_both_ways_past_repeats(
        tmp_path, scripted, in_process, generations):
    sweep_dir = fixed_sweep(tmp_path, generations)
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    assert spec["config"]["loop"]["generations"] == generations
    run_dirs = sorted((sweep_dir / "runs").iterdir())
    assert len(run_dirs) == 5  # 2 images (image-first) + 3 prompts (text-first)
    for run_dir in run_dirs:
        view = read_run(run_dir)
        assert view.config["loop"]["generations"] == generations  # run.json records it
        from_image = view.config["input_image"] is not None
        records = view.records
        # Generation 0 is the start; then captions and images alternate, each one generation.
        texts = [r.caption for r in records if r.caption is not None]
        images = [r.image for r in records if r.image is not None]
        assert len(texts) + len(images) == generations, (run_dir.name, texts, images)
        if from_image:  # caption first: captions k=1,3,5..; images k=2,4,..
            assert len(texts) == (generations + 1) // 2 and len(images) == generations // 2
        else:  # the prompt is generation 0; images k=1,3,..; captions k=2,4,..
            assert records[0].caption is None and records[0].compared == view.config[
                "start_prompt"]
            assert len(images) == (generations + 1) // 2 and len(texts) == generations // 2
        # No early stop: a repeat is not a reason to stop, nor marked as one.
        assert all(r.repeat_of is None for r in records)
        assert view.summary["status"] == "max_iters" and view.summary["cycle"] is None
        assert view.summary["generations"] == generations  # what the app says it ended by
    # a1's chain met fixA again and again and went on: from the prompt, its captions are
    # a2, fixA (, fixA) ...; the image alpha.png is captioned a1, a2, fixA.
    alpha = read_run(run_dirs[0])
    assert [r.caption for r in alpha.records] == ["a1", "a2", "fixA"][:(generations + 1) // 2]
    a1 = read_run(next(d for d in run_dirs if read_run(d).config["start_prompt"] == "a1"))
    assert [r.compared for r in a1.records][2:] == ["fixA"] * (len(a1.records) - 2)


def test_a_fixed_length_chain_stopped_mid_way_resumes_to_the_unbroken_chain(tmp_path):
    def chain(config: RunConfig, run_dir: Path, stop_after: int | None) -> None:
        control = LoopControl()

        def on_event(event):
            if stop_after is not None and isinstance(event, ev.IterationDone) \
                    and event.record.index == stop_after:
                control.stop()

        image = sweep_fakes.start_image("a1") if config.input_image else None
        TruthLoop(config, run_dir, sweep_fakes.attractor_factory, on_event=on_event,
                  control=control, input_image=image).run()

    for start, generations in (("prompt", 8), ("image", 7)):
        config = RunConfig()
        config.loop.generations = generations
        if start == "prompt":
            config.start_prompt = "a1"
        else:
            config.input_image = str(tmp_path / "alpha.png")
        whole, broken = tmp_path / f"{start}-whole", tmp_path / f"{start}-broken"
        chain(config, whole, None)
        chain(config, broken, 1)
        assert read_run(broken).summary["status"] == "stopped"
        assert len(read_run(broken).records) == 2
        TruthLoop.for_resume(broken, sweep_fakes.attractor_factory).run()
        a, b = read_run(whole), read_run(broken)
        assert [(r.caption, r.compared, r.image) for r in a.records] == \
            [(r.caption, r.compared, r.image) for r in b.records]
        assert b.summary["status"] == "max_iters"


def test_a_finished_chain_is_not_resumed_and_max_iters_does_not_apply(tmp_path, capsys):
    config = RunConfig()
    config.loop.generations = 4
    config.start_prompt = "a1"
    run_dir = tmp_path / "run"
    TruthLoop(config, run_dir, sweep_fakes.attractor_factory).run()
    capsys.readouterr()
    assert run_main(["resume", run_dir, "--headless"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "already ran its --generations 4")
    assert run_main(["resume", run_dir, "--headless", "--max-iters", "9"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "--max-iters does not apply")


@pytest.mark.parametrize("extra, needle", [
    (["--max-iters", "9"], "leave --max-iters out"),
    (["--converge", "text"], "never stop at a repeat"),
    (["--control", "generator-only"], "--control generator-only run is not one"),
    (["--generations", "-1"], "--generations must be 1 or more"),
])
def test_what_a_fixed_length_chain_cannot_be_is_one_line(tmp_path, capsys, in_process, extra,
                                                         needle):
    prompts, _ = starts(tmp_path)
    base = ["sweep", tmp_path / "s", "--prompts", prompts, "--backend", BACKEND]
    if "--generations" not in extra:
        base += ["--generations", "6"]
    assert run_main(base + extra) == 2
    assert_one_clean_error_line(capsys.readouterr().err, needle)
    assert not (tmp_path / "s").exists()


# -- export -----------------------------------------------------------------------------------------
def test_export_writes_the_layout_the_papers_scripts_read(tmp_path, scripted, in_process, capsys):
    generations = 20  # what mcd-sdr.py reads (MAX_GENERATIONS)
    sweep_dir = fixed_sweep(tmp_path, generations)
    out = tmp_path / "layout"
    capsys.readouterr()
    assert run_main(["export", sweep_dir, "--telephone-game", out]) == 0
    printed = capsys.readouterr()
    assert "text-first: 3 chains, image-first: 2 chains" in printed.out, printed
    assert sorted(p.name for p in out.iterdir()) == ["image-first", "text-first"]
    names = {"text-first": ["0.png", "1.png", "2.png"],  # the prompts' lines, as mgg.py reads
             "image-first": ["alpha.png", "delta.png"]}  # the start images' names
    for chain, first in (("text-first", 0), ("image-first", 1)):
        folder = out / chain
        texts = [g for g in range(generations + 1) if (g % 2 == 0) == (chain == "text-first")]
        expected = sorted([f"gen-{g}.csv" if g in texts else f"gen-{g}"
                           for g in range(generations + 1)])
        assert sorted(p.name for p in folder.iterdir()) == expected
        filenames = [row["filename"] for row in their_csv(folder / f"gen-{first}.csv")]
        assert filenames == names[chain]
        for g in range(generations + 1):
            if g in texts:
                rows = their_csv(folder / f"gen-{g}.csv")
                assert list(rows[0]) == ["filename", "caption"]
                assert [row["filename"] for row in rows] == filenames  # matched row by row
            else:
                assert len(list((folder / f"gen-{g}").iterdir())) == len(filenames)
                for name in filenames:
                    assert their_image(folder / f"gen-{g}", name) is not None, (chain, g, name)
    # mgg.py: `--imagedir LAYOUT/text-first/` + gen-{1,3,..,19}/{i}.png
    imagedir = str(out / "text-first") + "/"
    assert all(Path(imagedir + f"gen-{g}", f"{i}.png").exists()
               for g in range(1, 20, 2) for i in range(3))

    # What the files hold is the runs': the prompts, each caption, each image.
    runs = {read_run(d).config["start_prompt"] or Path(read_run(d).config["input_image"]).name:
            read_run(d) for d in (sweep_dir / "runs").iterdir()}
    gen0 = {row["filename"]: row["caption"] for row in their_csv(out / "text-first/gen-0.csv")}
    assert gen0 == {"0.png": "a1", "1.png": "q1", "2.png": "n1"}
    gen2 = {row["filename"]: row["caption"] for row in their_csv(out / "text-first/gen-2.csv")}
    assert gen2["1.png"] == utf8(QUOTED)  # the comma, quotes and line break survived
    q1 = runs["q1"]
    assert (out / "text-first/gen-1/1.png").read_bytes() == (q1.path / "images/0000.png"
                                                              ).read_bytes()
    assert (out / "text-first/gen-19/1.png").read_bytes() == (q1.path / "images/0009.png"
                                                               ).read_bytes()
    gen20 = {row["filename"]: row["caption"] for row in their_csv(out / "text-first/gen-20.csv")}
    assert gen20["1.png"] == q1.records[10].caption
    alpha = runs["alpha.png"]
    assert (out / "image-first/gen-0/alpha.png").read_bytes() == (alpha.path / "input.png"
                                                                  ).read_bytes()
    gen1 = {row["filename"]: row["caption"] for row in their_csv(out / "image-first/gen-1.csv")}
    assert gen1 == {"alpha.png": "a1", "delta.png": "d1"}
    assert (out / "image-first/gen-20/alpha.png").read_bytes() == (alpha.path /
                                                                   "images/0009.png").read_bytes()


def test_export_refuses_a_sweep_without_generations_and_leaves_unfinished_chains_out(
        tmp_path, scripted, in_process, capsys, monkeypatch):
    prompts, images = starts(tmp_path)
    plain = tmp_path / "plain"
    assert run_main(["sweep", plain, "--prompts", prompts, "--max-iters", "5", "--backend",
                     BACKEND, "--no-atlas"]) == 0
    capsys.readouterr()
    assert run_main(["export", plain, "--telephone-game", tmp_path / "out"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "was not run with --generations")
    assert not (tmp_path / "out").exists()

    sweep_dir = fixed_sweep(tmp_path, 6)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    capsys.readouterr()
    assert run_main(["export", sweep_dir, "--telephone-game", taken]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "not empty")
    assert (taken / "mine.txt").read_text() == "keep me"
    assert run_main(["export", sweep_dir, "--telephone-game", tmp_path / "x", "--gif"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "leave out --gif")

    # A chain cut short (its last two records gone, as a stopped run leaves it) is named and
    # left out; the rest are written, and the exit status says something is missing.
    cut = next(d for d in (sweep_dir / "runs").iterdir() if d.name.startswith("00002-"))
    log = cut / "log.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-2]))
    summary = json.loads((cut / "summary.json").read_text())
    (cut / "summary.json").write_text(json.dumps({**summary, "status": "stopped"}))
    out = tmp_path / "out"
    assert run_main(["export", sweep_dir, "--telephone-game", out]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{cut.name}: has 3 of its 6 generations (stopped)" in err
    assert [r["filename"] for r in their_csv(out / "text-first/gen-0.csv")] == ["1.png", "2.png"]


# -- import, and the round trip -----------------------------------------------------------------------
def test_import_then_export_gives_the_same_files(tmp_path, scripted, in_process, capsys):
    sweep_dir = fixed_sweep(tmp_path, 7, "--seeds", "3,4")  # odd: each way ends otherwise
    first, again = tmp_path / "first", tmp_path / "again"
    assert run_main(["export", sweep_dir, "--telephone-game", first]) == 0
    assert "0-s3.png" in (first / "text-first/gen-0.csv").read_text()  # several seeds: named
    imported = tmp_path / "imported"
    assert run_main(["import-telephone-game", first, imported, "--generator", "fake",
                     "--captioner", "fake"]) == 0
    assert "imported 10 chains of 7 generations" in capsys.readouterr().out
    spec = json.loads((imported / "sweep.json").read_text())
    assert spec["config"]["loop"]["generations"] == 7
    for run_dir in (imported / "runs").iterdir():
        assert not read_run(run_dir).problems
    assert run_main(["export", imported, "--telephone-game", again]) == 0
    assert layout_files(again) == layout_files(first)
    # And the imported chains are the sweep's own: the same texts, run by run.
    theirs = sorted(tuple(r.compared for r in read_run(d).records)
                    for d in (sweep_dir / "runs").iterdir())
    ours = sorted(tuple(r.compared for r in read_run(d).records)
                  for d in (imported / "runs").iterdir())
    assert ours == theirs


def write_layout(root: Path, generations: int = 4) -> dict[str, dict[int, str]]:
    """A layout as the paper's own tools write it: pandas' csv (`\\n` line ends, quoted only
    where needed), ND400's names (a NoCaps `id.jpg`, a DOCCI `id.png`), JPEG start images.
    Returns the captions: filename -> generation -> caption."""
    from PIL import Image

    captions = {
        "text-first": {"0.png": "a red barn", "1.png": QUOTED, "2.png": "=cmd|' /C calc'!A0"},
        "image-first": {"0013ea2087020901.jpg": "", "test_01234.png": QUOTED},
    }
    written: dict[str, dict[int, str]] = {}
    for chain, names in captions.items():
        folder = root / chain
        folder.mkdir(parents=True)
        for g in range(generations + 1):
            if (g % 2 == 0) == (chain == "text-first"):
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow(["filename", "caption"])
                for number, (name, caption) in enumerate(names.items()):
                    text = caption if g <= 2 else f"{caption} then {g}, \"{number}\""
                    writer.writerow([name, text])
                    written.setdefault(name, {})[g] = text
                (folder / f"gen-{g}.csv").write_text(buffer.getvalue(), encoding="utf-8")
            else:
                (folder / f"gen-{g}").mkdir()
                for number, name in enumerate(names):
                    stem = name.replace(".png", "").replace(".jpg", "")
                    suffix = ".jpg" if g == 0 else ".png"
                    # DOCCI's images are large: one start image wider than a run's 2048-pixel
                    # start images (an import keeps every pixel of a study's data).
                    size = (2100, 8) if g == 0 and chain == "image-first" and number == 1 \
                        else (8, 8)
                    Image.new("RGB", size, (40 * g, 10 * number, 200)).save(
                        folder / f"gen-{g}" / f"{stem}{suffix}")
    return written


def test_a_layout_of_their_own_imports_with_every_caption_exact(tmp_path, capsys):
    layout = tmp_path / "nd400"
    written = write_layout(layout)
    sweep_dir = tmp_path / "imported"
    assert run_main(["import-telephone-game", layout, sweep_dir, "--generator", "bagel",
                     "--captioner", "bagel"]) == 0
    runs = {read_run(d).info["telephone_game"]["filename"]: read_run(d)
            for d in (sweep_dir / "runs").iterdir()}
    assert set(runs) == set(written)
    barn = runs["1.png"]  # text-first: the prompt, then images and captions
    assert barn.config["start_prompt"] == QUOTED
    assert [r.caption for r in barn.records] == [None, QUOTED, f"{QUOTED} then 4, \"1\""]
    assert [r.image is not None for r in barn.records] == [True, True, False]
    docci = runs["test_01234.png"]  # image-first: captions then images
    assert [r.caption for r in docci.records] == [QUOTED, f"{QUOTED} then 3, \"1\""]
    assert barn.config["models"]["generator"] == "bagel"

    again = tmp_path / "again"
    assert run_main(["export", sweep_dir, "--telephone-game", again]) == 0
    for chain in ("text-first", "image-first"):
        for path in sorted((layout / chain).glob("gen-*.csv")):
            ours = their_csv(again / chain / path.name)
            assert ours == their_csv(path), path.name  # every caption exact
        for folder in sorted(p for p in (layout / chain).iterdir() if p.is_dir()):
            for image in folder.iterdir():
                from PIL import Image

                with Image.open(image) as theirs, \
                        Image.open(again / chain / folder.name / f"{image.stem}.png") as ours:
                    assert ours.size == theirs.size
                    assert ours.convert("RGB").tobytes() == theirs.convert("RGB").tobytes()


def test_report_on_an_imported_sweep_names_its_chains_and_what_is_missing(tmp_path, capsys):
    pytest.importorskip("sklearn")
    layout = tmp_path / "layout"
    write_layout(layout)
    sweep_dir = tmp_path / "imported"
    assert run_main(["import-telephone-game", layout, sweep_dir]) == 0
    capsys.readouterr()
    assert run_main(["report", sweep_dir]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    for name in ("text-first/0.png", "text-first/1.png", "text-first/2.png",
                 "image-first/0013ea2087020901.jpg", "image-first/test_01234.png"):
        assert name in out
    assert "No similarities recorded" in out and "truthloop measure" in out
    # Chains of a fixed length: counted as chains, never as runs that did not converge.
    assert out.splitlines()[0] == ("5 chains of 4 generations each (--generations: fixed "
                                   "length, no stop at a repeat)")
    assert "converged" not in out
    page = (sweep_dir / "report" / "report.html").read_text()
    assert "Imported chains" in page and "image-first/test_01234.png" in page
    assert "<b>bold</b>" not in page  # the caption's markup is text on the page
    runs = list(csv.DictReader(io.StringIO((sweep_dir / "report/tables/runs.csv").read_text())))
    assert len(runs) == 5 and {r["state"] for r in runs} == {"max_iters"}


# -- bad layouts ------------------------------------------------------------------------------------
def _drop(path: Path) -> None:
    import shutil

    shutil.rmtree(path) if path.is_dir() else path.unlink()


BAD = {
    "no such folder": (lambda root: _drop(root), "no such folder"),
    "no chain folders": (lambda root: [_drop(root / c) for c in ("text-first", "image-first")],
                         "has no text-first/ or image-first/"),
    "a missing generation": (lambda root: _drop(root / "text-first/gen-3"),
                             "gen-3 is missing"),
    "a folder where a csv belongs": (
        lambda root: (_drop(root / "image-first/gen-3.csv"),
                      (root / "image-first/gen-3").mkdir()), "holds captions, as a csv file"),
    "a csv without the columns": (
        lambda root: (root / "text-first/gen-2.csv").write_text("name,text\n0.png,x\n"),
        "no header with the columns filename and caption"),
    "a chain missing from a csv": (
        lambda root: (root / "text-first/gen-4.csv").write_text(
            "filename,caption\n0.png,x\n1.png,y\n"), "has no row for '2.png'"),
    "a missing image": (lambda root: _drop(root / "image-first/gen-2/test_01234.png"),
                        "has no image of 'test_01234.png'"),
    "an image that does not decode": (
        lambda root: (root / "text-first/gen-3/1.png").write_bytes(b"not a png"),
        "1.png"),
    "a csv that is not UTF-8": (
        lambda root: (root / "image-first/gen-1.csv").write_bytes(
            b"filename,caption\n0013ea2087020901.jpg,caf\xe9\ntest_01234.png,x\n"),
        "is not UTF-8 text (line 2)"),
    "a name twice": (
        lambda root: (root / "text-first/gen-0.csv").write_text(
            "filename,caption\n0.png,x\n0.png,y\n2.png,z\n"), "'0.png' is there twice"),
    "lengths that differ": (lambda root: _drop(root / "image-first/gen-4"),
                            "text-first has 4 generations and image-first 3"),
}


@pytest.mark.parametrize("damage", list(BAD))
def test_a_bad_layout_is_one_line_and_writes_nothing(tmp_path, capsys, damage):
    layout = tmp_path / "layout"
    write_layout(layout)
    spoil, needle = BAD[damage]
    spoil(layout)
    sweep_dir = tmp_path / "imported"
    assert run_main(["import-telephone-game", layout, sweep_dir]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, needle)
    assert not sweep_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_import_into_a_folder_in_use_is_refused(tmp_path, capsys):
    layout = tmp_path / "layout"
    write_layout(layout)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert run_main(["import-telephone-game", layout, taken]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "not empty")
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert run_main(["import-telephone-game", layout / "text-first", tmp_path / "new"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "is one chain folder")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_app_shows_a_finished_chain_as_its_generations_not_as_no_repeat(tmp_path):
    from tui.app import TruthLoopApp
    from tui_helpers import screen_text, wait_for

    config = RunConfig()
    config.loop.generations = 4  # from a prompt: 3 records, the last a caption
    config.start_prompt = "a1"
    TruthLoop(config, tmp_path / "run", sweep_fakes.attractor_factory).run()
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "max_iters")
        text = screen_text(app)
        assert "CHAIN DONE" in text and "its 4 generations (--generations" in text, text
        assert "3/3 done" in text, text  # the chain's records, not --max-iters' 1000
        assert "NO REPEAT" not in text and "resume --max-iters" not in text
        assert "✔ chain done" in text and "max iterations" not in text  # the status line
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)


def test_a_grid_exports_one_layout_per_point_and_each_imports(tmp_path, scripted, in_process,
                                                             capsys):
    sweep_dir = fixed_sweep(tmp_path, 4, "--grid", "clauses=0,1")
    out = tmp_path / "layouts"
    assert run_main(["export", sweep_dir, "--telephone-game", out]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clauses-0", "clauses-1"]
    for point in out.iterdir():
        assert [r["filename"] for r in their_csv(point / "text-first/gen-0.csv")] == \
            ["0.png", "1.png", "2.png"]
        assert len(list((point / "image-first/gen-0").iterdir())) == 2
    assert run_main(["import-telephone-game", out / "clauses-1", tmp_path / "one"]) == 0
    assert len(list((tmp_path / "one/runs").iterdir())) == 5
