"""Testing plugins the way drhost runs them: a disposable target, a session in the plugin's isolation, plugin-test.

Public for plugin authors (the pytest plugin's fixtures hand these out) and for
``drhost plugin-test``.
"""

from ._checks import CHECKS, CheckResult, PluginTestReport
from ._install import Subject, SubjectError
from ._plugin_test import plugin_test
from ._session import TARGET, PluginSession, session_config, session_plan
from ._snapshot import Snapshot, SnapshotDiff, take_snapshot
from ._target import DisposableTarget, package_info

__all__ = [
    "CHECKS",
    "TARGET",
    "CheckResult",
    "DisposableTarget",
    "PluginSession",
    "PluginTestReport",
    "Snapshot",
    "SnapshotDiff",
    "Subject",
    "SubjectError",
    "package_info",
    "plugin_test",
    "session_config",
    "session_plan",
    "take_snapshot",
]
