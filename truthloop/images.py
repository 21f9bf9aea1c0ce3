"""Reading a start image the user gave us: odd-but-valid images become RGB, bad ones one clear line."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

# Above this many pixels we refuse before decoding (a decompression bomb); below it, big images are
# shrunk to MAX_SIDE, which is far more than any captioner looks at.
MAX_PIXELS = 16384 * 16384
MAX_SIDE = 2048
# Pillow reads a PNG's ICC profile under its text-chunk limit (1 MB decompressed), and cameras and
# editors write profiles of several MB; raised for our load only, still bounded.
MAX_PNG_CHUNK = 64 * 1024 * 1024


class BadImage(ValueError):
    """The start image cannot be used; the message is one line naming the file."""


def load_input_image(path: str | os.PathLike) -> "Image.Image":  # noqa: F821
    from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

    path = Path(path)
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BadImage(f"{path}: a loop of symbolic links (it never reaches a file)") from None
        if not isinstance(error, FileNotFoundError):
            raise BadImage(f"{path}: cannot read ({error.strerror})") from None
        raise BadImage(f"{path}: no such file") from None
    if path.is_dir():
        raise BadImage(f"{path} is a directory, not an image")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadImage(f"{path}: cannot read ({error.strerror})") from None
    if size == 0:
        raise BadImage(f"{path} is empty (0 bytes)")
    previous_limit = Image.MAX_IMAGE_PIXELS
    previous_chunk = PngImagePlugin.MAX_TEXT_CHUNK
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    PngImagePlugin.MAX_TEXT_CHUNK = max(previous_chunk, MAX_PNG_CHUNK)
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x the limit Pillow only warns (a stray stderr line); we refuse below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"{path} is {width}×{height} pixels, more than the "
                               f"{MAX_PIXELS:,}-pixel limit (a decompression bomb?)")
            image.seek(0)  # animated images: the first frame
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"{path} is too many pixels to decode safely (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise BadImage(f"{path} is not an image that Pillow can read") from None
    except PermissionError:
        raise BadImage(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadImage(f"{path} is truncated or corrupt ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
        PngImagePlugin.MAX_TEXT_CHUNK = previous_chunk
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return rgb


def to_rgb(image: "Image.Image") -> "Image.Image":  # noqa: F821
    """Any Pillow mode to 8-bit RGB: transparency over white, 16-bit scaled, CMYK converted."""
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype("uint8")
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        import numpy as np

        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        span = float(array.max() - array.min()) or 1.0
        array = ((array - array.min()) / span * 255.0).astype("uint8")
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
