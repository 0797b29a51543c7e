"""Fixtures for the department plugins' tests; the harness itself is in plugin_harness.py."""

from plugin_harness import harness, installed, package_v2, packages

__all__ = ["harness", "installed", "package_v2", "packages"]
