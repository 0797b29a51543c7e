"""Retryable steps keep their promise: a second run right after the first leaves the same target."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from drhost_hookspecs import Stage
from plugin_harness import Harness

#: Changes on every call by nature, not because a step is not idempotent.
VOLATILE_STATE = {"health_latency_ms"}


def _tree(root: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative.split("/")[0] in ("run", "log") or "__pycache__" in relative:
            # The daemon's pid and log lines are its own, not a step's doing.
            found[relative] = "present"
        elif path.is_symlink():
            found[relative] = f"-> {path.readlink()}"
        elif path.is_file():
            found[relative] = f"{path.stat().st_mode:o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
        else:
            found[relative] = f"dir {path.stat().st_mode:o}"
    return found


def _snapshot(h: Harness) -> dict[str, Any]:
    status = h.tool("drproductctl", "status")
    return {
        "tree": _tree(h.root),
        "running": status.returncode == 0,
        "state": {name: {k: v for k, v in ctx.state.items() if k not in VOLATILE_STATE}
                  for name, ctx in h.ctxs.items()},
    }


def test_every_retryable_step_run_twice_gives_the_same_state(harness: Harness) -> None:
    """Each retryable step of every stage, run again right after its first run, changes nothing more."""
    checked = []
    for stage in Stage.ordered():
        for plugin, name in harness.ordered(stage):
            step = harness.plugins[plugin].step(stage, name)
            harness.run_step(stage, plugin, name)
            if not step.retryable:
                continue
            first = _snapshot(harness)
            harness.run_step(stage, plugin, name)
            assert _snapshot(harness) == first, f"{stage}/{plugin}/{name} is not idempotent"
            checked.append(name)
    assert len(checked) == 22
    assert harness.tool_json("drproductctl", "health")["version"] == "2.0.0"
