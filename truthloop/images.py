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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImage(ValueError):
    """The start image cannot be used; the message is one line naming the file."""


def load_input_image(path: str | os.PathLike,
                     max_side: int | None = MAX_SIDE) -> "Image.Image":  # noqa: F821
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
    damage = png_crc_problem(path)
    if damage:
        raise BadImage(f"{path} is damaged: {damage} (re-save it, or use the original)")
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
    if max_side is not None and max(rgb.size) > max_side:  # None: every pixel kept (an import)
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    # Pixels only: the run writes this image as input.png, and Pillow would carry the source's
    # ICC profile (cameras write several MB; past 1 MB plain Pillow refuses to open the PNG),
    # EXIF and text chunks into it. A run's own files must open anywhere.
    rgb.info = {}
    return rgb


def png_crc_problem(path: Path) -> str | None:
    """The first critical chunk (IHDR, PLTE, IDAT, IEND) of a PNG whose CRC does not match, as
    one phrase; None for a sound PNG or any other file. Pillow skips the image data's CRCs, so
    a damaged IDAT would otherwise pass silently (libpng, and so most viewers, refuse it).
    Truncation is left to the decoder, which names it."""
    import struct
    import zlib

    try:
        with open(path, "rb") as file:
            if file.read(8) != PNG_SIGNATURE:
                return None
            number = 0
            while True:
                head = file.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                crc = zlib.crc32(kind)
                left = length
                while left:
                    piece = file.read(min(left, 1 << 20))
                    if not piece:
                        return None
                    crc = zlib.crc32(piece, crc)
                    left -= len(piece)
                stored = file.read(4)
                if len(stored) < 4:
                    return None
                critical = kind[:1].isupper()
                if critical and struct.unpack(">I", stored)[0] != crc:
                    name = kind.decode("ascii", "replace")
                    which = (f"its image data (IDAT chunk {number + 1})" if name == "IDAT"
                             else f"its {name} chunk")
                    return f"{which} fails its CRC check"
                if kind == b"IEND":
                    return None
                number += kind == b"IDAT"
    except OSError:
        return None  # the decoder below names what cannot be read


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
