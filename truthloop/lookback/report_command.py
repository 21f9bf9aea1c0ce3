"""`truthloop report SWEEP_DIR`: the study report of a sweep (lookback/report.py), for the CLI.

cli.py registers it: `report_command.add_parser(sub)` beside the other subcommands; the parser's
`func` is `cmd_report`, which returns the exit status: 0; 1 when the report was written but files
of the sweep could not be read in full (one `truthloop: note:` line each on stderr, and the
page's "What was skipped"), as `truthloop sweep` exits 1 when a trajectory failed and the rest
ran: a script sees that the numbers leave something out without reading stderr; 2 when no
report was written (one line on stderr).
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
        description="Write SWEEP_DIR/report/: report.html (one page: the charts and a "
                    "thumbnail of every motif inlined), report.json, figures/*.png (the "
                    "charts, and the contact sheets of the biggest motifs) and tables/*.csv, "
                    "from what the sweep's runs recorded. Needs no GPU and no Ray; runs still "
                    "going are read as they stand. Files that cannot be read in full are "
                    "named on stderr and in the page, and the exit code is then 1.")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep directory")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write it (default: SWEEP_DIR/report)")
    parser.add_argument("--min-cluster-size", type=int, default=2, metavar="N",
                        help="HDBSCAN's smallest motif, as `truthloop atlas` (default 2)")
    parser.set_defaults(func=cmd_report)
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    from truthloop.lookback.report import ReportError, describe, write_report
    from truthloop.text import count, visible

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
    for note in report["skipped"]:
        print(f"truthloop: note: {visible(note)}", file=sys.stderr)
    for line in describe(report):
        print(line)
    print(f"wrote {out / 'report.html'} ({len(report['figures'])} figures, tables in "
          f"{out / 'tables'})")
    if report["skipped"]:
        print(f"truthloop: note: the report leaves out what it could not read "
              f"({count(len(report['skipped']), 'note')} above; report.html lists them under "
              "'What was skipped')", file=sys.stderr)
        return 1
    return 0
