"""What a drhost plugin author depends on.

Markers and hookspecs, the types a plugin returns or receives, the errors it
raises, the Context API, and ``LoadedPlugin`` to call a plugin in its own tests. See
docs/plugin-hooks.md for the reference; ``tests/test_author_surface.py`` fails when a name is
added here without a docstring and an entry there. The worker runtime (protocol, fault
injection, confinement) is the private ``_runtime`` subpackage: importing this package never
loads it.
"""

from ._context import Context
from ._errors import Cancelled, PluginError, SkipStep, StepFailed, UpToDate
from ._plugin import ENTRY_POINT_GROUP, OPERATIONS, LoadedPlugin, OperationName, PluginDefinitionError, operation_name
from ._spec import hookimpl, hookspec
from ._types import (
    HOOK_API_VERSION,
    Category,
    PackageInfo,
    PluginClass,
    PluginInfo,
    RunResult,
    Stage,
    Step,
    StepDescription,
    TargetInfo,
    VerifyPhase,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_API_VERSION",
    "OPERATIONS",
    "Cancelled",
    "Category",
    "Context",
    "LoadedPlugin",
    "OperationName",
    "PackageInfo",
    "PluginClass",
    "PluginDefinitionError",
    "PluginError",
    "PluginInfo",
    "RunResult",
    "SkipStep",
    "Stage",
    "Step",
    "StepDescription",
    "StepFailed",
    "TargetInfo",
    "UpToDate",
    "VerifyPhase",
    "hookimpl",
    "hookspec",
    "operation_name",
]
