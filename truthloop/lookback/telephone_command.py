"""The Telephone Game's layout on the command line (lookback/telephone_game.py):
`truthloop export SWEEP_DIR --telephone-game OUT` and `truthloop import-telephone-game LAYOUT
SWEEP_DIR`. cli.py registers the import (`add_parser(sub)`) and hands the export flag to
`cmd_export_layout`. Exit status: 0; 1 when the export left chains out (one `truthloop: note:`
line each: unfinished); 2 when nothing was written (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from truthloop.text import count, visible


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "import-telephone-game",
        help="a Telephone Game layout (text-first/ and image-first/, gen-k.csv + gen-k/) as a "
             "sweep that `truthloop report` reads",
        description="Read LAYOUT as the Telephone Game's scripts read it (Mollah et al. 2025: "
                    "LAYOUT/text-first/gen-0.csv, gen-1/, gen-2.csv, ... and "
                    "LAYOUT/image-first/gen-0/, gen-1.csv, ...; csv columns filename and "
                    "caption) and write SWEEP_DIR: one run directory per chain, N generations "
                    "each as --generations N. Nothing is measured (no model loads): `truthloop "
                    "measure SWEEP_DIR` adds the similarities. A layout the scripts could not "
                    "read is refused in one line and nothing is written.")
    parser.add_argument("layout", metavar="LAYOUT",
                        help="the folder that holds text-first/ and/or image-first/")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a new (or empty) folder")
    parser.add_argument("--generator", default="unknown", metavar="NAME",
                        help="the model that drew the images, as the report names it "
                             "(default: unknown; a unified model: its name here and in "
                             "--captioner)")
    parser.add_argument("--captioner", default="unknown", metavar="NAME",
                        help="the model that wrote the captions (default: unknown)")
    parser.set_defaults(func=cmd_import)
    return parser


def cmd_import(args: argparse.Namespace) -> int:
    from truthloop.lookback.telephone_game import TelephoneGameError, import_layout

    try:
        done = import_layout(Path(args.layout), Path(args.sweep_dir), args.generator,
                             args.captioner)
    except TelephoneGameError as error:
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return 2
    kinds = ", ".join(f"{kind}: {n}" for kind, n in done["chains"].items())
    print(f"imported {count(done['trajectories'], 'chain')} of "
          f"{count(done['generations'], 'generation')} ({kinds}) into "
          f"{visible(args.sweep_dir)}")
    print(f"no similarities yet: `truthloop measure {visible(args.sweep_dir)} --embedder NAME` "
          f"adds them; "
          f"`truthloop report {visible(args.sweep_dir)}` reads the sweep")
    return 0


def cmd_export_layout(sweep_dir: str, out: str) -> int:
    from truthloop.lookback.telephone_game import (
        PAPER_GENERATIONS, TelephoneGameError, export_layout,
    )

    try:
        done = export_layout(Path(sweep_dir), Path(out))
    except TelephoneGameError as error:
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return 2
    for note in done["skipped"]:
        print(f"truthloop: note: {visible(note)}", file=sys.stderr)
    for layout in done["layouts"]:
        kinds = ", ".join(f"{kind}: {count(n, 'chain')}" for kind, n in layout["chains"].items())
        print(f"wrote {visible(str(layout['path']))} "
              f"({count(done['generations'], 'generation')}; {kinds})")
    if done["generations"] != PAPER_GENERATIONS:
        print(f"note: the Telephone Game's mcd-sdr.py reads {PAPER_GENERATIONS} generations; "
              f"these chains have {done['generations']}")
    first = done["layouts"][0]["path"]
    print(f"their scripts: python semantic-drift/mcd-sdr.py --data {visible(str(first))} "
          f"--out RESULTS --model-name NAME")
    if done["skipped"]:
        print(f"truthloop: note: {count(len(done['skipped']), 'chain')} left out (unfinished: "
              f"run the sweep's command again to finish them)", file=sys.stderr)
        return 1
    return 0
