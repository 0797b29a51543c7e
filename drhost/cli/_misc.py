"""The commands around runs: plugin new, config check, package build (plugins list/lock: ``_plugins.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..authoring import ScaffoldError, new_plugin
from ..config import load_config
from ..errors import ExitCode
from ..packaging import build_package
from ..plugins import discover
from ._inputs import load_package, validate_run_inputs


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config([Path(f) for f in args.files], list(args.set or []))
    registry = discover(config=config.data)
    plan = validate_run_inputs(config, registry)
    package = config.data["run"]["package"]
    if package and Path(package).exists():
        load_package(package, config.origin(("run", "package")))
    elif package:
        # The file may live only on the machine that runs the upgrade; upgrade itself refuses without it.
        print(f"warning: {config.origin(('run', 'package'))}: {package} does not exist here", file=sys.stderr)
    targets = config.data["targets"]
    print(f"{', '.join(args.files)}: ok ({len(targets)} target(s): {', '.join(sorted(targets))}; "
          f"{len(plan.steps)} steps from {len(plan.plugins)} plugins)")
    return ExitCode.SUCCEEDED


def cmd_package_build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(build_package(args.version, out))
    return ExitCode.SUCCEEDED


def cmd_plugin_new(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else Path(f"drhost-plugin-{args.name}")
    try:
        result = new_plugin(args.name, args.plugin_class, directory, department=args.department)
    except ScaffoldError as exc:
        print(f"drhost: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    print(f"created {result.distribution} in {result.directory}:")
    for file in result.files:
        print(f"  {file.relative_to(result.directory)}")
    print(f"next: cd {result.directory} && pip install -e '.[test]' && pytest   (see its README.md)")
    return ExitCode.SUCCEEDED
