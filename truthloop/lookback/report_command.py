"""`truthloop report SWEEP_DIR`: the study report of a sweep (lookback/report.py), for the CLI.

cli.py registers it: `report_command.add_parser(sub)` beside the other subcommands; the parser's
`func` is `cmd_report`, which returns the exit status (0, or 2 with one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "report", help="the study report of a sweep: convergence, attractors, drift curves and "
                       "rates per grid value (HTML, PNG figures, CSV tables; no GPU)",
        description="Write SWEEP_DIR/report/: report.html (one self-contained page), "
                    "report.json, figures/*.png and tables/*.csv, from what the sweep's runs "
                    "recorded. Needs no GPU and no Ray; runs still going are read as they "
                    "stand.")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep directory")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write it (default: SWEEP_DIR/report)")
    parser.add_argument("--min-cluster-size", type=int, default=2, metavar="N",
                        help="HDBSCAN's smallest motif, as `truthloop atlas` (default 2)")
    parser.set_defaults(func=cmd_report)
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    from truthloop.lookback.report import ReportError, describe, write_report
    from truthloop.text import visible

    if args.min_cluster_size < 2:
        print(f"truthloop: error: --min-cluster-size must be 2 or more, not "
              f"{args.min_cluster_size}", file=sys.stderr)
        return 2
    try:
        report, out = write_report(Path(args.sweep_dir), Path(args.out) if args.out else None,
                                   args.min_cluster_size)
    except ReportError as error:
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return 2
    for line in describe(report):
        print(line)
    print(f"wrote {out / 'report.html'} ({len(report['figures'])} figures, tables in "
          f"{out / 'tables'})")
    return 0
