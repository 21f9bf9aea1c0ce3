"""`truthloop sweep` and `truthloop atlas`: their arguments and what they do. cli.py registers
them (`add_parsers`) and calls `cmd_sweep` / `cmd_atlas`; errors come back as `CommandError`, one
line each, which cli turns into `truthloop: error: ...` and the exit code.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from truthloop.config import ConfigError, RunConfig, options_given
from truthloop.named_measures import EMBEDDERS, MeasureInputError, embedders_named
from truthloop.store import atomic_write_json
from truthloop.sweep import missing_extras
from truthloop.families import GENERATORS
from truthloop.sweep.spec import (
    GRID_FIELDS, IMAGE_SUFFIXES, LOCK_FILE, SPEC_FILE, SpecError, difference, find_images, make_spec,
    parse_grid, parse_seeds, read_prompts, read_spec, trajectories,
)
from truthloop.text import count, visible


class CommandError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def add_parsers(sub: Any, add_config_options: Callable[[argparse.ArgumentParser], None]) -> None:
    sweep = sub.add_parser(
        "sweep", help="many trajectories on Ray: images/prompts × seeds × a grid of settings",
        description="Run one trajectory per start × seed × grid point, spread over Ray workers "
                    "(one per GPU), each an ordinary run directory under SWEEP_DIR/runs/. "
                    "The same command again continues the sweep.")
    sweep.add_argument("sweep_dir", metavar="SWEEP_DIR")
    sweep.add_argument("--images", nargs="+", metavar="PATH", default=[],
                       help="start images: files, or folders (their image files)")
    sweep.add_argument("--prompts", metavar="FILE", help="start prompts, one a line")
    sweep.add_argument("--seeds", help="seeds: 0-15, 1,5,9 or a mix (default: --seed, 42)")
    sweep.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                       help=f"vary a setting: {', '.join(GRID_FIELDS)} (repeatable)")
    sweep.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="Ray cluster to join (default $RAY_ADDRESS; none: start Ray here)")
    sweep.add_argument("--workers", type=int, help="worker processes (default: one per GPU, "
                       "or one without GPUs)")
    sweep.add_argument("--gpus", type=int, help="GPUs Ray may use on this machine (local only)")
    sweep.add_argument("--batch", type=int, default=1, metavar="N",
                       help="each worker runs N trajectories at a time in lockstep, drawing and "
                            "captioning them in batches, for every pair (sd: compiled on GPUs "
                            "unless --no-compile; sd + clip-interrogator at 16: ~2.2x the images "
                            "per GPU-second); a "
                            "trajectory's prompts may differ from its run alone; default 1: "
                            "exactly `truthloop run`")
    sweep.add_argument("--exact", action="store_true",
                       help="one trajectory at a time, each exactly `truthloop run` (--batch 1; "
                            "default)")
    sweep.add_argument("--embedder", action="append", default=[], metavar="NAME",
                       choices=tuple(EMBEDDERS),
                       help="at the end, measure every trajectory again with this embedder "
                            "(`truthloop measure`; repeatable): " + ", ".join(EMBEDDERS))
    sweep.add_argument("--no-atlas", dest="atlas", action="store_false",
                       help="do not write the atlas at the end")
    sweep.add_argument("--max-restarts", type=int, default=8, help=argparse.SUPPRESS)
    # module:function of a backend factory, for tests (fake models a worker builds by name).
    sweep.add_argument("--backend", help=argparse.SUPPRESS)
    add_config_options(sweep)

    atlas = sub.add_parser("atlas", help="the attractors and motifs of a sweep "
                           "(atlas.json, atlas.png, atlas.html)")
    atlas.add_argument("sweep_dir", metavar="SWEEP_DIR")
    atlas.add_argument("--out", metavar="DIR", help="where to write (default SWEEP_DIR/atlas/)")
    atlas.add_argument("--min-cluster-size", type=int, default=2,
                       help="HDBSCAN's smallest motif, in attractors (default 2)")


def build_spec(args: argparse.Namespace, config: RunConfig,
               on_skip: Callable[[str], None]) -> dict[str, Any]:
    """The spec this command asks for; each unreadable image goes to `on_skip` (one line)."""
    from truthloop.images import BadImage, load_input_image

    seeds = parse_seeds(args.seeds) if args.seeds is not None else [config.generate.seed]
    grid = parse_grid(args.grid)
    images = []
    for folder in args.images:
        if Path(folder).is_dir() and not find_images([folder]):
            raise SpecError(f"--images {folder}: the folder has no images "
                            f"({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})")
    for path in find_images(args.images):
        try:
            load_input_image(path)
        except BadImage as error:
            on_skip(str(error))
            continue
        images.append(path)
    prompts = read_prompts(args.prompts) if args.prompts else []
    if args.images and not images and not prompts:
        raise SpecError("none of the --images could be read; nothing to run")
    return make_spec(config, images, prompts, seeds, grid, backend=args.backend,
                     said=options_given(args))


def _grid_values(args: argparse.Namespace, name: str, default: Any) -> list[Any]:
    """The values the sweep's --grid gives `name`, or [default] (a malformed --grid: [default];
    build_spec says what is wrong with it)."""
    try:
        return parse_grid(args.grid).get(name, [default])
    except SpecError:
        return [default]


def cmd_sweep(args: argparse.Namespace, config: RunConfig) -> int:
    missing = missing_extras()
    if missing:
        raise CommandError(missing)
    if args.workers is not None and args.workers < 1:
        raise CommandError("--workers must be 1 or more")
    if args.address and args.gpus is not None:
        raise CommandError("--gpus is for a local Ray; a cluster brings its own GPUs")
    if args.batch < 1:
        raise CommandError("--batch must be 1 or more")
    if args.exact and args.batch > 1:
        raise CommandError("--exact runs one trajectory at a time: leave out --batch, or "
                           "leave out --exact")
    unbatched = [name for name in _grid_values(args, "generator", config.models.generator)
                 if name in GENERATORS and GENERATORS[name].autoregressive]
    if args.batch > 1 and unbatched:
        # transformers' image mode samples every row of a batch from one random stream, so a
        # trajectory's images in a batch would not be its single run's.
        raise CommandError(f"--batch: {unbatched[0]} draws one image at a time (a batch's rows "
                           f"would share one random stream); leave out --batch")
    if args.batch > 1 and getattr(args, "compile", None) is None \
            and not config.models.low_vram and all(
                GENERATORS[name].fast_paths
                for name in _grid_values(args, "generator", config.models.generator)):
        # A sweep pays the compile once per worker (~1-2 min) and gains on every image after
        # (docs/batching.md); workers without a GPU draw eagerly (sweep/batching.py). Only for
        # sd, where that was measured: a grid with another family compiles only when asked
        # (--compile, every diffusion family: GeneratorFamily.compiles), so it draws eagerly.
        config.generate.compile = True
    # The spec's per-trajectory fields are filled per trajectory; validate the rest now.
    config.start_prompt = "-"
    try:
        config.validate()
    except ConfigError as error:
        raise CommandError(str(error)) from None
    config.start_prompt = None
    sweep_dir = Path(args.sweep_dir)
    try:
        spec = build_spec(args, config, lambda line: print(
            f"truthloop: skipped: {visible(line)}", file=sys.stderr))
    except SpecError as error:
        raise CommandError(str(error)) from None
    if args.batch > 1:
        # Part of the sweep: batches change results, so a rerun must batch as the first run did.
        spec["batch"] = args.batch
    if args.embedder:
        try:
            spec["embedders"] = [named.name for named in embedders_named(args.embedder)]
        except MeasureInputError as error:
            raise CommandError(str(error)) from None
    if not args.address and not args.backend:
        # Before anything is written, on the machine that will run it: --fp8 on a CPU, a
        # checkpoint neither here nor to be had (a cluster's workers have their own GPUs and
        # caches; a test's fake backends load nothing).
        _check_before_loading(spec)
    if args.address:
        # Before anything is written: a wrong address leaves the directory as it was.
        from truthloop.sweep.driver import SweepError, check_address

        try:
            check_address(args.address)
        except SweepError as error:
            raise CommandError(str(error), code=error.code) from None
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise CommandError(f"{sweep_dir} exists and is not a sweep directory; pick another")
    if sweep_dir.is_dir() and _foreign(sweep_dir):
        raise CommandError(f"{sweep_dir} exists and is not a sweep directory; pick another")
    made: list[Path] = []  # what this command created, taken back if Ray never started
    try:
        if not sweep_dir.exists():
            sweep_dir.mkdir(parents=True, exist_ok=True)
            made.append(sweep_dir)
        if not (sweep_dir / LOCK_FILE).exists():
            made.append(sweep_dir / LOCK_FILE)
        # The lock first, then the spec: of two sweeps started at once on a new directory, the
        # second is told another sweep holds it (not that the directory is foreign).
        lock = _lock(sweep_dir)
    except OSError as error:
        raise CommandError(f"cannot write {sweep_dir}: {error.strerror or error}") from None
    try:
        _check_spec(sweep_dir, spec, made)
    except CommandError:
        _take_back(made)  # a refused command leaves the directory as it found it
        os.close(lock)
        raise
    try:
        return _run(args, sweep_dir, spec)
    except CommandError as error:
        if getattr(error, "started", True) is False:
            _take_back(made)  # Ray never started: nothing ran
        raise
    finally:
        os.close(lock)


def _check_before_loading(spec: dict[str, Any]) -> None:
    """ml.models.check_before_loading for each pair of models (and device) the sweep runs."""
    import json

    from truthloop.errors import OneLineError
    from truthloop.ml.models import check_before_loading

    distinct: dict[str, dict[str, Any]] = {}
    for trajectory in trajectories(spec):
        config = trajectory.config
        key = json.dumps([config["models"], config["generate"].get("fp8")], sort_keys=True)
        distinct.setdefault(key, config)
    configs = []
    for config in distinct.values():
        try:
            configs.append(RunConfig.from_dict(config))
        except ConfigError:
            continue  # that trajectory's own run says what is wrong with it
    try:
        check_before_loading(configs)
        if spec.get("embedders"):
            from truthloop.ml.embedders import check

            check(embedders_named(spec["embedders"]),
                  tiny=spec["config"]["models"].get("models") == "tiny")
    except OneLineError as error:
        raise CommandError(str(error)) from None


def _check_spec(sweep_dir: Path, spec: dict[str, Any], made: list[Path]) -> None:
    """Under the lock: the same sweep as the directory's (a rerun), or a new one written now."""
    try:
        old = read_spec(sweep_dir)
    except SpecError as error:
        raise CommandError(str(error)) from None
    if old is not None:
        diff = difference(*({k: v for k, v in s.items() if k != "embedders"}
                            for s in (old, spec)))
        if diff:
            raise CommandError(f"{sweep_dir} holds another sweep ({diff}); use another "
                               f"SWEEP_DIR or the command that made it")
        # The embedders change no trajectory: a rerun's are added to the sweep's.
        wanted = list(dict.fromkeys([*old.get("embedders", []), *spec.get("embedders", [])]))
        if wanted:
            spec["embedders"] = wanted
        if wanted != old.get("embedders", []):
            try:
                atomic_write_json(sweep_dir / SPEC_FILE, {**old, "embedders": wanted})
            except OSError as error:
                raise CommandError(f"cannot write {sweep_dir}: {error.strerror or error}") \
                    from None
    elif _foreign(sweep_dir):
        raise CommandError(f"{sweep_dir} exists and is not a sweep directory; pick another")
    else:
        try:
            atomic_write_json(sweep_dir / SPEC_FILE, spec)
        except OSError as error:
            raise CommandError(f"cannot write {sweep_dir}: {error.strerror or error}") from None
        made.append(sweep_dir / SPEC_FILE)


def _foreign(sweep_dir: Path) -> bool:
    """A directory with files but no sweep.json: not ours to fill (its lock file alone, or the
    spec being written by a sweep starting at this instant, are a sweep's)."""
    if (sweep_dir / SPEC_FILE).exists():
        return False
    return any(entry.name != LOCK_FILE and not entry.name.startswith(f".{SPEC_FILE}.tmp-")
               for entry in sweep_dir.iterdir())


def _take_back(made: list[Path]) -> None:
    """Remove what this command created, newest first (Ray never started: nothing ran)."""
    for path in reversed(made):
        try:
            path.rmdir() if path.is_dir() else path.unlink()
        except OSError:
            pass


def _lock(sweep_dir: Path) -> int:
    fd = os.open(sweep_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CommandError(f"{sweep_dir} is being run by another `truthloop sweep`; watch it "
                           f"with `truthloop view {sweep_dir}`") from None
    return fd


def _run(args: argparse.Namespace, sweep_dir: Path, spec: dict[str, Any]) -> int:
    from truthloop.sweep import localray

    if not args.address:
        localray.keep_to_loopback()  # before anything imports ray
    from truthloop.sweep.driver import SweepError, run_sweep

    from truthloop.sweep import state as st

    trajs = trajectories(spec)
    before = st.table(sweep_dir, trajs)  # the drivers start from it (read once)
    # What each had drawn, kept apart: the drivers update the rows they are handed.
    drawn_before = [row.get("iterations") or 0 for row in before]
    started = time.monotonic()
    try:
        if spec.get("batch", 1) > 1:
            from truthloop.sweep.batching import run_sweep_batched

            rows = run_sweep_batched(sweep_dir, trajs, spec.get("backend"), spec["batch"],
                                     address=args.address, workers=args.workers,
                                     num_gpus=args.gpus, max_restarts=args.max_restarts,
                                     rows=before)
        else:
            rows = run_sweep(sweep_dir, trajs, spec.get("backend"), address=args.address,
                             workers=args.workers, num_gpus=args.gpus,
                             max_restarts=args.max_restarts, rows=before)
    except SweepError as error:
        failed = CommandError(str(error), code=error.code)
        failed.started = error.started  # type: ignore[attr-defined]
        raise failed from None
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    print("sweep: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) +
          f"; {visible(str(sweep_dir))}")
    pace = throughput(_images(rows) - sum(drawn_before), time.monotonic() - started)
    if pace:
        # A long study pays the first batches' compiles and captures once: its rate is the one
        # after them (each worker's first two batches), said beside the whole call's. Without
        # --workers, one worker's are counted: with more (one a GPU), some warm-up stays in the
        # span, and the rate said is lower, not higher, than the study's.
        warmup = 2 * spec.get("batch", 1) * (args.workers or 1)
        settled = settled_pace(_drawn_times(sweep_dir, trajs, drawn_before), warmup)
        print(f"sweep: {pace}" + (f"; {settled}" if settled else ""))
    if args.atlas and states.get("converged"):
        _print_atlas(sweep_dir, None, 2)
    measured = _measure(sweep_dir, spec) if spec.get("embedders") else 0
    return 1 if states.get("error") or measured else 0


def _images(rows: list[dict[str, Any]]) -> int:
    return sum(row.get("iterations") or 0 for row in rows)


def _drawn_times(sweep_dir: Path, trajs: list[Any], drawn_before: list[int]) -> list[float]:
    """When each image this call drew was written (its file's time), sorted: the images of each
    trajectory from the first index it had not drawn before the call (`drawn_before`: how many
    each had)."""
    from truthloop.store import IMAGES_DIR

    times = []
    for trajectory, earlier in zip(trajs, drawn_before):
        folder = trajectory.run_dir(sweep_dir) / IMAGES_DIR
        for path in folder.glob("*.png") if folder.is_dir() else ():
            try:
                if int(path.stem) >= earlier:
                    times.append(path.stat().st_mtime)
            except (ValueError, OSError):  # not one of the run's own images, or gone
                continue
    return sorted(times)


def settled_rate(times: list[float], warmup: int) -> float | None:
    """Images an hour after the first `warmup` (the first batches: compiles, graph captures, the
    first caption of a batch), from the sorted times their files were written; None unless at
    least as many came after them."""
    if warmup < 1 or len(times) < 2 * warmup:
        return None
    span = times[-1] - times[warmup - 1]
    return (len(times) - warmup) / span * 3600 if span > 0 else None


def settled_pace(times: list[float], warmup: int) -> str | None:
    """settled_rate, said."""
    rate = settled_rate(times, warmup)
    if rate is None:
        return None
    return f"after the first {count(warmup, 'image')}, {rate:,.0f} an hour"


def throughput(images: int, seconds: float) -> str | None:
    """What this call drew and how fast, as a study plans by it (trajectory-iterations an
    hour); Ray's start and the models' loading are in the time, so a short sweep reads slow."""
    if images <= 0 or seconds <= 0:
        return None
    return (f"{count(images, 'image')} drawn in {datetime.timedelta(seconds=round(seconds))}: "
            f"{images / seconds * 3600:,.0f} trajectory-iterations an hour (Ray's start and the "
            f"models' loading included)")


def _measure(sweep_dir: Path, spec: dict[str, Any]) -> int:
    """The sweep's --embedder: every trajectory measured again by each, once the last has run
    (named_measures.measure_dirs, on the sweep's --models and --device; what an earlier call
    measured is skipped). 1 when some run was left out (said in a line each), else 0."""
    from truthloop.errors import OneLineError
    from truthloop.ml.backends import quiet_libraries
    from truthloop.ml.embedders import load_embedder
    from truthloop.named_measures import measure_dirs

    models = spec["config"]["models"]
    tiny = models.get("models") == "tiny"

    def load(named: Any) -> Any:
        quiet_libraries()
        return load_embedder(named, tiny, models.get("device") or "auto")

    def say(line: str) -> None:
        note = line.startswith("truthloop:")
        print(visible(line), file=sys.stderr if note else sys.stdout, flush=True)

    try:
        tally = measure_dirs([sweep_dir], spec["embedders"], load, tiny=tiny, say=say)
    except OneLineError as error:
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return 1
    return 1 if tally.skipped or tally.incomplete else 0


def cmd_atlas(args: argparse.Namespace) -> int:
    missing = missing_extras((("scikit-learn", "sklearn"),))
    if missing:
        raise CommandError(missing)
    if args.min_cluster_size < 2:
        raise CommandError("--min-cluster-size must be 2 or more")
    _print_atlas(Path(args.sweep_dir), Path(args.out) if args.out else None,
                 args.min_cluster_size)
    return 0


def _print_atlas(sweep_dir: Path, out: Path | None, min_cluster_size: int) -> None:
    from truthloop.lookback.atlas import AtlasError, describe, write_atlas

    try:
        atlas, where = write_atlas(sweep_dir, out, min_cluster_size)
    except AtlasError as error:
        raise CommandError(str(error)) from None
    for line in describe(atlas):
        print(line)
    print(f"atlas: {visible(str(where / 'atlas.html'))}")
