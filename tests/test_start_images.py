"""Start images that cameras and shells produce: a PNG with a large ICC profile loads, a symlink
loop is named as one (issue 15); the run's input.png carries none of that profile, so its files
open with plain Pillow and export; a PNG whose image data fails its CRC is refused (issue 21)."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from faulthelpers import (
    assert_one_clean_error_line, cli_subprocess, run_main, use_fakes,
)
from truthloop.images import BadImage, load_input_image


def test_png_with_a_10_mb_icc_profile_loads(tmp_path):
    path = tmp_path / "camera.png"
    # Random bytes do not compress: the profile stays ~10 MB inside the PNG, as a real one would.
    Image.new("RGB", (24, 16), (200, 100, 50)).save(path, icc_profile=os.urandom(10 << 20))
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    image = load_input_image(path)
    assert image.mode == "RGB" and image.size == (24, 16)
    assert image.getpixel((3, 3)) == (200, 100, 50)
    assert PngImagePlugin.MAX_TEXT_CHUNK == limit  # raised for our load only


def test_symlink_loop_is_named(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(BadImage, match="loop of symbolic links"):
        load_input_image(a)
    done = cli_subprocess(["run", a, "--headless", "--out", tmp_path / "run"], timeout=60)
    assert done.returncode == 2
    assert_one_clean_error_line(done.stderr, "a.png", "loop of symbolic links")
    with pytest.raises(BadImage, match="no such file"):
        load_input_image(tmp_path / "missing.png")


def test_a_runs_input_png_opens_with_plain_pillow_and_exports(monkeypatch, tmp_path, capsys):
    path = tmp_path / "camera.png"
    Image.new("RGB", (24, 16), (200, 100, 50)).save(path, icc_profile=os.urandom(10 << 20))
    assert "icc_profile" not in load_input_image(path).info
    use_fakes(monkeypatch)
    out = tmp_path / "run"
    assert run_main(["run", path, "--headless", "--out", out]) == 0
    assert (out / "input.png").stat().st_size < 100_000  # pixels only, no 10 MB profile
    with Image.open(out / "input.png") as image:  # plain Pillow, its default limits
        assert "icc_profile" not in image.info
        assert image.convert("RGB").getpixel((3, 3)) == (200, 100, 50)
    capsys.readouterr()
    assert run_main(["export", out, "--all"]) == 0
    captured = capsys.readouterr()
    assert "cannot read" not in captured.out + captured.err
    assert (out / "exports" / "trajectory.gif").is_file() and (out / "exports" / "sheet.png").is_file()


def _with_bad_idat_crc(path):
    """A valid PNG whose IDAT chunk's stored CRC is off by one: the pixels still decode."""
    Image.new("RGB", (24, 16), (10, 200, 30)).save(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at:at + 4])[0]
    crc_at = at + 8 + length
    good = struct.unpack(">I", data[crc_at:crc_at + 4])[0]
    assert good == zlib.crc32(bytes(data[at + 4:crc_at]))
    data[crc_at:crc_at + 4] = struct.pack(">I", (good + 1) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    with Image.open(path) as image:  # Pillow alone says nothing
        image.load()
    return path


def test_png_whose_image_data_fails_its_crc_is_refused(monkeypatch, tmp_path, capsys):
    path = _with_bad_idat_crc(tmp_path / "flipped.png")
    with pytest.raises(BadImage, match=r"flipped.png is damaged: its image data \(IDAT chunk 1\) "
                                       r"fails its CRC check"):
        load_input_image(path)
    use_fakes(monkeypatch)
    out = tmp_path / "run"
    assert run_main(["run", path, "--headless", "--out", out]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "flipped.png", "CRC")
    assert not out.exists()  # nothing written
