"""How the suite is spread over pytest-xdist workers: which tests must share a worker, which may be split.

xdist's own ``--dist loadgroup`` no longer works with pytest 9.2 (it renames ``item._nodeid``, which pytest no
longer reads), so the suite brings its scheduler: xdist's documented ``LoadScopeScheduling`` with our scopes.

- By default a test file is one scope: its tests run in order on one worker, its module fixtures (sshd hosts,
  built packages, installed products) are made once, and its tests never race each other.
- ``SHARED``: files that must not run beside each other share one scope (they check something machine-wide).
- ``SPLIT``: long files whose tests share nothing are split, so one file is not the whole run's tail: into one
  scope per test, or per what the tests share (``test_plugin_test``: one scope per department plugin report).
- ``FIRST``: the longest scopes start first (longest processing time first): a long scope started last would
  keep one worker busy after the others are idle.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

__all__ = ["FIRST", "SHARED", "SPLIT", "SuiteScheduling", "computed_once", "file_order"]

#: remote_hang: both files start ``sleep 86400`` on their targets and assert that none is left on the machine.
SHARED = {
    "test_leftover_commands.py": "remote_hang",
    "test_timeout_diagnosis.py": "remote_hang",
}


def _per_test(rest: str) -> str:
    return rest


def _buckets(count: int) -> Callable[[str], str]:
    """``count`` scopes by a stable hash of the test id: for big parametrised matrices with a module fixture."""
    return lambda rest: f"bucket-{zlib.crc32(rest.encode()) % count}"


def _department_report(rest: str) -> str:
    # test_dr_core_* reads dr-core's report: it belongs with the test that makes it.
    found = re.search(r"dr[-_](core|database|catalog|monitoring)", rest)
    return f"dr-{found.group(1)}" if found else rest


SPLIT: dict[str, Callable[[str], str]] = {
    "test_crash_matrix.py": _buckets(4),
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

#: Files whose scopes take longest (seen in the --durations of CI logs): started first, in this order.
FIRST = (
    "test_crash_matrix.py", "test_plugin_test.py", "test_timeout_diagnosis.py", "test_leftover_commands.py",
    "test_rollout_fleet.py", "test_class_policies.py", "test_plugin_authoring_guide.py", "test_ssh_upgrade.py",
    "test_unreachable_rollback.py", "test_rollback_honest.py", "test_sandboxed_discovery.py",
    "test_core_full_upgrade.py", "test_step_outlives_link.py", "test_run_target_locks.py", "test_html_report.py",
    "test_demo_upgrade.py", "test_fault_matrix.py",
)


def file_order(file_name: str) -> int:
    """Sort key of a test file: the ``FIRST`` files in their order, then every other file."""
    return FIRST.index(file_name) if file_name in FIRST else len(FIRST)


class SuiteScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with the scopes above (the collection arrives already in ``file_order``)."""

    def _split_scope(self, nodeid: str) -> str:
        path, _, rest = nodeid.partition("::")
        name = path.rsplit("/", 1)[-1]
        if name in SHARED:
            return SHARED[name]
        split = SPLIT.get(name)
        return f"{path}::{split(rest)}" if split is not None else path


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
