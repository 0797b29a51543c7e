"""How the suite's pip builds plugins: without an isolated build environment when this one can build wheels."""

from __future__ import annotations

import importlib.metadata
import importlib.util


def builds_wheels_here() -> bool:
    """This environment can build a wheel itself: setuptools 70.1 or later, or the separate 'wheel' package
    (older setuptools builds wheels only with it)."""
    setuptools = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    return setuptools >= (70, 1) or importlib.util.find_spec("wheel") is not None


def pip_build_flags() -> list[str]:
    """Offline when this environment can build a wheel itself, else let pip fetch a build backend."""
    return ["--no-build-isolation", "--no-index"] if builds_wheels_here() else []
