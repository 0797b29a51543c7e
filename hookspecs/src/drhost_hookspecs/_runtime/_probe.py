"""A plugin with no steps that ``drhost doctor`` starts in each class's real sandbox.

The worker's hello then reports what its confinement proved (``_confine._prove``): doctor
states only what a live worker on this machine just showed.
"""

from __future__ import annotations

from .._spec import hookimpl
from .._types import PluginClass, PluginInfo

PROBE_PLUGIN = "drhost-probe"
PROBE_VALUE = "drhost_hookspecs._runtime._probe"


@hookimpl
def drhost_plugin_info() -> PluginInfo:
    return PluginInfo(name=PROBE_PLUGIN, department="drhost", plugin_class=PluginClass.BUSINESS,
                      description="doctor's probe of a class sandbox")
