"""Plugin discovery and listing."""

from ._registry import ALLOW_ENV, PluginRecord, Registry, discover

__all__ = ["ALLOW_ENV", "PluginRecord", "Registry", "discover"]
