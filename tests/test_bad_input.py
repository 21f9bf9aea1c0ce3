"""Bad and odd input: every error is one clear line with a non-zero exit, no traceback, nothing left
that a later run trips on; odd-but-valid images load; untrusted caption text is stored faithfully
and printed literally."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fakes
from faulthelpers import (
    SCRIPT, assert_one_clean_error_line, cli_subprocess, count_loads, fake_start_png, run_main,
    use_fakes,
)
from truthloop.images import MAX_SIDE, BadImage, load_input_image
from truthloop.store import read_run
from truthloop.text import visible


# -- building odd files cheaply ----------------------------------------------------------------
def _noise(size=(64, 48), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    channels = 1 if mode == "L" else 4 if mode in ("RGBA", "CMYK") else 3
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    return image.convert(mode) if mode == "CMYK" else image


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR claims width×height (CRC fixed): a bomb without the pixels."""
    data = bytearray(_png_bytes(Image.new("1", (1, 1))))
    # signature (8) | length (4) | "IHDR" (4) | width (4) | height (4) | ... | crc after 13 bytes
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _exif_rotated_jpeg(path: Path) -> None:
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    image.paste((0, 0, 200), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def _animated_gif(path: Path) -> None:
    frames = [Image.new("P", (16, 16), colour) for colour in (1, 2, 3)]
    for frame, rgb in zip(frames, ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        palette = [0] * 768
        palette[3 * frame.getpixel((0, 0)):3 * frame.getpixel((0, 0)) + 3] = rgb
        frame.putpalette(palette)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


# -- bad start images, through the CLI --------------------------------------------------------
def _bad_images(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a fragment of the expected message)."""
    cases = {}

    def put(name, data, message, filename=None):
        path = tmp / (filename or f"{name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases[name] = (path, message)

    cases["missing"] = (tmp / "nope.png", "no such file")
    (tmp / "a-directory.png").mkdir(parents=True, exist_ok=True)
    cases["directory"] = (tmp / "a-directory.png", "is a directory")
    put("empty", b"", "empty (0 bytes)")
    put("text-named-png", b"hello, I am not a picture\n" * 20, "not an image")
    good_png = _png_bytes(_noise((256, 256)))
    put("truncated-png", good_png[: len(good_png) // 3], "truncated or corrupt")
    buffer = io.BytesIO()
    _noise((256, 256)).save(buffer, format="JPEG", quality=90)
    put("truncated-jpeg", buffer.getvalue()[: len(buffer.getvalue()) // 2], "truncated or corrupt",
        filename="truncated.jpg")
    put("header-only-png", good_png[:40], "")
    put("bomb-30000", png_with_header_size(30000, 30000), "decompression bomb")
    put("bomb-20000", png_with_header_size(20000, 20000), "decompression bomb")  # 1-2× the limit
    put("garbage-after-signature", b"\x89PNG\r\n\x1a\n" + os.urandom(200), "")
    cases["missing-escape-name"] = (tmp / "\x1b[31mred\x1b[0m.png", "\\x1b[31m")
    return cases


BAD_IMAGE_NAMES = ["missing", "directory", "empty", "text-named-png", "truncated-png",
                   "truncated-jpeg", "header-only-png", "bomb-30000", "bomb-20000",
                   "garbage-after-signature", "missing-escape-name"]


@pytest.mark.parametrize("name", BAD_IMAGE_NAMES)
def test_bad_start_image_is_one_line(tmp_path, name):
    path, message = _bad_images(tmp_path / "inputs")[name]
    runs = tmp_path / "runs"
    done = cli_subprocess(["run", path, "--headless", "--runs-dir", runs, "--models", "tiny"],
                          timeout=60)
    assert done.returncode == 2, done.stderr
    line = assert_one_clean_error_line(done.stderr, message)
    assert visible(str(path)) in line  # names the file
    assert not runs.exists() or not list(runs.iterdir())  # nothing a later run trips on
    assert done.stdout == ""


@pytest.mark.parametrize("name", ["missing", "directory", "empty", "text-named-png",
                                  "truncated-png", "truncated-jpeg", "bomb-30000", "bomb-20000"])
def test_bad_start_image_loader(tmp_path, name):
    path, message = _bad_images(tmp_path)[name]
    with pytest.raises(BadImage) as caught:
        load_input_image(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# -- bad options -------------------------------------------------------------------------------
BAD_OPTIONS = {
    "negative-steps": (["--steps", "-3"], "--steps must be 1 or more"),
    "zero-steps": (["--steps", "0"], "--steps"),
    "steps-not-a-number": (["--steps", "many"], "invalid int value"),
    "width-not-multiple-of-8": (["--width", "100"], "multiple of 8"),
    "zero-height": (["--height", "0"], "--height"),
    "unknown-scheduler": (["--scheduler", "warp"], "invalid choice: 'warp'"),
    "unknown-mode": (["--mode", "turbo"], "invalid choice: 'turbo'"),
    "unknown-seed-mode": (["--seed-mode", "chaos"], "invalid choice"),
    "unknown-device": (["--device", "tpu"], "invalid choice"),
    "unknown-preset": (["--preset", "nope"], "invalid choice"),
    "nan-guidance": (["--guidance", "nan"], "--guidance"),
    "negative-seed": (["--seed", "-1"], "--seed"),
    "zero-max-iters": (["--max-iters", "0"], "--max-iters"),
    "negative-clauses": (["--clauses", "-1"], "--clauses"),
    "unknown-option": (["--frobnicate"], "unrecognized arguments"),
    "image-and-prompt": (["--prompt", "a cat"], "not both"),
    "compile-with-low-vram": (["--compile", "--low-vram"], "--compile and --low-vram"),
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_bad_option_is_one_line(tmp_path, name):
    args, message = BAD_OPTIONS[name]
    start = fake_start_png(tmp_path / "start.png")
    runs = tmp_path / "runs"
    done = cli_subprocess(["run", start, "--headless", "--runs-dir", runs, *args], timeout=60)
    assert done.returncode == 2, done.stderr
    assert_one_clean_error_line(done.stderr, message)
    assert not runs.exists() or not list(runs.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["run", "--headless"], "give a start image"),
    (["run", "--headless", "--prompt", "   "], "--prompt is empty"),
    (["resume", "/nonexistent/run", "--headless"], "no such run directory"),
    (["resume", ".", "--headless"], "not a truthloop run directory"),
    (["bogus-command"], "invalid choice"),
])
def test_bad_command_lines(tmp_path, argv, message):
    done = cli_subprocess(argv, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert_one_clean_error_line(done.stderr, message)


# -- where the run goes ----------------------------------------------------------------------
def _out_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    afile = tmp / "a-file"
    afile.write_text("x")
    cases = {
        "out-is-a-file": (afile, "not a directory"),
        "out-under-a-file": (afile / "run", "cannot create run directory"),
        "out-under-proc": (Path("/proc/truthloop-test/run"), "cannot create run directory"),
    }
    if os.geteuid() != 0:  # root writes through a chmod; a read-only dir only stops others
        locked = tmp / "read-only"
        locked.mkdir()
        locked.chmod(0o500)
        cases["out-in-read-only-dir"] = (locked / "run", "Permission denied")
    return cases


@pytest.mark.parametrize("name", ["out-is-a-file", "out-under-a-file", "out-under-proc",
                                  "out-in-read-only-dir"])
def test_unwritable_output(tmp_path, name):
    cases = _out_cases(tmp_path)
    if name not in cases:
        pytest.skip("running as root: a read-only directory does not stop root's writes")
    out, message = cases[name]
    start = fake_start_png(tmp_path / "start.png")
    done = cli_subprocess(["run", start, "--headless", "--out", out, "--models", "tiny"],
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert_one_clean_error_line(done.stderr, message)
    if name == "out-in-read-only-dir":
        assert list(out.parent.iterdir()) == []


# -- refused before any model loads (issue 30) -------------------------------------------------
@pytest.fixture
def loader(monkeypatch):
    return count_loads(monkeypatch)  # == [] while no model was ever loaded


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline (the hub reads both once, at import)."""
    import huggingface_hub.constants

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub


def _only_error_line(stderr: str, *needles: str) -> str:
    """stderr is the one error line and nothing else: no note, no progress of a load begun."""
    line = assert_one_clean_error_line(stderr, *needles)
    assert stderr.strip() == line, stderr
    return line


def test_missing_models_are_all_named_before_anything_is_written(tmp_path):
    """A bad hub id on an offline machine: one line naming it and every other model the run
    would load that is not here, each with its `hf download`; no run directory; no load begun
    (the subprocess's stderr has no device note, no progress)."""
    runs = tmp_path / "runs"
    done = cli_subprocess(["run", "--prompt", "a cat", "--headless", "--runs-dir", runs,
                           "--generator-model", "nosuchorg/nosuchmodel"],
                          env={"HF_HOME": str(tmp_path / "empty-hf")}, timeout=120)
    assert done.returncode == 2, done.stderr
    _only_error_line(done.stderr, "image model 'nosuchorg/nosuchmodel'",
                     "caption model 'blip-large'", "CLIP 'ViT-L-14/openai'",
                     "are not in the Hugging Face cache", "`hf download nosuchorg/nosuchmodel`",
                     "`hf download Salesforce/blip-image-captioning-large`",
                     "`hf download timm/vit_large_patch14_clip_224.openai`")
    assert not runs.exists()


def test_a_missing_local_directory_and_an_id_not_on_the_hub(tmp_path, capsys, loader,
                                                           empty_hub, monkeypatch):
    """Each model says what is wrong with it, in the one line: a directory that is not there;
    an id the hub (reachable here, a stand-in) does not know, while the others download."""
    import httpx2
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def model_info(self, repo, **kwargs):
        asked.append(repo)
        if repo.startswith("nosuchorg/"):
            request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo}")
            raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=request))
        return object()

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    runs = tmp_path / "runs"
    assert run_main(["run", "--prompt", "a cat", "--headless", "--runs-dir", runs,
                     "--generator-model", "nosuchorg/nosuchmodel",
                     "--caption-model", tmp_path / "no-such-dir"]) == 2
    line = _only_error_line(capsys.readouterr().err, "no-such-dir': no such directory",
                            "image model 'nosuchorg/nosuchmodel' is not on the Hugging Face hub")
    assert "CLIP" not in line  # on the hub: downloadable, so not named
    assert sorted(asked) == ["nosuchorg/nosuchmodel", "timm/vit_large_patch14_clip_224.openai"]
    assert not runs.exists() and loader == []


def test_models_in_the_hub_cache_pass_the_check(tmp_path, capsys, loader, empty_hub):
    """The check refuses only what is missing: every default checkpoint in the hub cache (as
    `hf download` leaves it) and the run goes on to load them."""
    from truthloop.model_ids import CLIP_HUB_IDS, DEFAULT_CAPTION_MODEL, DEFAULT_CLIP_MODEL
    from truthloop.model_ids import CAPTION_MODEL_IDS, DEFAULT_SD_MODEL

    for repo, marker in ((DEFAULT_SD_MODEL, "model_index.json"),
                         (CAPTION_MODEL_IDS[DEFAULT_CAPTION_MODEL], "config.json"),
                         (CLIP_HUB_IDS[DEFAULT_CLIP_MODEL], "open_clip_model.safetensors")):
        folder = empty_hub / ("models--" + repo.replace("/", "--"))
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("0" * 40)
        (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
        (folder / "snapshots" / ("0" * 40) / marker).write_text("{}")
    out = tmp_path / "run"
    assert run_main(["run", "--prompt", "a cat", "--headless", "--out", out,
                     "--max-iters", "2"]) == 0, capsys.readouterr().err
    assert len(loader) == 1 and len(read_run(out).records) == 2


def test_fp8_where_it_cannot_run_is_refused_before_loading(tmp_path, capsys, loader):
    from truthloop.ml.fp8 import fp8_refusal
    from truthloop.ml.models import pick_device

    if fp8_refusal(pick_device("auto")) is None:
        pytest.skip("this machine can draw in float8")
    runs = tmp_path / "runs"
    assert run_main(["demo", "--fp8", "--headless", "--max-iters", "4", "--runs-dir", runs]) == 2
    _only_error_line(capsys.readouterr().err, "--fp8 needs an NVIDIA GPU of compute capability "
                     "8.9 or newer", "leave --fp8 out")
    if pick_device("auto") != "cuda":  # likewise a GPU asked for where there is none
        assert run_main(["demo", "--device", "cuda", "--headless", "--runs-dir", runs]) == 2
        _only_error_line(capsys.readouterr().err, "--device cuda was asked for but no CUDA GPU")
    assert not runs.exists() and loader == []


@pytest.mark.parametrize("argv, flags", [
    (["demo", "--clip-model", "ViT-B-32/openai", "--caption-model", "/nonexistent"],
     "--caption-model and --clip-model choose checkpoints"),
    (["run", "--prompt", "a cat", "--models", "tiny", "--generator-model", "org/model"],
     "--generator-model chooses a checkpoint"),
])
def test_checkpoints_under_tiny_models_are_refused(tmp_path, capsys, loader, argv, flags):
    """--models tiny swaps every model: a checkpoint option would be ignored, so it is refused
    (with --models real it is honoured)."""
    runs = tmp_path / "runs"
    assert run_main([*argv, "--headless", "--runs-dir", runs]) == 2
    _only_error_line(capsys.readouterr().err, flags, "this run's --models is tiny",
                     "or add --models real")
    assert not runs.exists() and loader == []


def test_resume_past_its_max_iters_says_so_at_once(tmp_path, capsys, loader):
    """A run at its --max-iters: resume says which flag goes on, before loading anything, and
    writes nothing; with a higher --max-iters it goes on."""
    out = tmp_path / "run"
    assert run_main(["run", "--prompt", "step 0", "--models", "tiny", "--headless", "--out", out,
                     "--max-iters", "2"]) == 0
    assert len(loader) == 1
    files = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    capsys.readouterr()
    assert run_main(["resume", out, "--headless"]) == 2
    _only_error_line(capsys.readouterr().err, "already ran to its --max-iters 2 (2 iterations)",
                     "pass --max-iters with a number above 2")
    assert run_main(["resume", out, "--headless", "--max-iters", "2"]) == 2
    _only_error_line(capsys.readouterr().err, "--max-iters 2 is not above the 2 iterations",
                     "pass a number above 2")
    assert len(loader) == 1
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == files
    assert run_main(["resume", out, "--headless", "--max-iters", "3"]) == 0
    assert len(loader) == 2 and len(read_run(out).records) == 3


# -- odd but valid images ----------------------------------------------------------------------
def _valid_images(tmp: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    """name -> (path, the size the loader must return)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cases = {}

    def save(name, image, filename, size=None, **kwargs):
        path = tmp / filename
        image.save(path, **kwargs)
        cases[name] = (path, size or image.size)

    save("cmyk-jpeg", _noise((40, 30), "CMYK"), "cmyk.jpg", format="JPEG")
    sixteen = Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50))
    save("16-bit-png", sixteen, "sixteen.png")
    save("rgba", _noise((40, 30), "RGBA"), "rgba.png")
    save("palette", _noise((40, 30)).convert("P"), "palette.png")
    save("palette-transparent", _noise((40, 30)).convert("P"), "palette-t.png", transparency=0)
    save("grayscale", _noise((40, 30), "L"), "gray.png")
    save("grayscale-alpha", _noise((40, 30), "RGBA").convert("LA"), "la.png")
    save("one-bit", _noise((40, 30), "L").convert("1"), "bits.png")
    save("bmp", _noise((40, 30)), "picture.bmp")
    save("webp", _noise((40, 30)), "picture.webp")
    save("tiff-float", Image.fromarray(np.linspace(-1, 1, 1200, dtype=np.float32)
                                       .reshape(30, 40)), "float.tiff")
    save("huge", Image.new("RGB", (4096, 3072), (10, 20, 30)), "huge.png",
         size=(MAX_SIDE, MAX_SIDE * 3 // 4))
    _animated_gif(tmp / "animated.gif")
    cases["animated-gif"] = (tmp / "animated.gif", (16, 16))
    _exif_rotated_jpeg(tmp / "rotated.jpg")
    cases["exif-rotated"] = (tmp / "rotated.jpg", (20, 40))
    unicode_dir = tmp / "ünïcødé dir with spaces" / "日本語 ファイル"
    unicode_dir.mkdir(parents=True)
    save("unicode-path", _noise((40, 30)), "ünïcødé dir with spaces/日本語 ファイル/ä b.png")
    save("png-named-jpg", _noise((40, 30)), "actually-png.jpg", format="PNG")
    return cases


VALID_NAMES = ["cmyk-jpeg", "16-bit-png", "rgba", "palette", "palette-transparent", "grayscale",
               "grayscale-alpha", "one-bit", "bmp", "webp", "tiff-float", "huge", "animated-gif",
               "exif-rotated", "unicode-path", "png-named-jpg"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_odd_but_valid_image_loads_as_rgb(tmp_path, name):
    path, size = _valid_images(tmp_path)[name]
    image = load_input_image(path)
    assert image.mode == "RGB" and image.size == size
    if name == "animated-gif":
        assert image.getpixel((0, 0)) == (255, 0, 0)  # the first frame
    if name == "exif-rotated":
        top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
        assert top[2] > 150 and top[0] < 80, top  # turned 90° clockwise: the left (blue) half
        assert bottom[0] > 150 and bottom[2] < 80, bottom  # is on top, the red half below
    if name in ("rgba", "palette-transparent", "grayscale-alpha"):
        assert image.getextrema() != ((0, 0), (0, 0), (0, 0))
    if name == "16-bit-png":
        assert image.getextrema()[0][1] > 200  # scaled down from 16 bits, not clipped to 255


@pytest.mark.parametrize("name", ["exif-rotated", "cmyk-jpeg", "unicode-path", "huge"])
def test_odd_image_end_to_end_with_fake_models(monkeypatch, tmp_path, capsys, name):
    path, size = _valid_images(tmp_path / "in")[name]
    out = tmp_path / "out dir ✓" / "run"
    use_fakes(monkeypatch)
    assert run_main(["run", path, "--headless", "--out", out, "--max-iters", "2"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    view = read_run(out)
    assert view.config["input_image"] == str(path.resolve())
    with Image.open(out / "input.png") as stored:
        assert stored.size == size and stored.mode == "RGB"
    assert len(view.records) == 2


def test_odd_image_end_to_end_real_cli(tmp_path, truthloop_cache):
    """One real subprocess run on the tiny models: EXIF-rotated JPEG in a unicode path."""
    path, size = _valid_images(tmp_path / "in")["exif-rotated"]
    target = tmp_path / "in" / "ünï cødé" / "rotated photo.jpg"
    target.parent.mkdir(parents=True)
    path.rename(target)
    out = tmp_path / "out ✓"
    done = cli_subprocess(["run", target, "--models", "tiny", "--headless", "--out", out,
                           "--max-iters", "1", "--steps", "2", "--mode", "fast", "--width", "64",
                           "--height", "64"], timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    with Image.open(out / "input.png") as stored:
        assert stored.size == size
    assert len(read_run(out).records) == 1


def test_non_utf8_file_and_directory_names(monkeypatch, tmp_path, capsys):
    """Linux file names are bytes: a name that is not UTF-8 still runs, round-trips, prints."""
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \xff.png"
    fakes.start_image().save(raw.decode("utf-8", "surrogateescape"))
    path = os.fsdecode(raw)
    out = os.fsdecode(os.fsencode(tmp_path) + b"/out-\xff")
    use_fakes(monkeypatch)
    assert run_main(["run", path, "--headless", "--out", out, "--max-iters", "2"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "\\udcff" in captured.out
    assert read_run(Path(out)).config["input_image"] == str(Path(path).resolve())


def _fakes_accept_surrogates(monkeypatch):
    real = fakes._colour
    monkeypatch.setattr(fakes, "_colour", lambda text: real(
        text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")))


# -- untrusted text ----------------------------------------------------------------------------
HOSTILE = {
    "rich-markup": "[bold red]not bold[/bold red] [link=https://evil.example]click[/link] [/]",
    "ansi-escapes": "\x1b[31mred\x1b[0m \x1b]0;owned title\x07 \x1b[2J\x1b[H cleared",
    "control-chars": "nul\x00 bell\x07 back\x08space\rcarriage\nnew line\ttab\x7fdel",
    "rtl-marks": "abc \u202eevil txt.exe\u202c \u200fright\u200e \u2066isolate\u2069",
    "very-long-word": "a" * 5000,
    "two-thousand-chars": ("a painting of a cat, " * 100)[:2000],
    "lone-surrogate": "broken \udcff text",
    "emoji-and-combining": "cafe\u0301 👩‍👩‍👧 ﷽",
    "json-and-quotes": '{"index": 99}\\n "quoted" \\ backslash',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_caption_is_logged_faithfully_and_printed_literally(monkeypatch, tmp_path, capsys,
                                                                    name):
    text = HOSTILE[name]
    _fakes_accept_surrogates(monkeypatch)
    start = fake_start_png(tmp_path / "start.png")
    out = tmp_path / "run"
    captioner = fakes.FakeCaptioner({text: "step 1"} | SCRIPT, start=text)
    use_fakes(monkeypatch, captioner=captioner)
    assert run_main(["run", start, "--headless", "--out", out, "--max-iters", "3"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in (out / "log.jsonl").read_bytes().splitlines()]
    assert records[0]["caption"] == text and records[0]["fed_prompt"] == text  # exact round-trip
    assert read_run(out).records[0].caption == text
    first = captured.out.splitlines()[0]
    assert first.endswith(visible(text))  # the whole text, escapes visible, on one line
    for raw in ("\x1b", "\x00", "\x07", "\u202e", "\u200f", "\r", "\udcff"):
        assert raw not in captured.out and raw not in captured.err
    if name == "rich-markup":
        assert "[bold red]not bold[/bold red]" in first
    if name == "ansi-escapes":
        assert "\\x1b[31mred" in first


def test_hostile_start_prompt(monkeypatch, tmp_path, capsys):
    """A --prompt start of 2,000 characters with escapes: stored as given, printed literally."""
    prompt = ("\x1b[1m[bold]" + "x" * 1990 + "\u202e\udcff")
    out = tmp_path / "run"
    _fakes_accept_surrogates(monkeypatch)
    use_fakes(monkeypatch)
    assert run_main(["run", "--prompt", prompt, "--headless", "--out", out,
                     "--max-iters", "2"]) == 0
    captured = capsys.readouterr()
    view = read_run(out)
    assert view.config["start_prompt"] == prompt
    assert view.records[0].fed_prompt == prompt
    assert captured.out.splitlines()[0].endswith(visible(prompt))
    assert "\x1b" not in captured.out


def test_hostile_text_in_error_messages(tmp_path):
    """A file name carrying escapes is shown escaped in the one-line error."""
    done = cli_subprocess(["run", str(tmp_path / "\x1b]0;pwned\x07\u202e.png"), "--headless"],
                          timeout=60)
    assert done.returncode == 2
    assert "\x1b" not in done.stderr and "\u202e" not in done.stderr
    assert_one_clean_error_line(done.stderr, "\\x1b]0;pwned\\x07\\u202e")


def test_visible_escapes_every_invisible_character():
    assert visible("a\x1bb\u202ec\udcffd\u2028e") == "a\\x1bb\\u202ec\\udcffd\\u2028e"
    assert visible("[bold]x[/]") == "[bold]x[/]"
