"""`truthloop caption PATH...`: every image under the paths captioned once, resumably.

Core only (no torch, no Textual): finding the images, knowing which are already captioned,
writing captions so that a kill at any moment leaves no torn file, and the progress lines. The
captioner is handed in as a function of a list of images (caption_command.py loads it through
ml/backends.py, the run's own loading path).

Where captions go:
- txt (the default): `NAME.txt` beside each image `NAME.ext`, written to a hidden partial file
  and renamed into place, so a `.txt` that exists is whole. An image whose `.txt` exists is done.
- csv / jsonl: one table (`--out F`): csv with the columns filename, caption (the Telephone
  Game's `gen-k.csv`), jsonl with one {"filename", "caption"} object a line. Whole records are
  appended; a killed run can leave at most a torn last record, which the next run drops before
  appending. An image whose filename is in the table is done.

Batches are fixed by position in the sorted list of all images (images 0..N-1, N..2N-1, ...),
done or not, and a batch with any image left to caption is captioned whole: batched arithmetic
depends on what else is in the batch, so this is what makes a resumed run write the same
captions as an unbroken one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from truthloop.errors import OneLineError
from truthloop.text import count, duration, first_line, visible

# The images a folder is searched for, by name (any case). A file named otherwise is not looked
# at, so a folder's own caption files (and anything else beside the images) never count as bad.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FORMATS = ("txt", "csv", "jsonl")
COLUMNS = ("filename", "caption")
# A caption being written beside its image, before its rename to NAME.txt: hidden, and named
# after the caption file, so a rerun writes (and renames) the same one.
PARTIAL_SUFFIX = ".truthloop-partial"

CaptionMany = Callable[[list[Any]], list[str]]


class CaptionInputError(OneLineError):
    """Bad input, found before any model loads: one line, exit status 2."""


@dataclass(frozen=True)
class ImageFile:
    path: Path  # where it is, as reached from the PATH given
    name: str   # relative to the common folder of the PATHs, with '/': the table's filename


def find_images(paths: Sequence[str]) -> list[ImageFile]:
    """Every image file (IMAGE_EXTENSIONS) given or under the folders given, recursively, in
    name order. Hidden files and folders (a leading '.') are passed over inside a folder, and
    symbolic links to folders are not followed (a link can make a loop); a link to a file is
    read. A folder that cannot be listed is a CaptionInputError, as is a path that is not
    there, and finding no image at all."""
    found: dict[str, Path] = {}  # absolute path -> as given
    bases: list[str] = []
    passed_over: list[str] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise CaptionInputError(f"{visible(given)}: no such file or folder")
        if path.is_dir():
            bases.append(os.path.abspath(path))
            for folder, dirs, files in os.walk(path, onerror=_unreadable):
                dirs[:] = sorted(name for name in dirs if not name.startswith("."))
                for name in files:
                    if not name.startswith(".") and _is_image_name(name):
                        found.setdefault(os.path.abspath(os.path.join(folder, name)),
                                         Path(folder) / name)
        else:
            bases.append(os.path.dirname(os.path.abspath(path)))
            if _is_image_name(path.name):
                found.setdefault(os.path.abspath(path), path)
            else:  # `truthloop caption photos/*` passes the captions over too: not an error
                passed_over.append(given)
    if not found:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        if passed_over and len(passed_over) == len(paths):
            raise CaptionInputError(f"{visible(passed_over[0])} is not named as an image "
                                    f"({kinds})")
        shown = ", ".join(visible(p) for p in paths)
        raise CaptionInputError(f"no images in {shown} (looked for {kinds}, in subfolders "
                                f"too)")
    root = os.path.commonpath(bases)
    images = [ImageFile(path, Path(os.path.relpath(absolute, root)).as_posix())
              for absolute, path in found.items()]
    return sorted(images, key=lambda image: image.name)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _unreadable(error: OSError) -> None:
    raise CaptionInputError(f"{visible(str(error.filename))}: cannot list this folder "
                            f"({error.strerror})")


# -- where captions go -------------------------------------------------------------------------
class TextFiles:
    """NAME.txt beside each image NAME.ext."""

    def __init__(self, images: list[ImageFile]):
        by_caption: dict[str, ImageFile] = {}
        for image in images:
            target = os.path.abspath(caption_file(image.path))
            other = by_caption.setdefault(target, image)
            if other is not image:
                raise CaptionInputError(
                    f"{visible(str(other.path))} and {visible(str(image.path))} would both be "
                    f"captioned in {visible(str(caption_file(image.path)))}: rename one, or "
                    f"write one table (--format csv --out FILE)")
        self.done = {image.name for image in images if caption_file(image.path).exists()}
        for folder in sorted({image.path.parent for image in images
                              if image.name not in self.done}):
            if not os.access(folder, os.W_OK | os.X_OK):
                raise CaptionInputError(
                    f"cannot write captions beside the images in {visible(str(folder))} "
                    f"(permission denied): write one table instead (--format csv --out FILE)")
        self.notes: list[str] = []
        self.where = "beside the images"

    def write(self, image: ImageFile, caption: str) -> None:
        target = caption_file(image.path)
        partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
        with open(partial, "wb") as file:
            file.write(caption.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target)

    def close(self) -> None:
        pass


def caption_file(path: Path) -> Path:
    return path.with_suffix(".txt")


class Table:
    """One CSV or JSONL file of whole records, appended to; what it holds is done."""

    def __init__(self, path: Path, form: str):
        self.path = path
        self.form = form
        self.where = f"in {visible(str(path))}"
        self.notes: list[str] = []
        self.file: Any = None
        if path.is_dir():
            raise CaptionInputError(f"--out {visible(str(path))} is a folder; name a file")
        if not path.parent.is_dir():
            raise CaptionInputError(f"--out {visible(str(path))}: no such folder "
                                    f"{visible(str(path.parent))}")
        self.done: set[str] = set()
        self.whole = 0  # bytes of whole records (a killed run may leave a torn one after them)
        self.size = 0
        if path.exists():
            try:
                data = path.read_bytes()
            except OSError as error:
                raise CaptionInputError(f"--out {visible(str(path))}: cannot read "
                                        f"({error.strerror})") from None
            self.size = len(data)
            read = _read_csv if form == "csv" else _read_jsonl
            self.done, self.whole = read(path, data)
            if self.whole < self.size:
                self.notes.append(f"{visible(str(path))}: dropped a torn last line (a run "
                                  f"stopped while writing it); its image is captioned again")
        elif not os.access(path.parent, os.W_OK | os.X_OK):
            raise CaptionInputError(f"--out {visible(str(path))}: cannot write in "
                                    f"{visible(str(path.parent))} (permission denied)")

    def _open(self) -> None:
        if self.form == "csv" and self.whole == 0:
            # A new table, or a header a killed run cut short: the header written whole, then
            # renamed into place, so the table on disk always starts with it.
            partial = self.path.with_name(f".{self.path.name}{PARTIAL_SUFFIX}")
            with open(partial, "wb") as file:
                file.write(self._record(*COLUMNS))
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.path)
        elif self.whole < self.size:
            os.truncate(self.path, self.whole)
        self.file = open(self.path, "ab", buffering=0)

    def _record(self, name: str, caption: str) -> bytes:
        if self.form == "csv":
            return csv_record(name, caption)
        record = {"filename": name, "caption": caption}
        try:
            return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # such a name, in JSON's own escapes: still one valid line
            return (json.dumps(record) + "\n").encode("ascii")

    def write(self, image: ImageFile, caption: str) -> None:
        if self.file is None:
            self._open()
        record = memoryview(self._record(image.name, caption))
        while record:  # one write, unless the system takes it in parts
            record = record[os.write(self.file.fileno(), record):]
        os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        elif self.whole < self.size:  # nothing written this time: the torn line goes anyway
            self._open()
            self.close()


def csv_record(name: str, caption: str) -> bytes:
    """One record of a caption table (the Telephone Game's `gen-k.csv`): RFC 4180 (quoted where
    a field holds a comma, a quote or a line break; '\\r\\n' after it), UTF-8. A file name that is
    not UTF-8 on disk is written as its own bytes (and read back the same way), so a rerun of
    `truthloop caption` knows it."""
    text = io.StringIO()
    csv.writer(text).writerow((name, caption))
    return text.getvalue().encode("utf-8", "surrogateescape")


def _lines(data: bytes, offsets: list[int]) -> Iterator[str]:
    """The lines of `data` (each with its '\\n'), noting in offsets[0] the bytes handed out."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        offsets[0] = end
        yield data[start:end].decode("utf-8", "surrogateescape")
        start = end


def _read_csv(path: Path, data: bytes) -> tuple[set[str], int]:
    """The filenames of a caption CSV's whole records, and the bytes they take (header
    included). Every record this writes ends with '\\r\\n'; a last one cut short ends
    otherwise, or inside its quotes."""
    whole_end = data.rfind(b"\n") + 1
    done: set[str] = set()
    offsets = [0]
    reader = csv.reader(_lines(data[:whole_end], offsets), strict=True)
    good = 0
    try:
        for number, row in enumerate(reader):
            if number == 0:
                if tuple(row) != COLUMNS:
                    raise CaptionInputError(
                        f"--out {visible(str(path))} is not a caption table (its first line is "
                        f"not 'filename,caption'): name a new file, or that of an earlier "
                        f"`truthloop caption --format csv`")
            elif len(row) != 2:
                raise CaptionInputError(f"--out {visible(str(path))}, record {number + 1}: "
                                        f"{len(row)} columns, not filename and caption")
            else:
                done.add(row[0])
            good = offsets[0]
    except csv.Error as error:
        if offsets[0] < whole_end:  # not at the end of the file: not a cut-off record
            raise CaptionInputError(f"--out {visible(str(path))} is not a CSV this reads "
                                    f"({error}); name a new file") from None
    if good == 0 and data and not COLUMNS_LINE.startswith(data[:len(COLUMNS_LINE)]):
        raise CaptionInputError(f"--out {visible(str(path))} is not a caption table (its "
                                f"first line is not 'filename,caption'): name a new file")
    return done, good


COLUMNS_LINE = b"filename,caption\r\n"


def _read_jsonl(path: Path, data: bytes) -> tuple[set[str], int]:
    """The filenames of a caption JSONL's whole lines, and the bytes they take. A line cut
    short is the last one, without its '\\n'."""
    whole_end = data.rfind(b"\n") + 1
    done: set[str] = set()
    for number, line in enumerate(data[:whole_end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("filename"), str)
                and isinstance(record.get("caption"), str)):
            raise CaptionInputError(f"--out {visible(str(path))}, line {number}: not a "
                                    f"{{\"filename\", \"caption\"}} object; name a new file, or "
                                    f"that of an earlier `truthloop caption --format jsonl`")
        done.add(record["filename"])
    return done, whole_end


def open_output(images: list[ImageFile], form: str, out: str | None) -> TextFiles | Table:
    if form == "txt":
        return TextFiles(images)
    return Table(Path(out), form)  # type: ignore[arg-type]  # the command checked --out


def output_format(form: str | None, out: str | None) -> str:
    """--format, or what --out's name says; a CaptionInputError for a pair that cannot be."""
    if form is None and out is not None:
        suffix = Path(out).suffix.lower()
        form = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
        if form is None:
            raise CaptionInputError(f"--out {visible(out)}: say --format csv or --format jsonl "
                                    f"(or name the file .csv or .jsonl)")
    form = form or "txt"
    if form == "txt" and out is not None:
        raise CaptionInputError("--out is for --format csv or jsonl; --format txt writes each "
                                "caption beside its image")
    if form != "txt" and out is None:
        raise CaptionInputError(f"--format {form} writes one file: name it with --out FILE")
    return form


# -- captioning --------------------------------------------------------------------------------
@dataclass
class Tally:
    captioned: int = 0
    done_before: int = 0
    bad: list[str] = field(default_factory=list)  # one line per image that could not be read


def caption_all(images: list[ImageFile], output: TextFiles | Table, caption_many: CaptionMany,
                batch: int, progress: "Progress", load: Callable[[Path], Any]) -> Tally:
    """Caption every image `output` does not already hold, `batch` at a time (batches fixed by
    position among all images), writing each caption as its batch ends. `load(path)` reads an
    image or raises ValueError with one line naming it (images.load_input_image: BadImage);
    such an image is named through `progress` and skipped."""
    tally = Tally(done_before=sum(1 for image in images if image.name in output.done))
    batches = [images[start:start + batch] for start in range(0, len(images), batch)]
    work = [group for group in batches if any(image.name not in output.done for image in group)]
    progress.start(len(images) - tally.done_before, tally.done_before)

    def read(group: list[ImageFile]) -> list[tuple[ImageFile, Any, str | None]]:
        out = []
        for image in group:
            try:
                out.append((image, load(image.path), None))
            except ValueError as error:  # images.BadImage: one line naming the file
                out.append((image, None, str(error)))
            except Exception as error:  # noqa: BLE001 - a decoder's own failure: this file's
                out.append((image, None, f"{image.path} cannot be read as an image "
                                         f"({type(error).__name__}: {first_line(error)})"))
        return out

    with ThreadPoolExecutor(max_workers=1) as reader:  # the next batch read while this one runs
        ahead: Future | None = reader.submit(read, work[0]) if work else None
        for index in range(len(work)):
            loaded = ahead.result()  # type: ignore[union-attr]
            ahead = reader.submit(read, work[index + 1]) if index + 1 < len(work) else None
            new = [(image, picture) for image, picture, error in loaded
                   if error is None and image.name not in output.done]
            for image, _, error in loaded:
                if error is not None and image.name not in output.done:
                    tally.bad.append(error)
                    progress.bad(error)
            if new:
                good = [(image, picture) for image, picture, error in loaded if error is None]
                captions = caption_many([picture for _, picture in good])
                for (image, _), caption in zip(good, captions):
                    if image.name not in output.done:
                        output.write(image, caption)
                        tally.captioned += 1
            progress.advance(sum(1 for image, _, _ in loaded if image.name not in output.done))
    return tally


# -- what the user sees ------------------------------------------------------------------------
class Progress:
    """On a terminal (stderr), a Rich bar: images done of those to caption, images per second
    and the time left. Elsewhere (a log, CI), a plain line every `every` seconds. Bad images are
    one line each either way. Nothing shown is ever read as markup (file names are untrusted
    too: their control characters are made visible)."""

    def __init__(self, stream: Any = None, every: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.bar: Any = None
        self.task: Any = None
        self.total = 0
        self.done = 0
        self.clock = self.last_line = time.monotonic()
        self.done_at_clock = 0

    def _terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (ValueError, OSError):
            return False

    def line(self, text: str) -> None:
        if self.bar is not None:
            from rich.text import Text

            self.bar.console.print(Text(text), soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, total: int, done_before: int) -> None:
        self.total, self.done = total, 0
        self.restart_clock()
        if total:
            before = f" ({count(done_before, 'image')} already captioned)" if done_before else ""
            self.line(f"captioning {count(total, 'image')}{before}")
        if total and self._terminal():
            from rich.console import Console
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn,
            )

            console = Console(file=self.stream, markup=False, highlight=False, soft_wrap=True)
            # Rich's rate and time left count only the time between images, so the models'
            # loading (on the first image) does not slow the estimate.
            self.bar = Bar(TextColumn("captioning"), BarColumn(), MofNCompleteColumn(),
                           _rate_column(), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("captioning", total=total)

    def restart_clock(self) -> None:
        """Rates count from here: the models are loaded."""
        self.clock = self.last_line = time.monotonic()
        self.done_at_clock = self.done

    def advance(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.advance(self.task, images)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every and self.done < self.total:
            self.last_line = now
            self.line(self.status(self.done - self.done_at_clock, now - self.clock))

    def status(self, since: int, elapsed: float) -> str:
        """`120/1000 images  3.4 images/s  4m20s left`, from `since` images in `elapsed` s."""
        rate = since / elapsed if elapsed > 0 else 0.0
        left = f"  {duration((self.total - self.done) / rate)} left" if rate > 0 else ""
        return f"{self.done}/{self.total} images  {_rate_text(rate)}{left}"

    def bad(self, message: str) -> None:
        self.line(f"truthloop: skipped: {visible(message)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _rate_text(rate: float) -> str:
    if rate <= 0:
        return ""
    return f"{rate:.1f} images/s" if rate >= 1 else f"{1 / rate:.1f} s/image"


def _rate_column() -> Any:
    """Rich's estimate of images per second (its speed over the last half-minute), as text."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(_rate_text(task.speed or 0.0))

    return RateColumn()


def summary(tally: Tally, where: str, seconds: float) -> str:
    """The last line: `captioned 997 images, 3 already captioned, 1 bad image (named above), in
    2m13s; captions beside the images`."""
    parts = [f"captioned {count(tally.captioned, 'image')}",
             f"{tally.done_before} already captioned"]
    if tally.bad:
        parts.append(f"{count(len(tally.bad), 'bad image')} (named above)")
    return f"{', '.join(parts)}, in {duration(seconds)}; captions {where}"
