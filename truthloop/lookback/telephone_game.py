"""The Telephone Game's layout (Mollah et al. 2025, github.com/mollahsabbir/Semantic-Drift-in-
Unified-Models): a sweep's fixed-length chains (`--generations N`) written as its published
scripts read them, and such a layout read back as a sweep that `truthloop report` reads.

    LAYOUT/text-first/gen-0.csv          the start prompts          (columns filename, caption)
    LAYOUT/text-first/gen-1/NAME.png     the images drawn from them
    LAYOUT/text-first/gen-2.csv          their captions
    ...                                  up to gen-N
    LAYOUT/image-first/gen-0/NAME.png    the start images
    LAYOUT/image-first/gen-1.csv         their captions
    LAYOUT/image-first/gen-2/NAME.png    the images drawn from those
    ...                                  up to gen-N

One chain is one row of every csv and one image of every folder, all under its `filename`. How
the scripts find them, and so what is written: `semantic-drift/mcd-sdr.py --data LAYOUT` reads
gen-0 to gen-20 of both folders (its MAX_GENERATIONS), every csv sorted by filename and matched
row by row (so every csv holds the same filenames), an image as NAME.png, else NAME.jpg, for a
filename NAME with any `.png`/`.jpg` taken out of it; the text-first filenames come from gen-0.csv,
the image-first ones from gen-1.csv. `semantic-drift/mgg.py --imagedir LAYOUT/text-first/` reads
`gen-{1,3,..,19}/{i}.png`, i the GenEval prompt's line: so a sweep's text-first chains are named
by their prompt's place in --prompts (0.png, 1.png, ...), its image-first chains by their image's
name. `prepare_dataset.py` writes generation 0 (ND400's captions and images) the same way.

Captions are untrusted text: the csv is RFC 4180 and UTF-8 (caption_folder.csv_record, the
writer of `truthloop caption --format csv`), so commas, quotes and line breaks come back exactly.
The script reads it as latin-1: ASCII captions are read as written, others as their UTF-8 bytes.

Export writes the layout whole under a hidden name and renames it into place (a kill leaves no
half layout); import builds the sweep directory the same way, each chain an ordinary run
directory written through store.RunWriter (its images read as `truthloop run` reads a start
image: images.load_input_image, RGB, but every pixel kept: a study's images are its data, and
a round trip gives them back as they were). Neither needs a model: an
imported sweep has no similarities until `truthloop measure` adds them; its runs cannot be
resumed (their models are not truthloop's).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from truthloop.caption_folder import COLUMNS, csv_record
from truthloop.config import RunConfig, chain_shape
from truthloop.record import Record, result_fields
from truthloop.store import (
    FORMAT_VERSION, INPUT_FILE, RunDirError, RunWriter, atomic_write_json, read_run,
    read_run_info,
)
from truthloop.sweep import state as st
from truthloop.sweep.spec import RUNS_DIR, SPEC_FILE, SPEC_FORMAT, SpecError, read_spec, trajectories
from truthloop.text import count, visible

TEXT_FIRST, IMAGE_FIRST = "text-first", "image-first"
CHAINS = (TEXT_FIRST, IMAGE_FIRST)
# The names of the scripts' first README (and measure-drift.py, since removed), read on import.
OLD_NAMES = {TEXT_FIRST: "captions-first", IMAGE_FIRST: "images-first"}
# The generations the published scripts read (mcd-sdr.py's MAX_GENERATIONS).
PAPER_GENERATIONS = 20
# run.json's record of where an imported chain came from, and what it was called there.
IMPORTED_KEY = "telephone_game"


class TelephoneGameError(Exception):
    """One line for the user."""


def is_text(chain: str, generation: int) -> bool:
    """Whether `generation` of a chain is a caption (a csv) rather than an image (a folder)."""
    return (generation % 2 == 0) == (chain == TEXT_FIRST)


def image_file(filename: str) -> str:
    """The file a chain's image is under, as the scripts look it up (mcd-sdr.py open_image: any
    `.png` or `.jpg` taken out of the filename, then `.png`)."""
    return filename.replace(".png", "").replace(".jpg", "") + ".png"


def _entry(chain: str, generation: int) -> str:
    return f"gen-{generation}.csv" if is_text(chain, generation) else f"gen-{generation}"


@dataclass
class Chain:
    """One chain of the layout: generation -> its caption (text generations) or the path of
    its image file (image generations)."""

    kind: str
    filename: str
    texts: dict[int, str] = field(default_factory=dict)
    images: dict[int, Path] = field(default_factory=dict)


# -- a sweep to the layout ------------------------------------------------------------------------
def chains_of_run(run_dir: Path, kind: str, generations: int, filename: str) -> Chain | str:
    """The chain a finished fixed-length run holds, or why it cannot be exported (one phrase)."""
    try:
        view = read_run(run_dir)
    except RunDirError as error:
        return str(error)
    status = view.status
    records = view.records
    needed, draws_last = chain_shape(generations, kind == IMAGE_FIRST)
    chain = Chain(kind, filename)
    complete = status == "max_iters" and len(records) == needed and all(
        (record.image is not None) == (number < needed - 1 or draws_last)
        for number, record in enumerate(records))
    if not complete:
        done = _generations_done(records, kind)
        return f"has {done} of its {generations} generations ({status})"
    if view.problems:
        return view.problems[0]
    if kind == IMAGE_FIRST:
        chain.images[0] = view.path / INPUT_FILE
        for record in records:
            chain.texts[2 * record.index + 1] = _caption(record)
            if record.image:
                chain.images[2 * record.index + 2] = view.path / record.image
    else:
        for record in records:
            if record.index == 0:
                chain.texts[0] = record.fed_prompt
            else:
                chain.texts[2 * record.index] = _caption(record)
            if record.image:
                chain.images[2 * record.index + 1] = view.path / record.image
    if kind == IMAGE_FIRST and not chain.images[0].is_file():
        return f"has no {INPUT_FILE} (its start image)"
    return chain


def _caption(record: Record) -> str:
    """What the captioner said (the chain's text; with --clauses the image was drawn from its
    first clauses)."""
    return record.caption if record.caption is not None else record.compared


def _generations_done(records: list[Record], kind: str) -> int:
    if not records:
        return 0
    last = records[-1]
    if kind == IMAGE_FIRST:
        return 2 * last.index + (2 if last.image else 1)
    return 2 * last.index + (1 if last.image else 0)


def _safe(stem: str) -> str:
    """A file name part the scripts and shells take as is: no dots (so no `.png` or `.jpg` inside
    that open_image would cut out), no spaces or slashes."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "chain"


def export_layout(sweep_dir: Path, out: Path) -> dict[str, Any]:
    """Write the sweep's finished chains as the Telephone Game's layout under `out` (one layout
    per grid point, in a folder named after it, when the grid has more than one). Returns what
    was written: {"generations", "layouts": [{"path", "point", "chains": {kind: n}}],
    "skipped": [one line per chain left out]}. TelephoneGameError when nothing can be written."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    try:
        spec = read_spec(sweep_dir)
    except SpecError as error:
        raise TelephoneGameError(str(error)) from None
    if spec is None:
        raise TelephoneGameError(f"{sweep_dir} is not a sweep directory (no {SPEC_FILE})")
    generations = ((spec.get("config") or {}).get("loop") or {}).get("generations") or 0
    if not generations:
        raise TelephoneGameError(
            f"{sweep_dir} was not run with --generations: its chains end where they repeat, "
            f"each at its own length, and the Telephone Game layout needs every chain at every "
            f"generation (run the sweep with --generations {PAPER_GENERATIONS})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TelephoneGameError(f"{out} already exists and is not empty; name a new folder")
    trajs = trajectories(spec)
    seeds = len(spec.get("seeds") or [])
    points: dict[str, list[Any]] = {}
    for trajectory in trajs:
        points.setdefault(_point_name(trajectory.settings), []).append(trajectory)
    # Trajectories go start by start (spec.trajectories), each start's seeds × grid points in
    # turn; a prompt's place among the prompts is its chain's name.
    per_start = len(trajs) // max(1, len(spec["starts"]))
    prompt_at = [None] * len(spec["starts"])
    for position, number in enumerate(n for n, s in enumerate(spec["starts"]) if "prompt" in s):
        prompt_at[number] = position
    skipped: list[str] = []
    layouts: list[tuple[str, dict[str, list[Chain]]]] = []
    for point, members in points.items():
        chains: dict[str, list[Chain]] = {TEXT_FIRST: [], IMAGE_FIRST: []}
        taken: dict[str, set[str]] = {TEXT_FIRST: set(), IMAGE_FIRST: set()}
        for trajectory in members:
            kind = IMAGE_FIRST if "image" in trajectory.start else TEXT_FIRST
            run_dir = trajectory.run_dir(sweep_dir)
            stem = (str(prompt_at[trajectory.number // per_start]) if kind == TEXT_FIRST
                    else _safe(Path(trajectory.start["image"]).stem))
            filename = _filename(run_dir, stem, trajectory.seed if seeds > 1 else None,
                                 taken[kind])
            chain = chains_of_run(run_dir, kind, generations, filename)
            if isinstance(chain, str):
                skipped.append(f"{trajectory.name}: {chain} (left out)")
                continue
            taken[kind].add(image_file(filename))
            chains[kind].append(chain)
        if any(chains.values()):
            layouts.append((point, chains))
    if not layouts:
        first = f": {skipped[0]}" if skipped else ""
        raise TelephoneGameError(f"{sweep_dir} has no finished chain to export{first}")
    staging = out.parent / f".{out.name}.writing-{os.getpid()}"
    written = []
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for point, chains in layouts:
            root = staging / point if len(points) > 1 else staging
            for kind, members in chains.items():
                if members:
                    _write_chains(root / kind, kind, generations, members)
            written.append({"path": out / point if len(points) > 1 else out, "point": point,
                            "chains": {kind: len(members) for kind, members in chains.items()
                                       if members}})
        if out.is_dir():
            out.rmdir()  # empty (checked above): the layout takes its place
        os.rename(staging, out)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise TelephoneGameError(f"cannot write {out}: {error.strerror or error}") from None
    except BaseException:  # Ctrl-C: no half layout left behind, under any name
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"generations": generations, "layouts": written, "skipped": skipped}


def _point_name(settings: dict[str, Any]) -> str:
    """A grid point as a folder name: `generator-sdxl_captioner-llava-1.5`; `all` without one."""
    parts = [f"{name}-{'none' if value == '' else value}" for name, value in settings.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts)) or "all"


def _filename(run_dir: Path, stem: str, seed: int | None, taken: set[str]) -> str:
    """The chain's filename: an imported chain's own; else `stem` (its prompt's place in
    --prompts, as mgg.py finds GenEval's, or its image's name) and the seed when the sweep has
    several, made unique among the layout's."""
    try:
        imported = read_run_info(run_dir).get(IMPORTED_KEY) or {}
    except (OSError, ValueError, AttributeError):
        imported = {}
    if isinstance(imported, dict) and isinstance(imported.get("filename"), str) \
            and imported["filename"]:
        return imported["filename"]
    if seed is not None:
        stem += f"-s{seed}"
    name, number = stem, 1
    while image_file(name + ".png") in taken:
        number += 1
        name = f"{stem}-{number}"
    return name + ".png"


def _write_chains(folder: Path, kind: str, generations: int, chains: list[Chain]) -> None:
    folder.mkdir(parents=True)
    chains = sorted(chains, key=lambda chain: chain.filename)  # as the scripts sort them
    for generation in range(generations + 1):
        if is_text(kind, generation):
            data = csv_record(*COLUMNS) + b"".join(
                csv_record(chain.filename, chain.texts[generation]) for chain in chains)
            (folder / _entry(kind, generation)).write_bytes(data)
        else:
            images = folder / _entry(kind, generation)
            images.mkdir()
            for chain in chains:
                _place(chain.images[generation], images / image_file(chain.filename))


def _place(source: Path, target: Path) -> None:
    """The run's PNG, hard-linked where the file system can (a sweep's images are gigabytes),
    else copied. The scripts only read them."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# -- the layout to a sweep ------------------------------------------------------------------------
def read_layout(layout: Path) -> tuple[int, dict[str, list[Chain]]]:
    """The layout's generations and chains by kind; TelephoneGameError (one line naming the file)
    for anything the scripts could not read as the paper's layout."""
    layout = Path(layout)
    if not layout.is_dir():
        raise TelephoneGameError(f"{layout}: no such folder")
    folders = {}
    for kind in CHAINS:
        for name in (kind, OLD_NAMES[kind]):
            if (layout / name).is_dir():
                folders[kind] = layout / name
                break
    if not folders:
        if (layout / "gen-0.csv").exists() or (layout / "gen-0").is_dir():
            raise TelephoneGameError(f"{layout} is one chain folder; name the folder that holds "
                                     f"{TEXT_FIRST}/ and {IMAGE_FIRST}/")
        raise TelephoneGameError(f"{layout} has no {TEXT_FIRST}/ or {IMAGE_FIRST}/ folder (the "
                                 f"Telephone Game layout: gen-0.csv, gen-1/, ... in each)")
    found = {kind: _read_chains(folder, kind) for kind, folder in folders.items()}
    lengths = {kind: generations for kind, (generations, _) in found.items()}
    if len(set(lengths.values())) > 1:
        raise TelephoneGameError(
            f"{layout}: {TEXT_FIRST} has {count(lengths[TEXT_FIRST], 'generation')} and "
            f"{IMAGE_FIRST} {lengths[IMAGE_FIRST]}; a sweep has one --generations: import each "
            f"folder's chains on their own")
    generations = next(iter(lengths.values()))
    return generations, {kind: chains for kind, (_, chains) in found.items()}


def _read_chains(folder: Path, kind: str) -> tuple[int, list[Chain]]:
    found: dict[int, list[Path]] = {}
    for entry in folder.iterdir():
        match = re.fullmatch(r"gen-(0|[1-9][0-9]*)(\.csv)?", entry.name)
        if match:
            found.setdefault(int(match.group(1)), []).append(entry)
    if not found:
        raise TelephoneGameError(f"{folder} has no gen-0 (the start of its chains)")
    generations = max(found)
    if generations < 1:
        raise TelephoneGameError(f"{folder} has gen-0 alone; a chain needs gen-1 at least")
    for generation in range(generations + 1):
        want = folder / _entry(kind, generation)
        text = is_text(kind, generation)
        if want.is_file() if text else want.is_dir():
            continue
        what = (f"captions, as a csv file named {want.name}" if text
                else f"images, as a folder named {want.name}")
        if generation in found:
            raise TelephoneGameError(f"{found[generation][0]}: in {folder.name}, "
                                     f"gen-{generation} holds {what}")
        raise TelephoneGameError(f"{want} is missing ({folder.name} goes to gen-{generations}; "
                                 f"gen-{generation} holds {what})")
    first = 0 if kind == TEXT_FIRST else 1  # where the scripts take the filenames from
    rows = {g: _read_csv(folder / _entry(kind, g)) for g in range(generations + 1)
            if is_text(kind, g)}
    names = list(rows[first])
    chains = {name: Chain(kind, name) for name in names}
    taken: dict[str, str] = {}
    for name in names:
        other = taken.setdefault(image_file(name), name)
        if other != name:
            raise TelephoneGameError(f"{folder / _entry(kind, first)}: {name!r} and {other!r} "
                                     f"name the same image file ({image_file(name)})")
    for generation, captions in rows.items():
        where = folder / _entry(kind, generation)
        missing = [name for name in names if name not in captions]
        extra = [name for name in captions if name not in chains]
        if missing or extra:
            wrong = (f"has no row for {missing[0]!r}" if missing
                     else f"has {extra[0]!r}, which {_entry(kind, first)} has not")
            raise TelephoneGameError(f"{where} {wrong} (every csv of a folder holds the same "
                                     f"filenames)")
        for name, caption in captions.items():
            chains[name].texts[generation] = caption
    for generation in range(generations + 1):
        if is_text(kind, generation):
            continue
        images = folder / _entry(kind, generation)
        for name in names:
            stem = name.replace(".png", "").replace(".jpg", "")
            path = next((images / f"{stem}{suffix}" for suffix in (".png", ".jpg")
                         if (images / f"{stem}{suffix}").is_file()), None)
            if path is None:
                raise TelephoneGameError(f"{images} has no image of {name!r} ({stem}.png or "
                                         f"{stem}.jpg)")
            chains[name].images[generation] = path
    return generations, sorted(chains.values(), key=lambda chain: chain.filename)


def _read_csv(path: Path) -> dict[str, str]:
    """filename -> caption, in the file's order."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise TelephoneGameError(f"{path}: cannot read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise TelephoneGameError(f"{path} is not UTF-8 text (line {line})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or "filename" not in header or "caption" not in header:
            raise TelephoneGameError(f"{path} has no header with the columns filename and "
                                     f"caption (its first line: "
                                     f"{visible(text.splitlines()[0][:60]) if text else 'none'})")
        at, said = header.index("filename"), header.index("caption")
        rows: dict[str, str] = {}
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise TelephoneGameError(f"{path}, record {reader.line_num}: {len(row)} "
                                         f"columns, not the header's {len(header)}")
            name = row[at]
            if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
                raise TelephoneGameError(f"{path}, record {reader.line_num}: {name!r} is not a "
                                         f"file name")
            if name in rows:
                raise TelephoneGameError(f"{path}: {name!r} is there twice")
            rows[name] = row[said]
    except csv.Error as error:
        raise TelephoneGameError(f"{path} is not a csv this reads (line {reader.line_num}: "
                                 f"{error})") from None
    if not rows:
        raise TelephoneGameError(f"{path} has no chains (a header and no rows)")
    return rows


def import_layout(layout: Path, sweep_dir: Path, generator: str = "unknown",
                  captioner: str = "unknown") -> dict[str, Any]:
    """Make `sweep_dir` a sweep of the layout's chains, one run directory each (generations
    as --generations; `generator` and `captioner`: the names the report gives the pair). Returns
    {"generations", "chains": {kind: n}, "trajectories"}. TelephoneGameError (one line) for a
    layout the scripts could not read, an image that does not decode, a sweep_dir in use; nothing
    is left in sweep_dir then."""
    from truthloop.images import BadImage, load_input_image

    layout, sweep_dir = Path(layout), Path(sweep_dir)
    for side, name in (("--generator", generator), ("--captioner", captioner)):
        if not name.strip() or "+" in name or not name.isprintable():
            raise TelephoneGameError(f"{side} {visible(name)!r}: give the model's name (no '+')")
    if sweep_dir.exists() and (not sweep_dir.is_dir() or any(sweep_dir.iterdir())):
        raise TelephoneGameError(f"{sweep_dir} already exists and is not empty; name a new "
                                 f"folder")
    generations, chains = read_layout(layout)
    config = RunConfig()
    config.models.generator, config.models.captioner = generator, captioner
    config.loop.generations = generations
    ordered = chains.get(IMAGE_FIRST, []) + chains.get(TEXT_FIRST, [])
    starts = [{"image": str(chain.images[0].resolve())} if chain.kind == IMAGE_FIRST
              else {"prompt": chain.texts[0]} for chain in ordered]
    spec = {"format": SPEC_FORMAT, "starts": starts, "seeds": [config.generate.seed], "grid": {},
            "config": config.to_dict(),
            "imported": {"from": str(layout.resolve()), "layout": "telephone-game"}}
    trajs = trajectories(spec)
    staging = sweep_dir.parent / f".{sweep_dir.name}.importing-{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / RUNS_DIR).mkdir(parents=True)
        atomic_write_json(staging / SPEC_FILE, spec)
        for trajectory, chain in zip(trajs, ordered):
            _write_run(trajectory.run_dir(staging), trajectory.config, chain, layout,
                       generations, lambda path: load_input_image(path, max_side=None))
        st.write_table(staging, st.table(staging, trajs))
        if sweep_dir.is_dir():
            sweep_dir.rmdir()  # empty (checked above)
        os.rename(staging, sweep_dir)
    except BadImage as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise TelephoneGameError(str(error)) from None
    except RunDirError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise TelephoneGameError(str(error).replace(str(staging), str(sweep_dir))) from None
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise TelephoneGameError(f"cannot write {sweep_dir}: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"generations": generations, "trajectories": len(trajs),
            "chains": {kind: len(members) for kind, members in chains.items()}}


def _write_run(run_dir: Path, config: dict[str, Any], chain: Chain, layout: Path,
               generations: int, load: Any) -> None:
    """One chain as a run directory, through the store's writer: run.json (the config, and where
    the chain came from), input.png (image-first), images/ and log.jsonl, summary.json."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = {"format": FORMAT_VERSION, "config": config, "created": now,
            IMPORTED_KEY: {"layout": str(layout.resolve()), "chain": chain.kind,
                           "filename": chain.filename, "generations": generations}}
    from_image = chain.kind == IMAGE_FIRST
    writer = RunWriter.create(run_dir, info, load(chain.images[0]) if from_image else None)
    try:
        records = []
        needed, _ = chain_shape(generations, from_image)
        for index in range(needed):
            if from_image:
                caption = chain.texts[2 * index + 1]
                drawn = 2 * index + 2
            else:
                caption = None if index == 0 else chain.texts[2 * index]
                drawn = 2 * index + 1
            prompt = chain.texts[0] if caption is None else caption
            record = Record(index=index, caption=caption, compared=prompt, fed_prompt=prompt)
            if drawn in chain.images:
                record.image = writer.write_image(index, load(chain.images[drawn]))
            writer.append_record(record)
            records.append(record)
        summary = {"status": "max_iters", "started": now, "finished": now, "imported": True,
                   **result_fields(records), "generations": generations}
        writer.write_summary(summary)
    finally:
        writer.close()
