"""``drhost plugins list`` and ``drhost plugins lock``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..config import LoadedConfig, load_config
from ..errors import ExitCode, RefusedError
from ..plugins import ALLOW_ENV, LockEntry, Registry, discover, write_lock, write_path
from ._inputs import blocked_plugins
from ._outpath import output_file


def add_plugins(sub: Any) -> None:
    plugins = sub.add_parser("plugins", help="plugin commands")
    plugins_sub = plugins.add_subparsers(dest="plugins_command", required=True, metavar="COMMAND")
    plist = plugins_sub.add_parser("list", help="every discovered plugin, broken ones included")
    plist.add_argument("--json", action="store_true")
    _common(plist)
    plist.set_defaults(func=cmd_plugins_list)
    lock = plugins_sub.add_parser("lock", help="pin the installed plugins (distribution, version, class, file "
                                               "digest): runs refuse any plugin that differs from the lock")
    lock.add_argument("--out", metavar="PATH",
                      help="where to write it (default: [discovery] lock, else STATE_ROOT/plugins.lock)")
    lock.add_argument("--allow-broken", action="store_true",
                      help="write the lock even though some plugins are broken (they are left out and listed)")
    _common(lock)
    lock.set_defaults(func=cmd_plugins_lock)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", dest="plugin_options", action="append", metavar="no:NAME",
                        help="leave plugin NAME out (not described)")
    parser.add_argument("--no-cache", action="store_true",
                        help="describe every plugin afresh, ignoring (and not writing) the description cache")
    parser.add_argument("-c", "--config", dest="config_files", action="append", metavar="FILE",
                        help="config file (INI or JSON) with [discovery], [class:NAME], [process] settings")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")


def _config(args: argparse.Namespace) -> LoadedConfig:
    return load_config([Path(f) for f in args.config_files or []], list(args.set or []))


def _rows(registry: Registry, config: LoadedConfig) -> list[dict[str, Any]]:
    rows = []
    for record in registry.all:
        isolation = config.data["classes"][record.plugin_class.value]["isolation"] if record.plugin_class else None
        rows.append(record.to_json(isolation))
    for entry in registry.missing:
        rows.append({"name": entry.name, "entry_point": entry.entry_point, "distribution": entry.distribution,
                     "version": entry.version, "class": entry.plugin_class, "status": "missing",
                     "error": "locked but not installed", "digest": entry.digest, "described_in": None,
                     "cached": False, "lock": "missing: locked but not installed", "warnings": []})
    return rows


def _lock_column(lock: str) -> str:
    # One word per cell (the table is read with split()); the details follow the table.
    return "changed" if lock.startswith("changed") else lock.split(":", 1)[0].replace(" ", "-")


def _described(row: dict[str, Any]) -> str:
    if not row.get("described_in"):
        return "-"
    return f"{row['described_in']}*" if row.get("cached") else str(row["described_in"])


def cmd_plugins_list(args: argparse.Namespace) -> int:
    config = _config(args)
    registry = discover(blocked_plugins(args.plugin_options), config=config.data, use_cache=not args.no_cache)
    rows = _rows(registry, config)
    if args.json:
        for note in registry.notes:
            print(f"note: {note}", file=sys.stderr)
        print(json.dumps(rows, indent=2))
        return ExitCode.SUCCEEDED
    if not rows:
        print(f"no plugins found in entry-point group 'drhost.plugins' ({ALLOW_ENV} may exclude them)")
        return ExitCode.SUCCEEDED
    # The declarations (PluginInfo.paths, .commands) as counts: --json lists them.
    header = ("name", "version", "department", "class", "isolation", "status", "described", "lock", "hooks",
              "paths", "commands")
    table = [header] + [
        (r["name"], r["version"], r.get("department") or "-", r["class"] or "-", r.get("isolation") or "-",
         r["status"], _described(r), _lock_column(r["lock"]), str(len(r.get("hooks", []))),
         str(len(r.get("paths", []))), str(len(r.get("commands", [])))) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r["error"]:
            print(f"{r['name']}: {r['status']}: {r['error']}")
    if registry.lock is not None:
        print(f"plugin lock: {registry.lock.path}")
        for r in rows:
            if r["lock"].startswith("changed"):
                print(f"{r['name']}: lock {r['lock']}")
    for r in rows:
        for warning in r["warnings"]:
            print(f"warning: {r['name']}: {warning}")
    if any(r.get("cached") for r in rows):
        print("* described earlier in the same sandbox, files unchanged: from the description cache (--no-cache "
              "describes afresh)")
    for note in registry.notes:
        print(f"note: {note}")
    return ExitCode.SUCCEEDED


def cmd_plugins_lock(args: argparse.Namespace) -> int:
    # Checked before the plugins are described; a missing directory is created, as it always was.
    out = output_file(args.out, create_parents=True) if args.out is not None else None
    config = _config(args)
    # Described without the old lock: a plugin whose class changed must be lockable again (as untrusted meanwhile).
    registry = discover(blocked_plugins(args.plugin_options), config=config.data, lock=None,
                        use_cache=not args.no_cache)
    broken = [r for r in registry.all if r.status == "broken"]
    if broken and not args.allow_broken:
        listed = "; ".join(f"{r.name} ({r.distribution} {r.version}): {r.error}" for r in broken)
        raise RefusedError.worded("no plugin lock written: {count} plugin(s) are broken: {plugins}. Fix or uninstall "
                                  "them, or write the lock without them with --allow-broken", count=len(broken),
                                  plugins=listed)
    usable = registry.usable()
    entries = [LockEntry(name=r.name, distribution=r.distribution, version=r.version,
                         plugin_class=r.plugin_class.value, entry_point=r.value, digest=r.digest)
               for r in usable if r.plugin_class is not None]
    path = write_path(config.data, str(out) if out else None)
    write_lock(path, entries)
    print(f"wrote plugin lock {path}: {len(entries)} plugin(s)")
    for entry in entries:
        print(f"  {entry.name}: {entry.distribution} {entry.version}, class {entry.plugin_class}, "
              f"{entry.digest[:19]}…")
    for record in registry.all:
        if not record.usable:
            print(f"  left out ({record.status}): {record.name} ({record.distribution} {record.version})"
                  + (f": {record.error}" if record.status == "broken" else ""))
    return ExitCode.SUCCEEDED
