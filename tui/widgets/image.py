"""The image preview: terminal graphics through textual-image, or half-blocks, or just text.

textual-image probes the terminal when it is imported, so it is imported only for the modes that
need it (`resolve_preview`, called before the app starts). The half-block renderer here needs no
probe at all: it is what tmux, plain SSH, tests and snapshots get.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
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


def resolve_preview(preview: str) -> str:
    """The preview mode to use: 'tgp', 'sixel', 'halfcell' or 'none'.

    Call before the App starts (textual-image's probes read the terminal's answers from stdin).
    'auto' picks graphics only on a terminal that answers the probe, and not inside tmux (it needs
    `allow-passthrough on`; ask for --preview tgp/sixel explicitly there).
    """
    if preview in ("halfcell", "none"):
        return preview
    _quiet_probe_warnings()
    if not (sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__
            and sys.__stdin__.isatty()):
        return "halfcell"
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
            return "tgp"
        if name.endswith(".sixel"):
            return "sixel"
        return "halfcell"
    try:
        import textual_image.widget  # noqa: F401
    except Exception:  # noqa: BLE001
        return "halfcell"
    return preview


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
    """An image as coloured upper-half blocks: two pixels per cell, no terminal probe needed."""

    DEFAULT_CSS = "HalfcellImage { width: 1fr; height: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path: Path | None = None

    def set_path(self, path: Path | None) -> None:
        if path != self.path or self.picture is not None:
            self.path = path
            self.picture = None
            self.refresh()

    picture = None  # an in-memory image shown instead of `path` (the live preview)

    def set_picture(self, picture) -> None:
        self.picture = picture
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        image = self.picture if self.picture is not None else (
            load_image(self.path) if self.path else None)
        if image is None or width < 2 or height < 1:
            return Text("")
        scale = min(width / image.width, (height * 2) / image.height)
        w, h = max(1, int(image.width * scale)), max(2, int(image.height * scale) // 2 * 2)
        pixels = image.resize((w, h)).load()
        text = Text(no_wrap=True, overflow="crop")
        pad = " " * ((width - w) // 2)
        for row in range(0, h, 2):
            text.append(pad)
            for col in range(w):
                top, bottom = pixels[col, row], pixels[col, row + 1]
                text.append("▀", Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom)))
            if row + 2 < h:
                text.append("\n")
        return text


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
        widget = self.query_one(".image")
        if isinstance(widget, HalfcellImage):
            widget.set_path(path)
        else:
            widget.image = str(path) if path and path.exists() else None
