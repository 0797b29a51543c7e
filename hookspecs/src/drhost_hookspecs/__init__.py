"""What a drhost plugin author depends on.

Markers and hookspecs, the types a plugin returns or receives, the errors it
raises, and the Context API. See docs/plugin-hooks.md for the reference.
"""

from ._context import Context
from ._errors import Cancelled, PluginError, SkipStep, StepFailed, UpToDate
from ._faults import FAULT_KINDS, FaultSpec, InjectedCrash, parse_faults
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
    "FAULT_KINDS",
    "HOOK_API_VERSION",
    "OPERATIONS",
    "Cancelled",
    "Category",
    "Context",
    "FaultSpec",
    "InjectedCrash",
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
    "parse_faults",
]
