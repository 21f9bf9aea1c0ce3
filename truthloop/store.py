"""The run directory: the one way a run is written, and the one way it is read back.

Layout (the contract with the TUI, `view`, exports and `resume`):

    run.json        every parameter (RunConfig), package versions, machine; written once
    input.png       the start image as RGB (absent for a --prompt start)
    images/NNNN.png one per iteration, written before its log line
    log.jsonl       append-only, one JSON record per iteration; a line is the commit point
    summary.json    status and result; "running" while a writer holds the lock
    lock            held (flock) by the one process writing this run
    error.log       the traceback of an unexpected error, if any

Every file but log.jsonl is written to a temp name and renamed, so a reader never sees half of it.
log.jsonl lines are written with one append each and fsynced; a reader ignores a last line with no
newline (a write cut short by a kill), and `resume` trims it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from truthloop.errors import OneLineError
from truthloop.record import Record

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
INPUT_FILE = "input.png"
IMAGES_DIR = "images"
LOCK_FILE = "lock"
ERROR_FILE = "error.log"
# Written into run.json as "format"; a reader refuses a run written in a newer format rather
# than misreading it.
FORMAT_VERSION = 1
# How long a writer waits out a reader's momentary probe of the lock (see RunWriter._lock).
LOCK_ATTEMPTS = 20
LOCK_RETRY_S = 0.025


class RunDirError(OneLineError):
    """A run directory that cannot be used; the message is one line naming the file."""


class RunLocked(RunDirError):
    pass


def image_name(index: int) -> str:
    return f"{IMAGES_DIR}/{index:04d}.png"


def run_dir_name(label: str, now: float | None = None) -> str:
    """`YYYYmmdd-HHMMSS-<label>`; the label is the input's file stem, reduced to safe characters."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:40] or "run"
    return f"{stamp}-{safe}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def json_bytes(data: Any, indent: int | None = None) -> bytes:
    """UTF-8 JSON; lone surrogates (a non-UTF-8 file name or argument) are kept as \\udcXX escapes,
    so such text round-trips instead of failing the write."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(data, indent=indent).encode()


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json_bytes(data, indent=2) + b"\n")


# zlib level 1, not Pillow's default 6: the same pixels (PNG is lossless) in about a sixth of the
# time for ~15% more bytes. Saving each image sits on the loop's critical path (0.13-0.16 s an
# iteration at 768x768 on the GPU boxes at level 6: docs/hardware-limit.md).
PNG_COMPRESS_LEVEL = 1


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _remove_stale_staging(parent: Path) -> None:
    """Half-created run directories of killed processes: never runs, so removed.

    Stale when unlocked and its creator (the PID in its name) is gone, or a minute old.
    """
    if not parent.is_dir():
        return
    for stale in parent.glob(".*.creating-*"):
        try:
            if not stale.is_dir() or is_locked(stale):
                continue
            if not _alive(stale.name.rsplit("-", 1)[-1]) \
                    or time.time() - stale.stat().st_mtime > 60:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


class RunWriter:
    """The single writer of one run directory; holds its lock until closed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, run_info: dict[str, Any], input_image: Any | None) -> "RunWriter":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory; pick another --out")
        if path.exists() and is_locked(path):
            raise RunLocked(f"{path} is being written by another truthloop process; "
                            f"pick another --out")
        if path.exists() and any(path.iterdir()):
            raise RunDirError(f"{path} already exists and is not empty; pick another --out "
                              f"or `truthloop resume {path}`")
        # Built under a hidden name and renamed into place: a run directory either does not exist
        # or has its run.json, so a kill or a write error mid-creation leaves nothing to trip on.
        staging = path.parent / f".{path.name}.creating-{os.getpid()}"
        writer = cls(staging)
        try:
            _remove_stale_staging(path.parent)
            shutil.rmtree(staging, ignore_errors=True)  # a dead process's, with our recycled pid
            (staging / IMAGES_DIR).mkdir(parents=True)
            writer._lock()
            if input_image is not None:
                atomic_write_bytes(staging / INPUT_FILE, png_bytes(input_image))
            atomic_write_json(staging / RUN_FILE, run_info)
            os.rename(staging, path)  # also replaces an empty directory at `path`
        except BaseException as error:
            writer.close()
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST) and path.is_dir():
                    raise RunDirError(f"{path} already exists and is not empty; pick another "
                                      f"--out") from None
                reason = error.strerror or str(error)
                raise RunDirError(f"cannot create run directory {path}: {reason}") from None
            raise
        writer.path = path
        _fsync_dir(path.parent)
        return writer

    @classmethod
    def reopen(cls, path: Path) -> "RunWriter":
        """Open an existing run for resuming: take the lock, drop a torn last log line."""
        writer = cls(Path(path))
        writer._lock()
        try:
            log = writer.path / LOG_FILE
            if log.exists():
                data = log.read_bytes()
                if data and not data.endswith(b"\n"):
                    keep = data[: data.rfind(b"\n") + 1]
                    atomic_write_bytes(log, keep)
            # Temp files of a writer that was killed mid-write: never visible, never needed.
            for folder in (writer.path, writer.path / IMAGES_DIR):
                for stale in folder.glob(".*.tmp-*"):
                    stale.unlink(missing_ok=True)
        except BaseException:
            writer.close()
            raise
        return writer

    @classmethod
    def hold(cls, path: Path) -> "RunWriter":
        """Take an existing run's lock and touch nothing else: for a writer of files beside the
        records (`truthloop measure`), so that no resume writes run.json meanwhile."""
        writer = cls(Path(path))
        writer._lock()
        return writer

    def _lock(self) -> None:
        import fcntl

        lock_path = self.path / LOCK_FILE
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirError(f"cannot write in {self.path}: {error.strerror}") from None
        # A reader's `is_locked` holds a shared lock for an instant; a writer that meets one
        # waits it out rather than calling the directory taken (a sweep creates many run
        # directories side by side while its table and viewers probe them). A real writer
        # holds its lock for the whole run, far longer than these retries.
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt + 1 < LOCK_ATTEMPTS:
                    time.sleep(LOCK_RETRY_S)
        else:
            os.close(fd)
            holder = lock_path.read_text(errors="replace").strip() or "another process"
            raise RunLocked(f"{self.path} is being written by process {holder}; "
                            f"watch it with `truthloop view {self.path}`") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writing -----------------------------------------------------------------------------
    def write_image(self, index: int, image: Any) -> str:
        name = image_name(index)
        atomic_write_bytes(self.path / name, png_bytes(image))
        return name

    def append_record(self, record: Record) -> None:
        line = json_bytes(record.to_json()) + b"\n"
        fd = os.open(self.path / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write to log.jsonl")
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary)

    def write_error(self, text: str) -> None:
        try:
            atomic_write_bytes(self.path / ERROR_FILE, text.encode())
        except OSError:
            pass


def read_run_info(path: Path) -> Any:
    """run.json of the run directory `path`, parsed (OSError, ValueError when unreadable)."""
    return json.loads((Path(path) / RUN_FILE).read_text(encoding="utf-8"))


def update_run_info(path: Path, fields: dict[str, Any]) -> None:
    """Add top-level fields to run.json (e.g. a sweep's batch setting), rewritten whole and
    renamed into place; the caller holds the run's writer lock. The config is never touched."""
    info_path = Path(path) / RUN_FILE
    info = read_run_info(path)
    if "config" in fields:
        raise ValueError("run.json's config is written once, at creation")
    info.update(fields)
    atomic_write_json(info_path, info)


@dataclass
class RunView:
    """A run directory as read back; `problems` lists what was unreadable, one line each."""

    path: Path
    info: dict[str, Any]
    records: list[Record]
    summary: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.info.get("config", {})

    @property
    def status(self) -> str:
        return run_status(self.path, self.summary)

    def image_path(self, record: Record) -> Path | None:
        return self.path / record.image if record.image else None

    @property
    def input_path(self) -> Path | None:
        path = self.path / INPUT_FILE
        return path if path.exists() else None


def run_status(path: Path, summary: dict[str, Any] | None, missing: str = "unknown") -> str:
    """The run's status as summary.json says, except that a "running" run whose writer holds no
    lock any more was interrupted (killed, or its machine lost). `missing`: no status written."""
    status = (summary or {}).get("status", missing)
    if status == "running" and not is_locked(path):
        return "interrupted"
    return status


def is_locked(path: Path) -> bool:
    """True while some process holds the run's writer lock."""
    import fcntl

    lock_path = Path(path) / LOCK_FILE
    if not lock_path.exists():
        return False
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def read_records(path: Path, problems: list[str] | None = None) -> list[Record]:
    """Complete log lines as records; a torn last line or a bad line is reported, not raised."""
    log = Path(path) / LOG_FILE
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        # No newline yet: a writer is mid-append or was killed mid-line. Not a record yet.
        lines.pop()
        if problems is not None:
            problems.append(f"{log}: last line is incomplete (ignored)")
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
        except ValueError:
            if problems is not None:
                problems.append(f"{log}: line {number} is not valid JSON (ignored)")
            continue
        try:
            records.append(Record.from_json(data))
        except ValueError as error:
            if problems is not None:
                problems.append(f"{log}: line {number} is not a record: {error} (ignored)")
    return records


def read_valid_run_info(path: Path) -> dict[str, Any]:
    """run.json of the run directory `path`, as read_run needs it (an object with a `config`
    object); RunDirError, one line naming the file, when it is missing or damaged."""
    info_path = Path(path) / RUN_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
            raise ValueError("no 'config' object in it")
    except FileNotFoundError:
        raise RunDirError(f"{path} is not a truthloop run directory (no {RUN_FILE})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RunDirError(f"{info_path} is not valid: {error}") from None
    return info


def read_run(path: Path) -> RunView:
    """Read a run directory; raises RunDirError only when it is not a run directory at all."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    problems: list[str] = []
    info = read_valid_run_info(path)
    written = info.get("format", 1)
    if not isinstance(written, int) or written > FORMAT_VERSION:
        raise RunDirError(f"{path} was written by a newer truthloop (run format {written}; this "
                          f"one reads up to {FORMAT_VERSION}): upgrade truthloop to open it")
    records = read_records(path, problems)
    for record in records:
        if record.image and not (path / record.image).exists():
            problems.append(f"{path / record.image}: image of iteration {record.index} is missing")
    summary = None
    summary_path = path / SUMMARY_FILE
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{summary_path} is not valid JSON (ignored)")
    return RunView(path=path, info=info, records=records, summary=summary, problems=problems)


def resume_problem(view: RunView) -> str | None:
    """Why continuing this run would be unsafe (one line naming the file), or None.

    A torn last log line is fine (it is trimmed); a bad line in the middle, a record out of
    sequence or a missing image is not: continuing would renumber or overwrite iterations.
    """
    log = view.path / LOG_FILE
    for problem in view.problems:
        if problem.startswith(f"{log}: line "):
            return f"{problem.replace(' (ignored)', '')}; this run cannot be resumed"
    # The captioner-only control draws nothing (but a prompt start's first image).
    loop = view.config.get("loop")
    captions_only = isinstance(loop, dict) and loop.get("control") == "captioner-only"
    for number, record in enumerate(view.records):
        image = record.image
        last = number == len(view.records) - 1
        if record.index != number or not (image == image_name(number)
                                          or (image is None and (last or captions_only))):
            return (f"{log}: record {number + 1} is not a valid record of iteration {number}; "
                    f"this run cannot be resumed")
        if image and not (view.path / image).exists():
            return f"{view.path / image} is missing; this run cannot be resumed"
    last = next((r.image for r in reversed(view.records) if r.image), None)
    if last is not None:  # the image the run continues from must decode
        damage = decode_problem(view.path / last)
        if damage is not None:
            return f"{view.path / last} is damaged ({damage}); this run cannot be resumed"
    return None


def decode_problem(path: Path) -> str | None:
    """Why the image at `path` does not fully decode, or None when it does."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # noqa: BLE001 - any decoder complaint means "damaged"
        return str(error)
    return None
