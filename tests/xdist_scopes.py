"""How the suite is spread over pytest-xdist workers: which tests must share a worker, which may be split.

xdist's own ``--dist loadgroup`` no longer works with pytest 9.2 (it renames ``item._nodeid``, which pytest no
longer reads), so the suite brings its scheduler: xdist's documented ``LoadScopeScheduling`` with our scopes.

- By default a test file is one scope: its tests run in order on one worker, its module fixtures (sshd hosts,
  built packages, installed products) are made once, and its tests never race each other.
- ``SHARED``: files that must not run beside each other share one scope (they check something machine-wide).
- ``SPLIT``: long files whose tests share nothing are split, so one file is not the whole run's tail: into one
  scope per test, or per what the tests share (``test_plugin_test``: one scope per department plugin report).
- The longest scopes start first (longest processing time first, from the measured tests/scope_durations.json):
  a long scope started last would keep one worker busy after the others are idle.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

__all__ = ["SHARED", "SPLIT", "SuiteScheduling", "computed_once", "longest_first", "scope_of"]

#: remote_hang: both files start ``sleep 86400`` on their targets and assert that none is left on the machine.
SHARED = {
    "test_leftover_commands.py": "remote_hang",
    "test_timeout_diagnosis.py": "remote_hang",
}


def _per_test(rest: str) -> str:
    return rest


def _department_report(rest: str) -> str:
    # test_dr_core_* reads dr-core's report: it belongs with the test that makes it.
    found = re.search(r"dr[-_](core|database|catalog|monitoring)", rest)
    return f"dr-{found.group(1)}" if found else rest


SPLIT: dict[str, Callable[[str], str]] = {
    "test_crash_matrix.py": _per_test,
    "test_class_policies.py": _per_test,
    "test_plugin_test.py": _department_report,
    "test_rollout_fleet.py": _per_test,
    "test_step_outlives_link.py": _per_test,
    "test_run_target_locks.py": _per_test,
    "test_unreachable_rollback.py": _per_test,
    "test_rollback_honest.py": _per_test,
    "test_ssh_upgrade.py": _per_test,
    "test_every_deadline.py": _per_test,
    "test_rollback_labels.py": _per_test,
    "test_network_visible.py": _per_test,
}

#: Measured seconds of every scope (tests/scope_durations.json, written by ``python tests/suite_timeline.py FILE
#: --write``): the longest scopes start first, longest processing time first. A scope missing from the file (a
#: new test) is estimated at a second per test.
_DURATIONS_FILE = os.path.join(os.path.dirname(__file__), "scope_durations.json")
_UNKNOWN_S_PER_TEST = 1.0


def scope_of(nodeid: str) -> str:
    """The scope of a test: what runs on one worker, in order (see the module's docstring)."""
    path, _, rest = nodeid.partition("::")
    name = path.rsplit("/", 1)[-1]
    if name in SHARED:
        return SHARED[name]
    split = SPLIT.get(name)
    return f"{path}::{split(rest)}" if split is not None else path


def scope_durations() -> dict[str, float]:
    try:
        with open(_DURATIONS_FILE, encoding="utf-8") as handle:
            loaded = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def longest_first(nodeids: list[str]) -> list[int]:
    """The order in which to run ``nodeids`` (indexes into it): scope by scope, the longest scope first; inside a
    scope the tests keep their order."""
    durations = scope_durations()
    scopes: dict[str, list[int]] = {}
    for index, nodeid in enumerate(nodeids):
        scopes.setdefault(scope_of(nodeid), []).append(index)

    def expected(item: tuple[str, list[int]]) -> float:
        scope, members = item
        return durations.get(scope, _UNKNOWN_S_PER_TEST * len(members))

    return [index for _, members in sorted(scopes.items(), key=lambda item: -expected(item)) for index in members]


class SuiteScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with the scopes above, in the order the collection arrives (``longest_first``)."""

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        # xdist would sort the scopes by their number of tests, which starts a file of 90 quick tests before a
        # matrix split into scopes of 15 slow ones: the collection is already in the order we want.
        config.option.loadscopereorder = False
        super().__init__(config, log)

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)


def computed_once(factory: pytest.TempPathFactory, name: str, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result, computed by the first worker that asks and read by the others.

    For a costly module fixture of a file split over several workers (SPLIT): the workers share the parent of
    their base temp directories, and an exclusive lock there makes the others wait for the first.
    """
    base = factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    result = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.exists():
            return json.loads(result.read_text())
        value = compute()
        result.write_text(json.dumps(value))
        return value
