"""Run ``drhost plugin-test`` as an author does and read its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLUGIN_TEST_TIMEOUT_S = 600.0


def plugin_test(subject: str | Path, *args: str, tmp: Path, env: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, Any]]:
    """(exit code, report) of ``drhost plugin-test SUBJECT --json``; kept work dirs land under ``tmp``."""
    import os

    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "drhost", "plugin-test", str(subject), "--json", *args],
                          capture_output=True, text=True, timeout=PLUGIN_TEST_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TMPDIR": str(tmp), "DRHOST_STATE_DIR": str(tmp / "state"),
                               **(env or {})})
    assert proc.stdout.strip(), f"no report; stderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report


def results(report: dict[str, Any], check: str, status: str | None = None) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["check"] == check and (status is None or c["status"] == status)]


def failures(report: dict[str, Any]) -> dict[str, list[str]]:
    """check -> the reasons it failed with."""
    found: dict[str, list[str]] = {}
    for c in report["checks"]:
        if c["status"] == "fail":
            found.setdefault(c["check"], []).append(c["reason"])
    return found


def only_failed(report: dict[str, Any], expected: Sequence[str]) -> None:
    """Exactly the ``expected`` checks failed, each with a fix."""
    assert sorted(failures(report)) == sorted(expected), json.dumps(failures(report), indent=1)[:3000]
    for c in report["checks"]:
        if c["status"] == "fail":
            assert c["fix"], c
