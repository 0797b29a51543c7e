""".pth files in a plugin's distribution: code (or sys.path entries) that runs at every Python start.

Python's ``site`` module reads every ``*.pth`` in site-packages when ANY interpreter of that
environment starts — drhost itself, every worker, every tool — and executes its ``import`` lines.
That happens before drhost can sandbox anything, so a plugin distribution that installs one is
flagged by ``drhost plugins list``.

Not flagged: the ``.pth`` pip writes for an editable install of the plugin itself
(``pip install -e``), named ``__editable__.<dist>-<version>.pth``, when the distribution is
recorded as editable and every line is a directory or setuptools' own finder hook
(``import __editable___<dist>_finder; __editable___<dist>_finder.install(...)``) — the finder
module it imports is listed in the RECORD and so covered by the plugin's digest.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

_FINDER_LINE = re.compile(r"^import (__editable___\w+_finder); \1\.install\([^;]*\)$")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _is_editable(dist: importlib.metadata.Distribution) -> bool:
    try:
        data = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    return isinstance(data, dict) and bool((data.get("dir_info") or {}).get("editable"))


def _own_editable_pth(dist: importlib.metadata.Distribution, name: str, text: str) -> bool:
    expected = f"__editable__.{_normalized(dist.metadata['Name'] or '')}-{dist.version}.pth"
    if name.lower() != expected.lower() or not _is_editable(dist):
        return False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("import ", "import\t")) and not _FINDER_LINE.match(line):
            return False
    return True


def pth_warnings(dist: importlib.metadata.Distribution | None) -> tuple[str, ...]:
    """One warning per ``.pth`` file ``dist`` installs (except its own editable-install path file)."""
    if dist is None:
        return ()
    warnings = []
    for item in dist.files or ():
        if item.suffix.lower() != ".pth":
            continue
        try:
            text = Path(str(dist.locate_file(item))).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        if _own_editable_pth(dist, item.name, text):
            continue
        runs_code = any(line.lstrip().startswith(("import ", "import\t")) for line in text.splitlines())
        what = "runs code" if runs_code else "adds sys.path entries"
        warnings.append(f"distribution {dist.metadata['Name']} {dist.version} installs {item.as_posix()}, which "
                        f"{what} at every Python start of this environment, outside drhost's control (no sandbox, "
                        f"no describe, no lock check can stop it)")
    return tuple(warnings)
