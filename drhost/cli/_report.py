"""``drhost report RUN``: the run as one HTML file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DrhostError, ExitCode
from ..report import write_report
from ..state import find_run


class ReportError(DrhostError):
    """The report cannot be written where it was asked to go."""

    exit_code = ExitCode.USAGE


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = find_run(args.run)
    out = Path(args.out) if args.out else None
    try:
        path = write_report(run_dir, out)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out or run_dir / 'report.html'}: {exc.strerror or exc}") \
            from None
    print(path)
    return ExitCode.SUCCEEDED


def add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser("report", help="write a self-contained HTML report of a run (summary, timeline per "
                                           "target, details)")
    report.add_argument("run", help="run id (see drhost status)")
    report.add_argument("--out", metavar="FILE", help="where to write it (default: RUN_DIR/report.html)")
    report.set_defaults(func=cmd_report)
