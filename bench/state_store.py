"""State-store benchmark: what one step transition costs the controller, by store and by fleet size.

Run on demand:  python bench/state_store.py [--targets 100 300 1000] [--writes 300] [--json]

Issue 18 asks for run state stored per target, "a run file + one file per target, or one SQLite database in
WAL mode — measure both and choose". This measures, side by side in one run and on the same records:

- ``whole``: the store before the state database (``state.json``, drhost.state.StateFile, format 1): the whole
  run body rewritten on every change: serialised, checksummed, the previous generation kept, the new one
  written, fsynced and renamed, the directory fsynced.
- ``per-target``: the same StateFile, one per target: a transition rewrites only its target's file
  (previous generation, checksum, fsync, rename, directory fsync all kept).
- ``sqlite``: drhost's store since (drhost.state._store.StateStore): one SQLite database in WAL mode with
  ``synchronous=FULL`` (a commit is on disk before it returns, as a checkpoint must be): one row per target, its
  body, checksum and previous generation updated in one transaction.

A target's record is a real one (a demo run's, ~6 KB: steps, stages, plugin state, rollback progress); the run's
own part (config, package, plan) is ~19 KB. Each write changes one step of one target, round robin across the
fleet as a run does. Reported per write: controller CPU (user + system of this process) and wall, both medians
of ``--writes`` writes, and the bytes written.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drhost.state import StateFile
from drhost.state._files import encode_state
from drhost.state._store import StateStore, canonical

#: A target's record as a demo run leaves it (shape and size; the values do not matter to the store).
STEP = {"status": "done", "attempt": 1, "attempts": 1, "started": 1765090330.123456, "finished": 1765090330.98765,
        "duration_s": 0.8642, "message": "", "plugin": "dr-core", "ended": "ok"}


def target_record(name: str) -> dict[str, Any]:
    steps = {f"{stage}/dr-core/step_{i:02d}": dict(STEP) for stage in ("precheck", "backup", "transfer", "upgrade",
                                                                        "postcheck") for i in range(6)}
    return {"status": "running", "phase": "upgrade", "stage": "upgrade", "version": None, "version_before": "1.0.0",
            "stages": {s: "pending" for s in ("precheck", "backup", "transfer", "upgrade", "postcheck")},
            "stage_attempts": {s: 0 for s in ("precheck", "backup", "transfer", "upgrade", "postcheck")},
            "steps": steps,
            "plugin_state": {"dr-core": {"backup": f"/opt/dr/backup/{name}", "files": list(range(120))}},
            "plugins": {"dr-core": "1.0.0", "dr-database": "1.0.0"}, "errors": [], "cleanups": [],
            "rollback": {"stages": {}, "steps": {}}, "skipped_plugins": {}, "pending_restart": None, "seq": 0}


def run_part() -> dict[str, Any]:
    return {"run_id": "20261207-000000-bench0", "status": "running", "config": {"run": {"forks": 10},
            "blob": "x" * 3300}, "package": {"version": "2.0.0", "blob": "y" * 3500},
            "plan": {"steps": [{"key": f"s{i}", "blob": "z" * 400} for i in range(30)], "plugins": []}}


class WholeStore:
    name = "whole"

    def __init__(self, root: Path, targets: dict[str, dict[str, Any]]) -> None:
        self.file = StateFile(root / "state.json")
        self.body = {**run_part(), "targets": targets}
        self.file.write(self.body)

    def write(self, target: str) -> int:
        self.file.write(self.body)
        return len(encode_state(self.body))


class PerTargetStore:
    name = "per-target"

    def __init__(self, root: Path, targets: dict[str, dict[str, Any]]) -> None:
        (root / "targets").mkdir()
        self.run = StateFile(root / "run.json")
        self.run.write(run_part())
        self.files = {name: StateFile(root / "targets" / f"{name}.json") for name in targets}
        self.targets = targets
        for name, record in targets.items():
            self.files[name].write(record)

    def write(self, target: str) -> int:
        self.files[target].write(self.targets[target])
        return len(encode_state(self.targets[target]))


class SqliteStore:
    name = "sqlite"

    def __init__(self, root: Path, targets: dict[str, dict[str, Any]]) -> None:
        self.store = StateStore.create(root / "state.db", run_part(), targets)
        self.targets = targets

    def write(self, target: str) -> int:
        self.store.write_target(target, self.targets[target])
        return len(canonical(self.targets[target]))


STORES: dict[str, Callable[[Path, dict[str, dict[str, Any]]], Any]] = {
    "whole": WholeStore, "per-target": PerTargetStore, "sqlite": SqliteStore}


def measure(store_name: str, count: int, writes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="drhost-bench-state-") as tmp:
        targets = {f"dr-{i:04d}": target_record(f"dr-{i:04d}") for i in range(count)}
        store = STORES[store_name](Path(tmp), targets)
        names = list(targets)
        cpu, wall, sizes = [], [], []
        for n in range(writes):
            name = names[n % count]
            step = targets[name]["steps"][f"upgrade/dr-core/step_{n % 6:02d}"]
            step["attempt"] = n  # a real change: a store may not skip it
            c0, w0 = time.process_time(), time.perf_counter()
            sizes.append(store.write(name))
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        return {"store": store_name, "targets": count, "writes": writes,
                "cpu_ms": round(statistics.median(cpu) * 1000, 3), "wall_ms": round(statistics.median(wall) * 1000, 3),
                "bytes": int(statistics.median(sizes))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=list(STORES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(store, count, args.writes) for count in args.targets for store in args.stores]
    if args.json:
        print(json.dumps({"results": results, "cpus": os.cpu_count(), "python": sys.version.split()[0],
                          "sqlite": sqlite3.sqlite_version}, indent=2))
        return 0
    print(f"{'targets':>8} {'store':>11} {'cpu ms/write':>13} {'wall ms/write':>14} {'bytes/write':>12}")
    for row in results:
        print(f"{row['targets']:>8} {row['store']:>11} {row['cpu_ms']:>13.3f} {row['wall_ms']:>14.3f} "
              f"{row['bytes']:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
