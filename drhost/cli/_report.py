"""``drhost report RUN``: the run as one HTML file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DrhostError, ExitCode, quote
from ..report import write_report
from ..state import find_run, runs_dir
from ._outpath import output_file


class ReportError(DrhostError):
    """The report cannot be written where it was asked to go."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, path: Path | None = None, argument: str | None = None) -> None:
        self.path = path
        self.argument = argument
        super().__init__(message)


def cmd_report(args: argparse.Namespace) -> int:
    # --out first: a mistake there is reported without touching the state directory at all.
    out = output_file(args.out) if args.out is not None else None
    run_dir = find_run(args.run)
    if out is None and run_dir.resolve().parent != runs_dir().resolve():
        # A run id such as /tmp/x or ../.. would otherwise put report.html wherever it points.
        raise ReportError.worded("run {run}: expected a run id under {runs}, found {found}", run=quote(args.run),
                                 runs=runs_dir(), found=quote(str(run_dir.resolve())),
                                 init={"path": run_dir, "argument": "RUN"})
    target = out or run_dir / "report.html"
    try:
        path = write_report(run_dir, out)
    except OSError as exc:
        raise ReportError.worded("cannot write the report to {path}: {why}", path=quote(str(target)),
                                 why=exc.strerror or exc, init={"path": target}) from None
    print(path)
    return ExitCode.SUCCEEDED


def add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser("report", help="write a self-contained HTML report of a run (summary, timeline per "
                                           "target, details)")
    report.add_argument("run", help="run id (see drhost status)")
    report.add_argument("--out", metavar="FILE", help="where to write it (default: RUN_DIR/report.html)")
    report.set_defaults(func=cmd_report)
