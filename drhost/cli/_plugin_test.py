"""``drhost plugin-test``: run every check on one plugin and say, per check, what passed and how to fix what failed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ExitCode
from ._inputs import blocked_plugins

_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}


def add_plugin_test(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = sub.add_parser(
        "plugin-test", help="check that a plugin is safe to upgrade with (for plugin authors)",
        description="Install the plugin (a source tree or a wheel) into a private directory, or take an installed "
                    "one, load it as drhost does, and take a disposable drproduct target through the five stages "
                    "with it in its own isolation: declaration, idempotence of retryable steps, cleanup without "
                    "residue, rollback that restores, limits, behaviour when cut short. Exit 0 when every check "
                    "passes, 1 when one fails, 2 for a usage error.")
    test.add_argument("subject", metavar="PATH|DIST",
                      help="a plugin's source directory or wheel, or an installed distribution or plugin name")
    test.add_argument("--plugin", help="which plugin, when the distribution provides several")
    test.add_argument("--alone", action="store_true",
                      help="leave the other installed plugins out (by default they run with it, as in a run)")
    test.add_argument("-p", dest="plugin_options", action="append", metavar="no:NAME",
                      help="leave plugin NAME out of the test run")
    test.add_argument("-c", "--config", action="append", help="config file with the plugin's settings; repeatable")
    test.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")
    test.add_argument("--allow-weaker-isolation", action="store_true",
                      help="without podman, run container-class plugins as child processes")
    test.add_argument("--keep", action="store_true",
                      help="keep the target and the run's files (kept anyway when a check fails)")
    test.add_argument("--json", action="store_true", help="one JSON object on stdout at the end")
    test.set_defaults(func=cmd_plugin_test)


def _print_result(result: object) -> None:
    from ..testing import CheckResult

    assert isinstance(result, CheckResult)
    print(f"{_MARK[result.status]}  {result.check:<19} {result.subject:<34} {result.reason}", flush=True)
    if result.fix:
        print(f"      fix: {result.fix}", flush=True)


def cmd_plugin_test(args: argparse.Namespace) -> int:
    # Imported here: drhost.testing reuses the command line's run validation, so the CLI cannot import it at the top.
    from ..testing import plugin_test

    overrides = list(args.set or [])
    if args.allow_weaker_isolation:
        overrides.append("run.allow_weaker_isolation=true")
    report = plugin_test(
        args.subject, plugin=args.plugin, alone=args.alone, blocked=blocked_plugins(args.plugin_options),
        config_files=[Path(p) for p in args.config or []], overrides=overrides, keep=args.keep,
        on_result=None if args.json else _print_result)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        counts = report.counts()
        where = f" isolation {report.isolation}" if report.isolation else ""
        print(f"\n{report.plugin} {report.version} ({report.distribution}, class {report.plugin_class or '?'},"
              f"{where}): {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
        if report.kept:
            print(f"the target, the run's state and its reports are kept in {report.kept}", file=sys.stderr)
    return ExitCode.SUCCEEDED if report.ok else ExitCode.FAILED
