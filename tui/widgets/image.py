"""The image preview: terminal graphics through textual-image, or half-blocks, or just text.

textual-image probes the terminal when it is imported, so it is imported only for the modes that
need it (`resolve_preview`, called before the app starts). The half-block renderer here needs no
probe at all: it is what tmux, plain SSH, tests and snapshots get.
"""

from __future__ import annotations

import os
import re
import sys
from functools import lru_cache
from pathlib import Path

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from truthloop.text import visible

GRAPHICS = ("tgp", "sixel")


def _quiet_probe_warnings() -> None:
    """textual-image logs a warning with a traceback when the terminal does not answer its
    cell-size query (many SSH clients don't); with no logging set up, Python prints that to the
    terminal before the app starts. It falls back to sane sizes, so say nothing."""
    import logging

    probe_log = logging.getLogger("textual_image")
    if not probe_log.handlers:
        probe_log.addHandler(logging.NullHandler())
        probe_log.propagate = False


# Kitty draws the graphics protocol's Unicode placeholders (what textual-image's TGP widget sends)
# from 0.28 on; 0.26.5 (Debian 12's) answers the protocol's query, then fills the pane with
# placeholder boxes and logs "Malformed GraphicsCommand".
KITTY_PLACEHOLDERS = (0, 28)
XTVERSION = re.compile(r"\x1bP>\|([A-Za-z][\w-]*)\W*([0-9][0-9.]*)?")


def parse_xtversion(reply: str) -> tuple[str, tuple[int, ...]] | None:
    """The terminal's name and version from its XTVERSION answer (`CSI > q` ->
    `DCS >| kitty(0.26.5) ST`, `DCS >| XTerm(379) ST`, `DCS >| WezTerm 20240203 ST`)."""
    match = XTVERSION.search(reply or "")
    if not match:
        return None
    version = tuple(int(part) for part in (match.group(2) or "").split(".") if part.isdigit())
    return match.group(1).strip(), version


def tgp_usable(xtversion_reply: str) -> bool:
    """Whether textual-image's TGP widget (Unicode placeholders) can work on this terminal: not on
    a kitty older than 0.28. A terminal that does not say what it is gets the benefit of the
    doubt (it answered the graphics query)."""
    parsed = parse_xtversion(xtversion_reply)
    if parsed is None:
        return True
    name, version = parsed
    return not (name.lower() == "kitty" and version and version < KITTY_PLACEHOLDERS)


def query_xtversion(timeout: float = 0.2) -> str:
    """Ask the terminal what it is (`CSI > 0 q`); "" when it does not answer. Before the App starts
    only (Textual reads stdin afterwards)."""
    try:
        from textual_image._terminal import capture_terminal_response

        with capture_terminal_response("\x1bP>|", "\x1b\\", timeout) as response:
            sys.__stdout__.write("\x1b[>0q")
            sys.__stdout__.flush()
        return response.sequence
    except Exception:  # noqa: BLE001 - no answer, or a stray key: say nothing, assume nothing
        return ""


def fit_cells(box: tuple[int, int], image: tuple[int, int],
              cell: tuple[int, int] | None) -> tuple[int, int]:
    """The cells (columns, rows) an image of `image` pixels takes inside `box` cells, keeping its
    aspect ratio on cells of `cell` pixels (a 1:2 cell when the terminal did not say: xterm
    ignores the cell-size query unless allowWindowOps is on). Given the whole box (1fr x 1fr),
    textual-image stretched a 64x64 image to ~180x305 pixels in xterm."""
    columns, rows = box
    width, height = image
    cell_width, cell_height = cell if cell and cell[0] > 0 and cell[1] > 0 else (10, 20)
    if columns < 1 or rows < 1 or width < 1 or height < 1:
        return 0, 0
    scale = min(columns * cell_width / width, rows * cell_height / height)
    return (max(1, min(columns, round(width * scale / cell_width))),
            max(1, min(rows, round(height * scale / cell_height))))


def resolve_preview(preview: str, xtversion=query_xtversion) -> str:
    """The preview mode to use: 'tgp', 'sixel', 'halfcell' or 'none'.

    Call before the App starts (textual-image's probes read the terminal's answers from stdin).
    'auto' picks graphics only on a terminal that answers the probe, and not inside tmux (it needs
    `allow-passthrough on`; ask for --preview tgp/sixel explicitly there). TGP is used only where
    its placeholders work (`tgp_usable`, from the terminal's XTVERSION answer); else half-blocks.
    """
    if preview in ("halfcell", "none"):
        return preview
    _quiet_probe_warnings()
    if not (sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__
            and sys.__stdin__.isatty()):
        return "halfcell"
    try:
        return _probe(preview, xtversion)
    finally:
        # An answer that came after its probe gave up waits in stdin: gone before Textual reads
        # it as keys (a later one still is no key: tui/terminal.py).
        from tui.terminal import drain_input

        drain_input()


def _probe(preview: str, xtversion) -> str:
    if preview == "auto":
        if os.environ.get("TMUX") or os.environ.get("TERM", "").startswith(("screen", "tmux")):
            return "halfcell"
        try:
            from textual_image import renderable
            import textual_image.widget  # noqa: F401 - caches the cell size before Textual starts
        except Exception:  # noqa: BLE001 - a probe that misfires must not stop the app
            return "halfcell"
        name = getattr(renderable.Image, "__module__", "")
        if name.endswith(".tgp"):
            preview = "tgp"
        elif name.endswith(".sixel"):
            return "sixel"
        else:
            return "halfcell"
    try:
        import textual_image.widget  # noqa: F401
    except Exception:  # noqa: BLE001
        return "halfcell"
    if preview == "tgp" and not tgp_usable(xtversion()):
        return "halfcell"
    return preview


def cell_pixels() -> tuple[int, int] | None:
    """The terminal's cell size in pixels as textual-image found it (the window-size ioctl's
    pixel fields, else its answer to CSI 16 t, else a 10x20 guess), None without textual-image."""
    try:
        from textual_image._terminal import get_cell_size

        size = get_cell_size()
        return size.width, size.height
    except Exception:  # noqa: BLE001
        return None


@lru_cache(maxsize=16)
def _load(path: str, mtime: float):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def load_image(path: Path):
    """A PIL image, cached by path and mtime; None when it cannot be read (yet)."""
    try:
        return _load(str(path), path.stat().st_mtime)
    except Exception:  # noqa: BLE001 - a half-written or missing file: show text instead
        return None


class HalfcellImage(Widget):
    """An image as coloured upper-half blocks: two pixels per cell, no terminal probe needed.

    Drawn through Textual's line API from strips built once per image and size: a live preview
    redraws this pane a few times a second, and the app's process should spend as little as it
    can on it."""

    DEFAULT_CSS = "HalfcellImage { width: 1fr; height: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path: Path | None = None
        self._strips: list[Strip] = []
        self._strips_for: tuple | None = None  # (width, height, style) they were built for

    def set_path(self, path: Path | None) -> None:
        if path != self.path or self.picture is not None:
            self.path = path
            self.picture = None
            self._strips_for = None
            self.refresh()

    picture = None  # an in-memory image shown instead of `path` (the live preview)

    def set_picture(self, picture) -> None:
        self.picture = picture
        self._strips_for = None
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.content_size.width, self.content_size.height
        key = (width, height, self.rich_style)
        if key != self._strips_for:
            # Once per image and size, not once per line: loading the image stats its file.
            image = self.picture if self.picture is not None else (
                load_image(self.path) if self.path else None)
            if image is None:  # none, or not readable yet: asked again at the next render
                return Strip.blank(width, self.rich_style)
            self._strips = half_block_strips(image, width, height, self.rich_style)
            self._strips_for = key
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.rich_style)


def half_block_strips(image, width: int, height: int, base: Style) -> list[Strip]:
    """`image` fitted into width x height cells (two pixels a cell, upper half block), centred
    across: one Strip a row."""
    if width < 2 or height < 1:
        return []
    scale = min(width / image.width, (height * 2) / image.height)
    w, h = max(1, int(image.width * scale)), max(2, int(image.height * scale) // 2 * 2)
    w = min(w, width)
    data = image.resize((w, h)).tobytes()
    stride = w * 3
    left = (width - w) // 2
    pad_left = Segment(" " * left, base) if left else None
    pad_right = Segment(" " * (width - w - left), base) if width - w - left else None
    strips = []
    rgb, style = Color.from_rgb, Style.from_color
    for row in range(0, h, 2):
        top, bottom = data[row * stride:(row + 1) * stride], data[(row + 1) * stride:(row + 2) * stride]
        segments = [pad_left] if pad_left else []
        for i in range(0, stride, 3):
            segments.append(Segment("▀", style(rgb(top[i], top[i + 1], top[i + 2]),
                                                 rgb(bottom[i], bottom[i + 1], bottom[i + 2]))))
        if pad_right:
            segments.append(pad_right)
        strips.append(Strip(segments, width))
    return strips


class ImageView(Vertical):
    """One titled image: graphics, half-blocks or a text line, whichever mode the app runs in."""

    DEFAULT_CSS = """
    ImageView { height: 1fr; width: 1fr; }
    ImageView > .image-title { height: 1; color: $text-muted; }
    ImageView > .image-text { height: 1fr; color: $text-muted; }
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = mode
        self.path: Path | None = None
        self.title = ""

    def compose(self) -> ComposeResult:
        yield Static("", classes="image-title", markup=False)
        if self.mode == "halfcell":
            yield HalfcellImage(classes="image")
        elif self.mode in GRAPHICS:
            from textual_image import widget as ti

            kind = ti.TGPImage if self.mode == "tgp" else ti.SixelImage
            image = kind(classes="image")
            image.styles.width = "1fr"
            image.styles.height = "1fr"
            yield image
        else:
            yield Static("", classes="image-text", markup=False)

    def show_picture(self, picture, title: str, note: str = "") -> None:
        """An in-memory PIL image (the live preview); the next `show` of a path replaces it."""
        label = Text(visible(title), style="bold")
        if note:
            label.append("  " + visible(note), style="italic")
        self.query_one(".image-title", Static).update(label)
        if self.mode == "none":
            return
        # `path` stays what is under the preview: showing it again keeps the preview; the next
        # image's path replaces it.
        self.previewing = True
        widget = self.query_one(".image")
        if isinstance(widget, HalfcellImage):
            widget.set_picture(picture)
        else:
            widget.image = picture

    previewing = False

    def end_preview(self) -> None:
        """The run ended: a latent preview still shown gives way to the image under it (the
        next `show` sets the title)."""
        if not self.previewing:
            return
        self.previewing = False
        if self.mode != "none":
            self._put_image(self.path)

    def show(self, path: Path | None, title: str, note: str = "") -> None:
        """Show `path` under `title`; the image itself is only touched when the path changes."""
        if self.previewing and path == self.path:
            return  # the live preview of the next image stays until that image is there
        self.previewing = False
        label = Text(visible(title), style="bold")
        if note:
            label.append("  " + visible(note), style="italic")
        self.query_one(".image-title", Static).update(label)
        if self.mode == "none":
            body = Text(visible(str(path)) if path else "(no image yet)")
            self.query_one(".image-text", Static).update(body)
            return
        if path == self.path:
            return
        self.path = path
        self._put_image(path)

    def _put_image(self, path: Path | None) -> None:
        """`path` into the image widget, half-blocks or graphics (sized to its aspect)."""
        widget = self.query_one(".image")
        if isinstance(widget, HalfcellImage):
            widget.set_path(path)
        else:
            widget.image = str(path) if path and path.exists() else None
            self._fit_graphics()

    def on_resize(self) -> None:
        if self.mode in GRAPHICS:
            self._fit_graphics()

    def _fit_graphics(self) -> None:
        """Size the graphics widget to the image's aspect ratio inside this view (below the
        title): textual-image fills whatever size it is given."""
        widget = self.query_one(".image")
        image = load_image(self.path) if self.path else None
        box = (self.content_size.width, max(0, self.content_size.height - 1))
        if image is None or box[0] < 1 or box[1] < 1:
            return
        columns, rows = fit_cells(box, image.size, cell_pixels())
        widget.styles.width = columns
        widget.styles.height = rows
