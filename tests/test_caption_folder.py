"""`truthloop caption PATH...` (issue 31, item 4): a .txt beside each image or one CSV / JSONL,
resumable after a kill, bad images named and skipped, bad input one line before any model loads.

The captioner is the tiny BLIP through the run's own loading path where the model matters; the
walking, resuming and writing are also driven with a fake captioner (a function of the image's
pixels) where every cut point of a file is tried."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from truthloop.caption_folder import (
    PARTIAL_SUFFIX, Progress, caption_all, find_images, open_output,
)
from truthloop.cli import main
from truthloop.images import load_input_image

TINY_BLIP = ["--models", "tiny", "--captioner", "blip"]


def make_images(root: Path, names: list[str], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


NESTED = ["top.png", "a/one.png", "a/two.jpg", "a/b/three.png", "a/b/c/four.webp",
          "z/five.png"]


def files_under(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too), by relative name: what a user would find."""
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def count_captions(monkeypatch):
    """How many images the tiny family captioner was asked about, one at a time and batched."""
    from truthloop.ml.families.captioning import FamilyCaptioner

    calls = {"one": 0, "batched": [], "loads": 0}
    one, batched = FamilyCaptioner.caption, FamilyCaptioner.caption_batch

    def caption(self, image):
        calls["one"] += 1
        return one(self, image)

    def caption_batch(self, images):
        calls["batched"].append(len(images))
        return batched(self, images)

    from truthloop.ml import backends

    load = backends.load_captioner_side

    def counted_load(*args, **kwargs):
        calls["loads"] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(FamilyCaptioner, "caption", caption)
    monkeypatch.setattr(FamilyCaptioner, "caption_batch", caption_batch)
    monkeypatch.setattr(backends, "load_captioner_side", counted_load)
    return calls


# -- with the tiny checkpoints ------------------------------------------------------------------
def test_a_txt_beside_each_image_in_nested_folders_is_the_captioners_caption(tmp_path, capsys):
    from truthloop.cli import build_parser, config_from_args
    from truthloop.ml.backends import load_captioner_side

    paths = make_images(tmp_path / "photos", NESTED)
    (tmp_path / "photos" / "a" / "notes.md").write_text("not an image")
    code, out, err = run(["caption", str(tmp_path / "photos"), *TINY_BLIP], capsys)
    assert code == 0, err
    assert out.startswith("captioned 6 images, 0 already captioned")
    assert out.strip().endswith("captions beside the images")
    config = config_from_args(build_parser().parse_args(["caption", "x", *TINY_BLIP]))
    captioner, _ = load_captioner_side(config, lambda event: None)
    for path in paths:
        written = path.with_suffix(".txt").read_text(encoding="utf-8")
        assert written == captioner.caption(load_input_image(path))
        assert written.strip()
    after = files_under(tmp_path / "photos")
    assert set(after) == {name for name in NESTED} | {
        str(Path(name).with_suffix(".txt").as_posix()) for name in NESTED} | {"a/notes.md"}
    assert not any(PARTIAL_SUFFIX in name for name in after)


def test_csv_and_jsonl_hold_the_same_captions_by_path_under_the_folder(tmp_path, capsys):
    make_images(tmp_path / "photos", NESTED)
    shutil.copytree(tmp_path / "photos", tmp_path / "beside")
    assert run(["caption", str(tmp_path / "beside"), *TINY_BLIP], capsys)[0] == 0
    table = tmp_path / "captions.csv"
    code, out, _ = run(["caption", str(tmp_path / "photos"), *TINY_BLIP, "--format", "csv",
                        "--out", str(table)], capsys)
    assert code == 0 and out.strip().endswith(f"captions in {table}")
    lines = tmp_path / "captions.jsonl"  # the format from the name
    assert run(["caption", str(tmp_path / "photos"), *TINY_BLIP, "--out", str(lines)],
               capsys)[0] == 0
    expected = [(name, (tmp_path / "beside" / name).with_suffix(".txt").read_text("utf-8"))
                for name in sorted(NESTED)]
    with open(table, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["filename", "caption"]
    assert [tuple(row) for row in rows[1:]] == expected
    records = [json.loads(line) for line in lines.read_text("utf-8").splitlines()]
    assert [(r["filename"], r["caption"]) for r in records] == expected
    assert not list((tmp_path / "photos").rglob("*.txt"))  # a table writes nothing beside


def test_a_rerun_captions_only_what_is_missing(tmp_path, capsys, count_captions):
    paths = make_images(tmp_path / "photos", NESTED)
    assert run(["caption", str(tmp_path / "photos"), *TINY_BLIP], capsys)[0] == 0
    assert count_captions["one"] == 6
    first = files_under(tmp_path / "photos")
    for path in (paths[1], paths[4]):
        path.with_suffix(".txt").unlink()
    code, out, _ = run(["caption", str(tmp_path / "photos"), *TINY_BLIP], capsys)
    assert code == 0 and out.startswith("captioned 2 images, 4 already captioned")
    assert count_captions["one"] == 8
    assert files_under(tmp_path / "photos") == first
    # Done: nothing captioned, and no model loaded to find that out.
    loads = count_captions["loads"]
    code, out, _ = run(["caption", str(tmp_path / "photos"), *TINY_BLIP], capsys)
    assert code == 0 and out.startswith("captioned 0 images, 6 already captioned")
    assert count_captions["one"] == 8 and count_captions["loads"] == loads


def test_batch_uses_the_family_batch_in_batches_fixed_by_position(tmp_path, capsys,
                                                                   count_captions):
    make_images(tmp_path / "photos", [f"{i:02d}.png" for i in range(7)])
    code, _, err = run(["caption", str(tmp_path / "photos"), *TINY_BLIP, "--batch", "3"],
                       capsys)
    assert code == 0, err
    assert count_captions["batched"] == [3, 3] and count_captions["one"] == 1  # 3 + 3 + 1
    first = files_under(tmp_path / "photos")
    (tmp_path / "photos" / "04.txt").unlink()
    assert run(["caption", str(tmp_path / "photos"), *TINY_BLIP, "--batch", "3"],
               capsys)[0] == 0
    # 04's batch (03, 04, 05) is captioned whole, as the unbroken run captioned it.
    assert count_captions["batched"] == [3, 3, 3] and count_captions["one"] == 1
    assert files_under(tmp_path / "photos") == first


def test_bad_images_are_named_one_line_each_and_the_rest_captioned(tmp_path, capsys,
                                                                    count_captions):
    photos = tmp_path / "photos"
    good = make_images(photos, ["a.png", "sub/b.png", "sub/c.jpg"])
    whole = good[0].read_bytes()
    (photos / "sub" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (photos / "text.png").write_text("this is not a picture")
    (photos / "sub" / "empty.jpg").write_bytes(b"")
    code, out, err = run(["caption", str(photos), *TINY_BLIP], capsys)
    assert code == 1
    skipped = [line for line in err.splitlines() if line.startswith("truthloop: skipped:")]
    assert len(skipped) == 3
    for name in ("cut.png", "text.png", "empty.jpg"):
        assert sum(name in line for line in skipped) == 1
    assert out.startswith("captioned 3 images, 0 already captioned, 3 bad images")
    assert all(path.with_suffix(".txt").is_file() for path in good)
    assert not (photos / "text.txt").exists() and not (photos / "sub" / "cut.txt").exists()
    # Named again on a rerun, without loading a model: nothing else is left to caption.
    loads = count_captions["loads"]
    code, out, err = run(["caption", str(photos), *TINY_BLIP], capsys)
    assert code == 1 and out.startswith("captioned 0 images, 3 already captioned, 3 bad")
    assert err.count("truthloop: skipped:") == 3 and count_captions["loads"] == loads


@pytest.mark.parametrize("argv, says", [
    (["{d}/nowhere"], "nowhere: no such file or folder"),
    (["{d}/empty"], "no images in"),
    (["{d}/photos/notes.md"], "is not named as an image"),
    (["{d}/photos", "--format", "csv"], "--format csv writes one file: name it with --out"),
    (["{d}/photos", "--out", "{d}/captions.txt"], "say --format csv or --format jsonl"),
    (["{d}/photos", "--format", "txt", "--out", "{d}/c.csv"], "--out is for --format csv"),
    (["{d}/photos", "--out", "{d}/missing/c.csv"], "no such folder"),
    (["{d}/photos", "--out", "{d}/foreign.csv"], "is not a caption table"),
    (["{d}/photos", "--out", "{d}/foreign.jsonl"], "line 1: not a"),
    (["{d}/photos", "--batch", "0"], "--batch must be 1 or more"),
    (["{d}/photos", "--mode", "fast"], "--mode is clip-interrogator's"),
    (["{d}/photos", "--models", "real", "--clip-model", "ViT-B-32/openai"],
     "--clip-model is clip-interrogator's"),
    (["{d}/photos", "--caption-model", "x"], "--caption-model chooses a checkpoint"),
    (["{d}/twins"], "would both be captioned in"),
    (["{d}/photos", "--instruction", "Describe."], "--instruction is for the vision-language"),
    (["{d}/photos", "--models", "real", "--caption-model", "{d}/no-checkpoint"],
     "no-checkpoint': no such directory"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_model_loads(tmp_path, capsys, monkeypatch,
                                                                 argv, says):
    from truthloop.ml import backends

    def no_loading(*args, **kwargs):
        raise AssertionError("a model loaded for bad input")

    monkeypatch.setattr(backends, "load_captioner_side", no_loading)
    make_images(tmp_path / "photos", ["a.png"])
    (tmp_path / "photos" / "notes.md").write_text("x")
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    make_images(tmp_path / "twins", ["same.png", "same.jpg"])
    (tmp_path / "foreign.csv").write_text("name,text\nx,y\n")
    (tmp_path / "foreign.jsonl").write_text('["a list"]\n')
    before = files_under(tmp_path)
    argv = [part.format(d=tmp_path) for part in argv]
    code, out, err = run(["caption", *TINY_BLIP, *argv], capsys)  # argv's own options win
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("truthloop: error: ") and says in err
    assert files_under(tmp_path) == before


def test_a_local_caption_checkpoint_is_all_it_needs(tmp_path, capsys, monkeypatch):
    """--models real with the captioner's checkpoint on disk and nothing in the hub cache: no
    image model (nor, beside a family, a CLIP) is asked for."""
    from truthloop.ml.tiny import tiny_family_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub-cache"))
    make_images(tmp_path / "photos", ["a.png", "b/c.png"])
    code, out, err = run(["caption", str(tmp_path / "photos"), "--models", "real",
                          "--captioner", "blip", "--caption-model",
                          tiny_family_model("captioner", "blip")], capsys)
    assert code == 0, err
    assert out.startswith("captioned 2 images")


def test_a_kill_at_any_moment_then_the_same_command_gives_an_unbroken_runs_files(tmp_path,
                                                                                  capsys):
    """SIGKILL while captioning (once its n-th caption is on disk, n and a further pause of up
    to 50 ms drawn at random), then the same command: the files of a run never stopped, for a
    .txt per image and for a table."""
    names = [f"d{i % 3}/{i:02d}.png" for i in range(24)]
    make_images(tmp_path / "reference", names)
    assert run(["caption", str(tmp_path / "reference"), *TINY_BLIP], capsys)[0] == 0
    assert run(["caption", str(tmp_path / "reference"), *TINY_BLIP, "--out",
                str(tmp_path / "reference.csv")], capsys)[0] == 0
    reference = files_under(tmp_path / "reference")
    reference_table = (tmp_path / "reference.csv").read_bytes()
    chance = random.Random(31)
    for table in (False, True):
        photos = tmp_path / f"killed-{table}"
        make_images(photos, names)
        out = ["--out", str(tmp_path / f"killed-{table}.csv")] if table else []

        def written() -> int:
            if table:
                path = Path(out[1])
                return path.read_bytes().count(b"\n") - 1 if path.exists() else 0
            return len(list(photos.rglob("*.txt")))

        command = [sys.executable, "-c", "from truthloop.cli import entry_point; entry_point()",
                   "caption", str(photos), *TINY_BLIP, *out]
        target = chance.randint(1, len(names) // 2)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600  # a hang guard, not a timing
        while process.poll() is None and time.monotonic() < deadline and written() < target:
            time.sleep(0.01)
        time.sleep(chance.random() * 0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL  # killed mid-folder, not finished
        left_off = written()
        assert target <= left_off < len(names)
        code, out_line, err = run(["caption", str(photos), *TINY_BLIP, *out], capsys)
        assert code == 0, err
        assert f"{left_off} already captioned" in out_line
        if table:
            assert Path(out[1]).read_bytes() == reference_table
            assert files_under(photos) == {name: data for name, data in reference.items()
                                           if name.endswith(".png")}
        else:
            assert files_under(photos) == reference


# -- the walking and writing, with a fake captioner ---------------------------------------------
TRICKY = ["[bold red]boom[/]", 'a, "quoted", caption', "two\nlines", "carriage\rreturn",
          "\x1b[31mescape", "naïve café 東京 🙂", "", "  spaced  "]


class FakeCaptioner:
    """A caption that is a function of the image's pixels, from TRICKY; counts the images."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, images):
        self.calls.append(len(images))
        return [TRICKY[int(np.asarray(image).sum()) % len(TRICKY)] for image in images]


def caption_folder(root: Path, form: str = "txt", out: Path | None = None, batch: int = 1,
                   captioner: FakeCaptioner | None = None):
    images = find_images([str(root)])
    output = open_output(images, form, str(out) if out else None)
    captioner = captioner or FakeCaptioner()
    stream = io.StringIO()
    try:
        tally = caption_all(images, output, captioner, batch, Progress(stream, every=0),
                            load_input_image)
    finally:
        output.close()
    return tally, captioner, stream.getvalue()


@pytest.mark.parametrize("form", ["csv", "jsonl"])
def test_a_table_cut_at_every_byte_resumes_to_the_whole_table(tmp_path, form):
    """A kill can leave any prefix of the table (records are only appended): from each one,
    the next run gives the unbroken table, captioning only the images not whole in it."""
    make_images(tmp_path / "photos", [f"{i}/{name}" for i, name in
                                      enumerate(["a.png", "b,c.png", 'q"d.png', "e.png"])] +
                ["f.png", "g.png", "h.png", "i.png"], seed=3)
    table = tmp_path / f"captions.{form}"
    caption_folder(tmp_path / "photos", form, table)
    whole = table.read_bytes()
    images = len(find_images([str(tmp_path / "photos")]))
    done_at = []  # the images whole in each prefix, as the file says
    for cut in range(len(whole)):
        table.write_bytes(whole[:cut])
        tally, captioner, _ = caption_folder(tmp_path / "photos", form, table)
        assert table.read_bytes() == whole, cut
        assert sum(captioner.calls) == tally.captioned == images - tally.done_before
        done_at.append(tally.done_before)
    assert done_at[0] == 0 and done_at[-1] == images - 1 and sorted(done_at) == done_at


def test_tables_and_txt_hold_captions_verbatim(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, [f"{i:02d}.png" for i in range(24)], seed=5)
    _, captioner, _ = caption_folder(photos)
    caption_folder(photos, "csv", tmp_path / "c.csv")
    caption_folder(photos, "jsonl", tmp_path / "c.jsonl")
    expected = {}
    for path in sorted(photos.glob("*.png")):
        caption = captioner([load_input_image(path)])[0]
        expected[path.name] = caption
        assert path.with_suffix(".txt").read_bytes() == caption.encode("utf-8")
    assert len(set(expected.values())) > 4  # the tricky ones are among them
    with open(tmp_path / "c.csv", newline="", encoding="utf-8") as file:
        assert dict(list(csv.reader(file))[1:]) == expected
    lines = (tmp_path / "c.jsonl").read_text("utf-8").splitlines()
    assert {json.loads(line)["filename"]: json.loads(line)["caption"] for line in lines} \
        == expected
    assert len(lines) == 24  # one line each, a newline in a caption included


def test_a_partial_txt_a_kill_left_is_replaced_and_gone(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, ["a.png", "b.png"])
    caption_folder(photos)
    whole = files_under(photos)
    (photos / "b.txt").unlink()
    (photos / f".b.txt{PARTIAL_SUFFIX}").write_bytes(b"half a capt")
    tally, _, _ = caption_folder(photos)
    assert tally.captioned == 1 and files_under(photos) == whole


def test_batches_are_fixed_by_position_and_an_unfinished_one_is_captioned_whole(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, [f"{i}.png" for i in range(7)])
    tally, captioner, _ = caption_folder(photos, batch=3)
    assert captioner.calls == [3, 3, 1] and tally.captioned == 7
    whole = files_under(photos)
    (photos / "1.txt").unlink()
    (photos / "6.txt").unlink()
    tally, captioner, _ = caption_folder(photos, batch=3)
    assert captioner.calls == [3, 1] and tally.captioned == 2 and tally.done_before == 5
    assert files_under(photos) == whole


def test_images_are_found_recursively_by_name_hidden_ones_passed_over(tmp_path):
    make_images(tmp_path / "set", ["b.png", "A/c.JPG", ".cache/x.png", "A/.y.png", "A/B/d.tiff"])
    (tmp_path / "set" / "e.txt").write_text("caption")
    (tmp_path / "other").mkdir()
    make_images(tmp_path / "other", ["f.png"])
    names = [image.name for image in find_images([str(tmp_path / "set")])]
    assert names == ["A/B/d.tiff", "A/c.JPG", "b.png"]
    # Several paths: names under the folder they share; the same file once.
    both = find_images([str(tmp_path / "set"), str(tmp_path / "other" / "f.png"),
                        str(tmp_path / "set" / "b.png")])
    assert [image.name for image in both] == ["other/f.png", "set/A/B/d.tiff", "set/A/c.JPG",
                                              "set/b.png"]


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, ["a.png", "b.png", "c.png"])
    (photos / "[bold]d.png").write_text("not an image")
    _, _, shown = caption_folder(photos)
    lines = shown.splitlines()
    assert lines[0] == "captioning 4 images"
    assert any(line.startswith("truthloop: skipped:") and "[bold]d.png" in line
               for line in lines)
    assert any(line.startswith("2/4 images") and "left" in line for line in lines)
    assert "\x1b" not in shown

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for path in photos.glob("*.txt"):
        path.unlink()
    images = find_images([str(photos)])
    output = open_output(images, "txt", None)
    terminal = Terminal()
    progress = Progress(terminal)
    caption_all(images, output, FakeCaptioner(), 1, progress, load_input_image)
    progress.close()
    drawn = terminal.getvalue()
    assert "\x1b[" in drawn and "4/4" in drawn  # Rich's bar, drawn to the end
    assert "[bold]d.png" in drawn  # a file name is text, never markup


def test_the_command_imports_no_torch_until_a_model_is_needed(tmp_path):
    """A finished folder is checked without importing torch (the core needs none)."""
    photos = tmp_path / "photos"
    make_images(photos, ["a.png"])
    (photos / "a.txt").write_text("done")
    code = ("import sys; from truthloop.cli import main; "
            f"rc = main(['caption', {str(photos)!r}, '--models', 'tiny']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("captioned 0 images, 1 already captioned")
