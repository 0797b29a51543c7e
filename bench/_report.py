"""What every benchmark's section in docs/benchmarks.md starts with, and how it gets there."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """The line that says where the figures were measured."""
    return (f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, Python "
            f"{platform.python_version()}")


def publish(report: str, write: Path | None) -> None:
    """Print the section; with ``--write``, append it to that file too."""
    print(report)
    if write:
        with open(write, "a", encoding="utf-8") as handle:
            handle.write("\n" + report)
