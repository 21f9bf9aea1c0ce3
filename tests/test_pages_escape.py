"""Every HTML page truthloop writes (a run's page, the compare page, the atlas) shows a caption's
control characters as `\\x1b` text, as the terminal app does, and never writes them raw (issue
21: atlas.html wrote ESC into its attractors table)."""

from __future__ import annotations

import pytest

from test_review import make_run
from truthloop.compare import compare_runs
from truthloop.lookback.compare_page import write_page
from truthloop.lookback.export import export

ESC_SCRIPT = {"start\x1b[31m": "a\x1b[31m, x", "a\x1b[31m": "b\x1b[0m, y",
              "b\x1b[0m": "a\x1b[31m, z"}


def _check(page: str) -> None:
    assert "\x1b" not in page  # no raw control character in the file
    assert "\\x1b[31m" in page  # shown as text


def test_run_page_and_compare_page_show_escapes_as_text(tmp_path):
    one = make_run(tmp_path, script=ESC_SCRIPT, start="start\x1b[31m, s", name="one")
    other = {"start\x1b[31m": "c\x1b[31m, x", "c\x1b[31m": "c\x1b[31m, q"}
    two = make_run(tmp_path, script=other, start="start\x1b[31m, s", name="two")
    page = export(one, ["html"])[0]["path"]
    _check(page.read_text(encoding="utf-8"))
    out = tmp_path / "compare.html"
    write_page(compare_runs(one, two), out)
    _check(out.read_text(encoding="utf-8"))


def test_atlas_page_shows_escapes_as_text(tmp_path):
    pytest.importorskip("sklearn")
    from sweep_fakes import make_sweep
    from truthloop.lookback.atlas import write_atlas

    sweep_dir = tmp_path / "sweep"
    make_sweep(sweep_dir, ["h1", "a1"], [0])  # h1's truth: a caption with \x1b[31m in it
    _, out = write_atlas(sweep_dir)
    _check((out / "atlas.html").read_text(encoding="utf-8"))
