"""The commands around runs: plugins list, plugin new, config check, package build."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..authoring import ScaffoldError, new_plugin
from ..config import load_config
from ..errors import ExitCode
from ..packaging import build_package
from ..plugins import ALLOW_ENV, discover
from ._inputs import blocked_plugins, load_package, validate_run_inputs


def cmd_plugins_list(args: argparse.Namespace) -> int:
    config = load_config()
    registry = discover(blocked_plugins(args.plugin_options))
    rows = []
    for record in sorted(registry.records.values(), key=lambda r: r.name):
        isolation = config.data["classes"][record.plugin_class.value]["isolation"] if record.plugin_class else None
        rows.append(record.to_json(isolation))
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitCode.SUCCEEDED
    if not rows:
        print(f"no plugins found in entry-point group 'drhost.plugins' ({ALLOW_ENV} may exclude them)")
        return ExitCode.SUCCEEDED
    # The declarations (PluginInfo.paths, .commands) as counts: --json lists them.
    header = ("name", "version", "department", "class", "isolation", "status", "hooks", "paths", "commands")
    table = [header] + [
        (r["name"], r["version"], r["department"] or "-", r["class"] or "-", r["isolation"] or "-", r["status"],
         str(len(r["hooks"])), str(len(r["paths"])), str(len(r["commands"]))) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r["error"]:
            print(f"{r['name']}: {r['status']}: {r['error']}")
    return ExitCode.SUCCEEDED


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config([Path(f) for f in args.files], list(args.set or []))
    registry = discover()
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
