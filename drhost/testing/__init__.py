"""Testing plugins as drhost runs them: a fake Context, a disposable target, a session in their isolation, plugin-test.

Public for plugin authors (the pytest plugin's fixtures hand these out) and for
``drhost plugin-test``. The names are imported on first use: the pytest plugin
lives in this package and is loaded by every pytest run wherever drhost is
installed, which must not pay for the orchestrator, paramiko and jsonschema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._checks import CHECKS, CheckResult, PluginTestReport
    from ._fake import Call, FakeContext, ScriptedCommand
    from ._install import Subject, SubjectError
    from ._plugin_test import plugin_test
    from ._session import TARGET, PluginSession, session_config, session_plan
    from ._snapshot import Snapshot, SnapshotDiff, take_snapshot
    from ._target import DisposableTarget

_WHERE = {
    "CHECKS": "_checks", "CheckResult": "_checks", "PluginTestReport": "_checks",
    "Call": "_fake", "FakeContext": "_fake", "ScriptedCommand": "_fake",
    "Subject": "_install", "SubjectError": "_install",
    "plugin_test": "_plugin_test",
    "TARGET": "_session", "PluginSession": "_session", "session_config": "_session", "session_plan": "_session",
    "Snapshot": "_snapshot", "SnapshotDiff": "_snapshot", "take_snapshot": "_snapshot",
    "DisposableTarget": "_target",
}

__all__ = [
    "CHECKS",
    "TARGET",
    "Call",
    "CheckResult",
    "DisposableTarget",
    "FakeContext",
    "PluginSession",
    "PluginTestReport",
    "ScriptedCommand",
    "Snapshot",
    "SnapshotDiff",
    "Subject",
    "SubjectError",
    "plugin_test",
    "session_config",
    "session_plan",
    "take_snapshot",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
