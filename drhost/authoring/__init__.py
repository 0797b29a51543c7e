"""Tools for plugin authors: ``drhost plugin new`` starts a plugin distribution from a working example."""

from ._scaffold import PLUGIN_CLASSES, ScaffoldError, ScaffoldResult, new_plugin

__all__ = ["PLUGIN_CLASSES", "ScaffoldError", "ScaffoldResult", "new_plugin"]
