"""Terminal graphics (issue 15): which preview a terminal gets, and images that keep their shape.

Seen under Xvfb: xterm -ti vt340 (XTerm(379)) ignores CSI 16 t but its window-size ioctl has the
pixel fields (6x13 cells); kitty 0.26.5 answers the graphics query but has no Unicode placeholders.
"""

from __future__ import annotations

import sys

import pytest
from PIL import Image

import textual_image.widget  # noqa: F401 - imported here, off a terminal: no probe
from tui.widgets import image as preview

KITTY_OLD = "\x1bP>|kitty(0.26.5)\x1b\\"
KITTY_NEW = "\x1bP>|kitty(0.35.2)\x1b\\"
XTERM = "\x1bP>|XTerm(379)\x1b\\"


def test_xtversion_answers():
    assert preview.parse_xtversion(KITTY_OLD) == ("kitty", (0, 26, 5))
    assert preview.parse_xtversion(XTERM) == ("XTerm", (379,))
    assert preview.parse_xtversion("\x1bP>|WezTerm 20240203-110809-5046fc22\x1b\\") == (
        "WezTerm", (20240203,))
    assert preview.parse_xtversion("") is None and preview.parse_xtversion("garbage") is None


def test_tgp_only_where_placeholders_work():
    assert not preview.tgp_usable(KITTY_OLD)
    assert preview.tgp_usable(KITTY_NEW) and preview.tgp_usable("\x1bP>|kitty(0.28.0)\x1b\\")
    assert preview.tgp_usable(XTERM) and preview.tgp_usable("")  # no answer: as before


class FakeTty:
    def isatty(self):
        return True


@pytest.fixture
def on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "__stdout__", FakeTty())
    monkeypatch.setattr(sys, "__stdin__", FakeTty())
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.setenv("TERM", "xterm-kitty")


def test_auto_on_kitty_0_26_falls_back_to_half_blocks(on_a_terminal, monkeypatch):
    from textual_image import renderable

    monkeypatch.setattr(renderable, "Image", renderable.TGPImage)  # it answered the TGP query
    assert preview.resolve_preview("auto", xtversion=lambda: KITTY_OLD) == "halfcell"
    assert preview.resolve_preview("tgp", xtversion=lambda: KITTY_OLD) == "halfcell"
    assert preview.resolve_preview("auto", xtversion=lambda: KITTY_NEW) == "tgp"
    monkeypatch.setattr(renderable, "Image", renderable.SixelImage)  # xterm -ti vt340
    assert preview.resolve_preview("auto", xtversion=lambda: XTERM) == "sixel"
    assert preview.resolve_preview("sixel", xtversion=lambda: XTERM) == "sixel"


def test_fit_cells_keeps_the_aspect_ratio():
    # xterm's 6x13 cells (its ioctl's pixel fields): a square image in an 18x15 box.
    columns, rows = preview.fit_cells((18, 15), (64, 64), (6, 13))
    assert (columns, rows) == (18, 8) and abs(columns * 6 / (rows * 13) - 1) < 0.05
    # Nothing answered: a 1:2 cell.
    assert preview.fit_cells((18, 15), (64, 64), None) == (18, 9)
    # A wide image in a tall box, and a tall one in a wide box.
    assert preview.fit_cells((36, 30), (768, 512), (9, 20)) == (36, 11)
    assert preview.fit_cells((60, 10), (512, 768), (10, 20)) == (13, 10)
    assert preview.fit_cells((0, 10), (64, 64), (6, 13)) == (0, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_graphics_view_is_sized_to_the_image(tmp_path, monkeypatch, anyio_backend):
    from textual.app import App
    from textual_image._terminal import CellSize, get_cell_size

    monkeypatch.setattr(get_cell_size, "_result", CellSize(6, 13), raising=False)
    path = tmp_path / "square.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(path)

    class Host(App):
        def compose(self):
            yield preview.ImageView("sixel", id="view")

    app = Host()
    async with app.run_test(size=(18, 16)) as pilot:
        view = app.query_one("#view", preview.ImageView)
        view.show(path, "#0")
        await pilot.pause()
        widget = view.query_one(".image")
        assert (widget.outer_size.width, widget.outer_size.height) == (18, 8)  # not 18x15
