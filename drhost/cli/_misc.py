"""The commands around runs: plugin new, config check, package build (plugins list/lock: ``_plugins.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..authoring import ScaffoldError, new_plugin
from ..config import ConfigProblems, load_config
from ..errors import ExitCode, UsageError, quote, shown
from ..packaging import build_package
from ..plugins import discover
from ..preflight import input_problems, load_package, target_problems, targets_well_formed, validate_run_inputs
from ._errors import report


def cmd_config_check(args: argparse.Namespace) -> int:
    """What a run would find wrong with these files, every problem at once (a run stops at the first)."""
    try:
        config = load_config([Path(f) for f in args.files], list(args.set or []), all_problems=True)
        problems = list(config.problems.found)
        if not problems:
            registry = discover(config=config.data)
            problems = input_problems(config, registry)
        elif targets_well_formed(config):
            # Plugins are not discovered with a broken config, but the targets' own problems are listed.
            problems += target_problems(config)
        if problems:
            raise ConfigProblems(problems)
        plan = validate_run_inputs(config, registry)
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(f"drhost: error: {problem}", file=sys.stderr)
        print(f"drhost: {len(exc.problems)} problem(s) in {', '.join(map(shown, args.files))}", file=sys.stderr)
        return exc.exit_code
    package = config.data["run"]["package"]
    if package and Path(package).exists():
        load_package(package, config.origin(("run", "package")), config)
    elif package:
        # The file may live only on the machine that runs the upgrade; upgrade itself refuses without it.
        print(f"warning: {config.origin(('run', 'package'))}: {shown(package)} does not exist here", file=sys.stderr)
    targets = config.data["targets"]
    print(f"{', '.join(map(shown, args.files))}: ok ({len(targets)} target(s): {', '.join(sorted(targets))}; "
          f"{len(plan.steps)} steps from {len(plan.plugins)} plugins)")
    return ExitCode.SUCCEEDED


def cmd_package_build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, read-only, too long
        raise UsageError.worded("--out {out}: expected a directory (created if missing); {why}", out=quote(args.out),
                                why=exc.strerror or exc, init={"argument": "--out", "value": args.out}) from None
    print(build_package(args.version, out))
    return ExitCode.SUCCEEDED


def cmd_plugin_new(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else Path(f"drhost-plugin-{args.name}")
    try:
        result = new_plugin(args.name, args.plugin_class, directory, department=args.department)
    except ScaffoldError as exc:
        return report(exc, ExitCode.USAGE, as_json=False)
    print(f"created {result.distribution} in {result.directory}:")
    for file in result.files:
        print(f"  {file.relative_to(result.directory)}")
    print(f"next: cd {result.directory} && pip install -e '.[test]' && pytest   (see its README.md)")
    return ExitCode.SUCCEEDED
