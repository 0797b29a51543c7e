"""Fixtures for the department plugins' tests: drhost's own (``drhost_target``, ...) and the four-plugin harness."""

from plugin_harness import harness, package_v2

__all__ = ["harness", "package_v2"]
