"""The trajectory as a moving picture: an animated GIF (Pillow) and an MP4 (an ffmpeg pipe)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from truthloop.lookback.render import (
    default_size,
    frame_layout,
    iter_frames,
    native_size,
    need_images,
    write_file,
)
from truthloop.lookback.runs import ExportError
from truthloop.text import visible


# -- the exports ------------------------------------------------------------------------------
def write_gif(view: Any, path: Path, fps: float = 2.0, captions: bool = True,
              size: int | None = None) -> dict[str, Any]:
    records = need_images(view)
    size = size or default_size(len(records), native_size(view, records))
    layout = frame_layout(size, captions)
    frames = iter_frames(view, records, layout, captions)
    first = next(frames)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=frames, loop=0,
               duration=max(20, int(round(1000 / fps))), optimize=False, disposal=1)
    write_file(path, buffer.getvalue())
    start = view.input_path is not None  # the first frame is the start image
    return {"path": path, "frames": len(records) + start, "start": start, "width": layout.width,
            "height": layout.height}


def find_encoder() -> str | None:
    """An ffmpeg executable: on PATH, else the one bundled by imageio-ffmpeg if installed."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg  # type: ignore[import-not-found]

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - not installed, or installed without its binary
        return None


MP4_SKIPPED = ("no ffmpeg encoder here (install ffmpeg on PATH or `pip install imageio-ffmpeg`); "
               "the GIF has the same frames")
MP4_NEEDS_ENCODER = ("--mp4 needs an ffmpeg encoder: install ffmpeg (on PATH) or "
                     "`pip install imageio-ffmpeg`; --gif works without one")


def write_mp4(view: Any, path: Path, fps: float = 2.0, captions: bool = True,
              size: int | None = None, encoder: str | None = None) -> dict[str, Any]:
    encoder = encoder or find_encoder()
    if encoder is None:
        raise ExportError(MP4_NEEDS_ENCODER)
    records = need_images(view)
    size = size or default_size(len(records), native_size(view, records))
    layout = frame_layout(size + size % 2, captions)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.mp4")
    command = [encoder, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{layout.width}x{layout.height}", "-r", f"{fps:g}", "-i", "-",
               "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
               str(tmp)]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
    except OSError as error:
        raise ExportError(f"cannot start the encoder {encoder}: {error.strerror}") from None
    try:
        try:
            for frame in iter_frames(view, records, layout, captions):
                process.stdin.write(frame.tobytes())
        except BrokenPipeError:
            pass
        finally:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
        stderr = process.stderr.read().decode(errors="replace")
        code = process.wait()
        if code != 0:
            last = (stderr.strip().splitlines() or [f"exit status {code}"])[-1]
            raise ExportError(f"the encoder failed making {path.name}: {visible(last)}")
        os.replace(tmp, path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            tmp.unlink()
        except OSError:
            pass
    start = view.input_path is not None
    return {"path": path, "frames": len(records) + start, "start": start, "width": layout.width,
            "height": layout.height}
