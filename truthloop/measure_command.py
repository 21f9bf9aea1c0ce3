"""`truthloop measure DIR... --embedder NAME`: re-score finished runs and sweeps with named
embedders (named_measures.py), for the CLI.

cli.py registers it (`measure_command.add_parser(sub)`) and hands over the loader
(ml/embedders.py's load_embedder, with its `check` of what cannot load here). Core only: no
torch.

Exit status: 0 when every run is measured (now or by an earlier command); 1 when some run was
left out (being written, unreadable) or measured with something left out (an image that cannot
be read): each said in one `truthloop: note:` line, the rest measured, as `truthloop caption`
exits 1 when some image could not be read; 2 for bad input (one line, before any model loads);
130 when interrupted (every file written is whole; the same command goes on from there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from truthloop.config import DEVICES
from truthloop.errors import OneLineError
from truthloop.named_measures import EMBEDDERS, embedders_named, measure_dirs, run_dirs
from truthloop.text import count, first_line, visible


def add_parser(sub: Any) -> argparse.ArgumentParser:
    names = ", ".join(f"{e.name} ({e.label}: {'/'.join(e.measures)})"
                      for e in EMBEDDERS.values())
    parser = sub.add_parser(
        "measure", help="re-score finished runs or sweeps with other embedders (DINO, "
                        "CLIP ViT-B/32, MPNet, MiniLM, DreamSim): the drift measures again, "
                        "for the report",
        description="Compute the drift measures of every finished run of DIR (a run or a "
                    "sweep) again with each --embedder: per iteration the similarity to the "
                    "start and to the previous iteration, image to image, text to text and "
                    "caption to image, as far as the embedder measures them, from the images "
                    "and texts the run wrote. Writes measures-NAME.json into each run "
                    "directory and names it in run.json; `truthloop report` then shows MCD "
                    "and SDR by each embedder beside the run's own. A run being written is "
                    "skipped; what is measured is skipped on the next call. Embedders: "
                    f"{names}.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or sweep directories")
    parser.add_argument("--embedder", action="append", required=True, metavar="NAME",
                        choices=tuple(EMBEDDERS),
                        help="an embedder to measure with (repeat for several): "
                             + ", ".join(EMBEDDERS))
    parser.add_argument("--models", choices=("real", "tiny"), default="real",
                        help="tiny: offline random-weight versions (machinery, not truth)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    return parser


def cmd_measure(args: argparse.Namespace, load: Any) -> int:
    """`load(named, tiny, device)` -> the embedder (ml.embedders.load_embedder); its `check(
    chosen, tiny)` raises what would stop it before anything loads."""
    tiny = args.models == "tiny"
    try:
        chosen = embedders_named(args.embedder)
        if tiny and any(named.kind == "dreamsim" for named in chosen):
            raise OneLineError("--embedder dreamsim has no tiny version (its package brings "
                               "its own weights)")
        for path in args.dirs:
            run_dirs(Path(path))  # a DIR that is neither a run nor a sweep: said now
        getattr(load, "check", lambda chosen, tiny: None)(chosen, tiny)
    except OneLineError as error:
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        note = line.startswith("truthloop:")
        print(visible(line), file=sys.stderr if note else sys.stdout, flush=True)

    try:
        tally = measure_dirs([Path(p) for p in args.dirs], [n.name for n in chosen],
                             lambda named: load(named, tiny, args.device), tiny=tiny, say=say)
    except KeyboardInterrupt:
        print("truthloop: interrupted; every file written is whole, and the same command "
              "goes on from there", file=sys.stderr)
        return 130
    except OneLineError as error:  # a model that could not load after all
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the embedder failed (out of memory, ...)
        print(f"truthloop: error: measuring stopped: {type(error).__name__}: "
              f"{visible(first_line(error))}; every file written is whole, and the same "
              "command goes on from there", file=sys.stderr)
        return 1
    left = tally.skipped + tally.incomplete
    if left:
        print(f"truthloop: note: {count(left, 'run')} not measured in full (said above)",
              file=sys.stderr)
        return 1
    return 0
