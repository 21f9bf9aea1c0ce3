"""Start images that cameras and shells produce: a PNG with a large ICC profile loads, a symlink
loop is named as one (issue 15)."""

from __future__ import annotations

import os

import pytest
from PIL import Image, PngImagePlugin

from faulthelpers import assert_one_clean_error_line, cli_subprocess
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
