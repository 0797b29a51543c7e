"""``drhost``: the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .._environment import check_environment
from .._stdout import cli_stdout
from ..authoring import PLUGIN_CLASSES
from ..errors import DrhostError, ExitCode
from ..i18n import translator
from ..packaging import PackageError
from ..policy import RUN_ON_FAILURES
from ._doctor import cmd_doctor
from ._errors import Parser, check_lengths, internal_error, report, stdout_gone, wants_json
from ._misc import cmd_config_check, cmd_package_build, cmd_plugin_new
from ._plugin_test import add_plugin_test
from ._plugins import add_plugins
from ._report import add_report
from ._runs import add_run_inputs, cmd_plan, cmd_reconnect, cmd_resume, cmd_rollback, cmd_status, cmd_upgrade

_FAILURE_MODES = RUN_ON_FAILURES


_BREAK_LOCK = ("take over a target lock held by another run (after checking that no drhost drives that target); "
               "the broken lock's owner is logged")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(prog="drhost", description="Upgrade a DR product across a fleet of hosts.")
    parser.add_argument("--version", action="version", version=f"drhost {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upgrade = sub.add_parser("upgrade", help="upgrade every target through the five stages")
    add_run_inputs(upgrade)
    upgrade.add_argument("--on-failure", choices=_FAILURE_MODES,
                         help="what to do when a stage fails (default [run] on_failure = ask: ask on a terminal, "
                              "roll back otherwise)")
    upgrade.add_argument("--forks", type=int, help="targets upgraded at the same time")
    upgrade.add_argument("--keep", action="store_true", help="demo: leave the product daemons running")
    upgrade.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    upgrade.add_argument("--break-lock", action="store_true", help=_BREAK_LOCK)
    upgrade.add_argument("--allow-weaker-isolation", action="store_true",
                         help="if containers cannot be started, run container-class plugins as child processes "
                              "(recorded with the run)")
    upgrade.set_defaults(func=cmd_upgrade)

    plan = sub.add_parser("plan", help="show the ordered steps a run would execute")
    add_run_inputs(plan)
    plan.set_defaults(func=cmd_plan)

    for name, func, text in (("resume", cmd_resume, "continue a run exactly where it stopped"),
                             ("rollback", cmd_rollback, "roll back every target of a run")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("run", help="run id (see drhost status)")
        cmd.add_argument("--on-failure", choices=_FAILURE_MODES)
        cmd.add_argument("--json", action="store_true")
        cmd.add_argument("--plain", action="store_true")
        cmd.add_argument("--break-lock", action="store_true", help=_BREAK_LOCK)
        cmd.set_defaults(func=func)

    status = sub.add_parser("status", help="where a run is, per target, and what to run next")
    status.add_argument("run", nargs="?", help="run id (default: the newest run)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    reconnect = sub.add_parser("reconnect", help="reconnect status-check connections that wait for the operator")
    reconnect.add_argument("run", help="run id")
    reconnect.add_argument("targets", nargs="*", metavar="TARGET",
                           help="the targets (default: every target whose status-check connection waits)")
    reconnect.set_defaults(func=cmd_reconnect)

    add_report(sub)

    add_plugins(sub)

    plugin = sub.add_parser("plugin", help="for plugin authors")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", required=True, metavar="COMMAND")
    new = plugin_sub.add_parser("new", help="create a complete plugin distribution to start from")
    new.add_argument("name", help="plugin name: lowercase letters, digits and '-', e.g. acme-audit")
    new.add_argument("--class", dest="plugin_class", required=True, choices=PLUGIN_CLASSES,
                     help="the plugin's class: it decides isolation, limits and failure policy")
    new.add_argument("--dir", help="where to create it (default: ./drhost-plugin-NAME)")
    new.add_argument("--department", default="my-department", help="the department that owns the plugin")
    new.set_defaults(func=cmd_plugin_new)

    add_plugin_test(sub)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = config_sub.add_parser("check", help="validate config files")
    check.add_argument("files", nargs="+")
    check.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    check.set_defaults(func=cmd_config_check)

    doctor = sub.add_parser("doctor", help="what isolation and limits this machine gives each plugin class")
    doctor.add_argument("--json", action="store_true", help="one JSON object")
    doctor.add_argument("-c", "--config", dest="config_files", action="append", metavar="FILE")
    doctor.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    doctor.add_argument("-i", "--inventory", metavar="FILE", help="the inventory the targets are in")
    doctor.add_argument("--target", dest="targets", action="append", default=[], metavar="NAME",
                        help="check this target instead: login, become, the tools the steps need, its root and "
                             "disk space (repeatable)")
    doctor.add_argument("--package", metavar="FILE", help="with --target: the free space this package needs")
    doctor.set_defaults(func=cmd_doctor)

    package = sub.add_parser("package", help="package commands")
    package_sub = package.add_subparsers(dest="package_command", required=True, metavar="COMMAND")
    build = package_sub.add_parser("build", help="build a drproduct package")
    build.add_argument("version")
    build.add_argument("--out", default=".")
    build.set_defaults(func=cmd_package_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Its output is the only thing on stdout: what plugin code in the host prints (core
    plugins run in its threads) goes to stderr (``drhost._stdout``). Called without ``argv`` (the ``drhost``
    program), fd 1 stays on stderr afterwards, until the process ends."""
    with cli_stdout(restore=argv is not None):
        return _command(argv)


#: Commands that keep state under the state directory: it must be usable before they start.
_STATEFUL = frozenset({"upgrade", "resume", "rollback", "status", "report"})


def _command(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(words)
    try:
        parser = build_parser()
        args = parser.parse_args(words)
        check_lengths(parser, args)
        check_environment(state=args.command in _STATEFUL)
        code: int = args.func(args)
        return code
    except DrhostError as exc:
        return report(exc, exc.exit_code, as_json=as_json)
    except PackageError as exc:
        return report(exc, ExitCode.USAGE, as_json=as_json)
    except BrokenPipeError as exc:
        if not stdout_gone():
            return internal_error(exc, words, _debug_dir(), as_json=as_json)
        # The reader went away (drhost plan | head): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.SUCCEEDED
    except KeyboardInterrupt as exc:
        return report(exc, ExitCode.INTERRUPTED, as_json=as_json, line=translator()("drhost: interrupted"),
                      message="interrupted")
    except Exception as exc:
        # Nothing above expected it: the operator gets one line and where the traceback is, never the traceback.
        return internal_error(exc, words, _debug_dir(), as_json=as_json)


def _debug_dir() -> Path | None:
    """The state directory, if it is usable without creating anything but its debug directory."""
    try:
        check_environment(state=True)
        explicit = os.environ.get("DRHOST_STATE_DIR")
        base = (Path(explicit) if explicit else
                Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "drhost")
    except (DrhostError, RuntimeError, OSError):  # Path.home() raises RuntimeError without a home
        return None
    return base if base.is_dir() else None
