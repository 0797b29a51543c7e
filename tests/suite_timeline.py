"""Where the suite's time goes: with DRHOST_TEST_TIMELINE=FILE, every test appends one JSON line to FILE.

Each line holds the xdist worker, the test id, its start and end (wall clock) and the CPU seconds spent by the
worker and by the child processes it reaped during the test (controllers, plugin workers, sshd).
`python tests/suite_timeline.py FILE` sums them; with `--write` it also writes tests/scope_durations.json,
the measured scope lengths that tests/xdist_scopes.py starts the longest of first.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Generator
from typing import Any

import pytest

from xdist_scopes import scope_of


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    path = os.environ.get("DRHOST_TEST_TIMELINE")
    if not path:
        return (yield)
    start, before = time.time(), os.times()
    try:
        return (yield)
    finally:
        after = os.times()
        line = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "test": item.nodeid, "start": start,
                "end": time.time(), "cpu": round(after.user + after.system - before.user - before.system, 3),
                "children_cpu": round(after.children_user + after.children_system
                                      - before.children_user - before.children_system, 3)}
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")


def summarise(path: str, write: bool = False) -> None:
    """Per file: tests, wall and CPU seconds; per worker: busy time and when its last test ended. With ``write``,
    the wall seconds of every scope go to tests/scope_durations.json (the scheduler's longest-first order)."""
    with open(path, encoding="utf-8") as handle:
        lines = [json.loads(raw) for raw in handle]
    begin = min(line["start"] for line in lines)
    files: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    scopes: dict[str, float] = defaultdict(float)
    workers: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for line in lines:
        name = line["test"].split("::")[0].rsplit("/", 1)[-1]
        wall = line["end"] - line["start"]
        files[name][0] += wall
        files[name][1] += line["cpu"] + line["children_cpu"]
        files[name][2] += 1
        scopes[scope_of(line["test"])] += wall
        workers[line["worker"]][0] += wall
        workers[line["worker"]][1] = max(workers[line["worker"]][1], line["end"] - begin)
    print(f"{'file':50} {'tests':>5} {'wall s':>8} {'cpu s':>8}")
    for name, (wall, cpu, count) in sorted(files.items(), key=lambda kv: -kv[1][0]):
        print(f"{name:50} {count:5.0f} {wall:8.1f} {cpu:8.1f}")
    print(f"total wall {sum(f[0] for f in files.values()):.0f} s, cpu {sum(f[1] for f in files.values()):.0f} s")
    for worker, (busy, end) in sorted(workers.items()):
        print(f"{worker}: busy {busy:.0f} s, last test ends at {end:.0f} s")
    if write:
        target = os.path.join(os.path.dirname(__file__), "scope_durations.json")
        with open(target, "w", encoding="utf-8") as out:
            json.dump({scope: round(wall, 1) for scope, wall in sorted(scopes.items())}, out, indent=0)
            out.write("\n")
        print(f"wrote {len(scopes)} scopes to {target}")


if __name__ == "__main__":
    summarise(sys.argv[1], write="--write" in sys.argv[2:])
