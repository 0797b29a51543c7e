"""What a rollback that did not complete left on the target, for the manual procedure of an inconsistent target.

An operator who must repair a target by hand needs to know which plugins' compensations failed and in what
state they left the target — read from the target, not a fixed label: what each plugin's verification
reported in the latest pass, the commands of this run still running there, and the installed version the
plugins find now. Reading is all this module does; nothing on the target is changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from drhost_hookspecs import Stage

from ..errors import RefusedError
from ..transport import TransportError

if TYPE_CHECKING:
    from ._env import Executor, RunEnv

_PROBE_TIMEOUT_S = 60.0


def _plugin_of(call: Mapping[str, Any]) -> str:
    # Calls recorded before "plugin" was kept: "dr-core/step rollback" or "dr-core drhost_rollback".
    return str(call.get("plugin") or str(call.get("what", "?")).split("/")[0].split(" ")[0])


def _verification(result: Mapping[str, Any] | None) -> str:
    if not result:
        return "no verification of this stage (the plugin has none, or it was not asked)"
    if not result.get("ran"):
        return f"its verification did not run ({result.get('why')})"
    problems = [str(p) for p in result.get("problems") or []]
    return "its verification reports: " + "; ".join(problems) if problems else \
        "its verification reports the old state"


def plugins_left(record: Mapping[str, Any], stage: Stage, how: Callable[[Mapping[str, Any]], str]) -> list[str]:
    """One line per plugin of ``stage`` whose compensation failed or whose verification found a problem: what
    failed (``how``: e.g. "killed after 30 s") and what its verification read from the target."""
    rollback = record.get("rollback") or {}
    calls: list[Mapping[str, Any]] = (rollback.get("failed_calls") or {}).get(stage.value) or []
    verified: Mapping[str, Mapping[str, Any]] = (rollback.get("verification") or {}).get(stage.value) or {}
    lines: list[str] = []
    named: list[str] = []
    for call in calls:
        plugin = _plugin_of(call)
        attempts = int(call.get("attempts") or 1)
        tries = f", the last of {attempts} attempts" if attempts > 1 else ""
        lines.append(f"- {plugin}: {call.get('what')} {how(call)}{tries}; {_verification(verified.get(plugin))}")
        named.append(plugin)
    for plugin, result in sorted(verified.items()):
        if plugin not in named and (result.get("problems") or not result.get("ran")):
            lines.append(f"- {plugin}: its compensations finished, but {_verification(result)}")
    return lines


def read_from_target(env: RunEnv, executor: Executor, name: str) -> list[str]:
    """What the target shows now: the commands of this run still running, and the installed version."""
    at = time.strftime("%H:%M:%S")
    lines = [f"- read from {name} at {at}:"]
    try:
        session = executor.control(name)
        found = session.still_running()
        if not found.detached:
            lines.append(f"  commands of this run still running: none (a {env.config['targets'][name]['transport']} "
                         f"target's commands end with their call)")
        elif found.unknown is not None:
            lines.append(f"  commands of this run still running: unknown ({found.unknown})")
        elif found.commands:
            lines.extend(f"  STILL RUNNING: {command}" for command in found.commands)
        else:
            lines.append("  commands of this run still running: none")
    except (TransportError, RefusedError) as exc:
        lines.append(f"  commands of this run still running: unknown (the target did not answer: {exc})")
    lines.append(f"  installed version: {_installed_version(env, executor, name)}")
    return lines


def _installed_version(env: RunEnv, executor: Executor, name: str) -> str:
    why: list[str] = []
    for plugin in env.plan.plugins_with("drhost_installed_version"):
        outcome = executor.call(name, plugin.name, "installed_version", timeout_s=_PROBE_TIMEOUT_S)
        if outcome.ok and outcome.result:
            return f"{outcome.result} (as {plugin.name} reads it)"
        why.append(f"{plugin.name}: {outcome.message or outcome.ended}" if not outcome.ok else
                   f"{plugin.name}: none found")
    return "unknown (" + ("; ".join(why) if why else "no plugin reads the installed version") + ")"
