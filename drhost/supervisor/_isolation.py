"""The isolation kinds, one registry entry each: what a kind needs of this machine, what ``drhost doctor``
reports of it, the sandbox of its workers, and what a killed controller of a run may have left behind.

Callers look a kind up by its config name (``[class:NAME] isolation``) and never compare names themselves,
so a new kind is one entry here (see docs/architecture.md, "How to add an isolation kind").
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import said_in
from ..i18n import Translate
from ..policy import ClassPolicy, Isolation
from ..transport import Availability
from ._cgroups import LIMIT_CONTROLLERS, cgroup_support, probe_cgroups, remove_run_cgroups
from ._confine import network_namespace_available
from ._container import remove_left_containers
from ._factory import container_sandbox, process_worker_sandbox
from ._podman import container_available
from ._sandbox import Sandbox


@dataclass(frozen=True)
class Removed:
    """What a clean-up removed: the event ``{what}.removed`` carries ``names`` under the field ``what``."""

    what: str
    names: tuple[str, ...]
    message: str


class IsolationKind(Protocol):
    """One isolation kind."""

    @property
    def name(self) -> Isolation:
        """The config name (``[class:NAME] isolation``)."""
        ...

    @property
    def noun(self) -> str:
        """What runs a call, in the timeout diagnosis ("thread", "worker process", "container")."""
        ...

    @property
    def in_worker(self) -> bool:
        """Whether calls run in a worker process in a sandbox (False: in a thread of drhost itself)."""
        ...

    @property
    def weaker(self) -> Isolation | None:
        """The kind that stands in where this one cannot start and weaker isolation is allowed; None: refuse."""
        ...

    def config_problems(self, config: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str, object]]:
        """Settings of this kind this machine cannot honour: (config path, what was expected, what was found)."""
        ...

    def available(self, config: Mapping[str, Any]) -> Availability:
        """Whether this machine can run plugins of the kind with ``config``."""
        ...

    def doctor(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The top-level sections of ``drhost doctor --json`` this kind owns (probed now)."""
        ...

    def doctor_lines(self, report: Mapping[str, Any], t: Translate) -> list[str]:
        """The plain ``drhost doctor`` lines of those sections, in the language of ``t``."""
        ...

    def make_sandbox(self, policy: ClassPolicy, *, label: str, message_limit: int,
                     config: dict[str, Any]) -> Sandbox:
        """The sandbox a worker of ``policy``'s class gets; raises for a kind without workers."""
        ...

    def clean_up(self, run_id: str, config: Mapping[str, Any], *, previous_gone: bool,
                 spare: Callable[[str], bool] | None = None) -> list[Removed]:
        """Remove what workers of run ``run_id`` left when their controller was killed (``spare``: keep)."""
        ...


@dataclass(frozen=True)
class ThreadIsolation:
    """Plugin code in a thread of drhost: nothing to probe, no sandbox, nothing outlives the controller."""

    name: Isolation = "thread"
    noun: str = "thread"
    in_worker: bool = False
    weaker: Isolation | None = None

    def config_problems(self, config: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str, object]]:
        return []

    def available(self, config: Mapping[str, Any]) -> Availability:
        return Availability(True, "runs in drhost's own process")

    def doctor(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def doctor_lines(self, report: Mapping[str, Any], t: Translate) -> list[str]:
        return []

    def make_sandbox(self, policy: ClassPolicy, *, label: str, message_limit: int,
                     config: dict[str, Any]) -> Sandbox:
        raise ValueError(f"no sandbox for isolation {policy.isolation!r}")

    def clean_up(self, run_id: str, config: Mapping[str, Any], *, previous_gone: bool,
                 spare: Callable[[str], bool] | None = None) -> list[Removed]:
        # a thread dies with its controller: nothing is left
        return []


@dataclass(frozen=True)
class ProcessIsolation:
    """A worker process in cgroups (or rlimits), confined by namespaces."""

    name: Isolation = "process"
    noun: str = "worker process"
    in_worker: bool = True
    weaker: Isolation | None = None

    def config_problems(self, config: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str, object]]:
        process = config.get("process") or {}
        found: list[tuple[tuple[str, ...], str, object]] = []
        if process.get("cgroups") == "required":
            missing = cgroup_support().missing()
            if missing:
                reasons = "; ".join(f"{controller}: {why}" for controller, why in missing.items())
                found.append((("process", "cgroups"), f"a machine that gives drhost the memory, cpu and pids "
                                                      f"cgroups ({reasons}); or [process] cgroups = auto", "required"))
        if process.get("network") == "none":
            available, why = network_namespace_available()
            if not available:
                found.append((("process", "network"), f"a machine where process workers can get their own "
                                                      f"network namespace ({why}); or set [process] network = host",
                              "none"))
        return found

    def available(self, config: Mapping[str, Any]) -> Availability:
        # rlimits are the fallback, so a worker can always start; only network = none needs the machine's help
        if str((config.get("process") or {}).get("network", "host")) != "none":
            return Availability(True, "process workers")
        ok, detail = network_namespace_available()
        return Availability(ok, detail)

    def doctor(self, config: Mapping[str, Any]) -> dict[str, Any]:
        support = probe_cgroups()  # fresh: doctor reports what works now, not what worked at start-up
        controllers = {}
        for controller in (*LIMIT_CONTROLLERS, "cpuacct"):
            if support.version == 2 and controller == "cpuacct":
                continue
            base = support.bases.get(controller)
            controllers[controller] = {"usable": base is not None, "parent": str(base) if base else None,
                                       "problem": support.problems.get(controller)}
        mode = str((config.get("process") or {}).get("network", "host"))
        network: dict[str, Any] = {"mode": mode}
        if mode == "none":
            available, detail = network_namespace_available()
            network.update(available=bool(available), detail=detail)  # a worded detail stays a Phrase
        return {"cgroups": {"version": support.version, "mode": str((config.get("process") or {}).get("cgroups",
                                                                                                      "auto")),
                            "controllers": controllers},
                "process_network": network}

    def doctor_lines(self, report: Mapping[str, Any], t: Translate) -> list[str]:
        cg = report["cgroups"]
        version = {0: "none", 1: "v1", 2: "v2"}.get(cg["version"], str(cg["version"]))
        lines = [t("cgroups: {version} ([process] cgroups = {mode})").format(version=version, mode=cg["mode"])]
        for name, row in cg["controllers"].items():
            state = (t("usable under {parent}").format(parent=row["parent"]) if row["usable"]
                     else t("NOT usable: {problem}").format(problem=row["problem"]))
            lines.append(f"  {name:8} {state}")
        net = report["process_network"]
        lines.append(t("process network: {mode}").format(mode=net["mode"])
                     + (f" ({said_in(net['detail'], t)})" if "detail" in net else ""))
        return lines

    def make_sandbox(self, policy: ClassPolicy, *, label: str, message_limit: int,
                     config: dict[str, Any]) -> Sandbox:
        return process_worker_sandbox(policy, label=label, message_limit=message_limit, config=config)

    def clean_up(self, run_id: str, config: Mapping[str, Any], *, previous_gone: bool,
                 spare: Callable[[str], bool] | None = None) -> list[Removed]:
        cgroups = remove_run_cgroups(run_id, spare=spare)
        return [Removed("cgroups", tuple(cgroups), f"removed {len(cgroups)} cgroup(s) left by an earlier "
                                                   f"controller of this run")] if cgroups else []


def _podman_version() -> dict[str, Any]:
    path = shutil.which("podman")
    if path is None:
        return {"present": False, "path": None, "version": None}
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL, check=False)
        code, text = done.returncode, (done.stdout or done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        code, text = 1, str(exc)
    return {"present": True, "path": path, "version": text if code == 0 else None,
            **({} if code == 0 else {"error": text[-300:]})}


PROCESS = ProcessIsolation()


@dataclass(frozen=True)
class ContainerIsolation:
    """A worker in a podman container; where allowed and podman is missing, a process worker instead."""

    name: Isolation = "container"
    noun: str = "container"
    in_worker: bool = True
    weaker: Isolation | None = "process"

    def config_problems(self, config: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str, object]]:
        # a missing podman is refused (or made weaker) by preflight's container check, with its own exit code
        return []

    def available(self, config: Mapping[str, Any]) -> Availability:
        try:
            ok, detail = container_available(config)
        except Exception as exc:  # a probe that breaks is a finding, not a crash of the caller
            return Availability(False, f"container probe failed: {type(exc).__name__}: {exc}")
        return Availability(bool(ok), detail)  # a worded detail stays a Phrase: doctor says it in the language

    def doctor(self, config: Mapping[str, Any]) -> dict[str, Any]:
        found = self.available(config)
        return {"podman": _podman_version(), "container": {"available": found.ok, "detail": found.reason}}

    def doctor_lines(self, report: Mapping[str, Any], t: Translate) -> list[str]:
        podman = report["podman"]
        container = report["container"]
        return [f"podman: {podman['version'] or podman.get('error', '?')} ({podman['path']})" if podman["present"]
                else t("podman: not found on PATH"),
                (t("container sandbox: available: {detail}") if container["available"]
                 else t("container sandbox: NOT available: {detail}")).format(
                    detail=said_in(container["detail"], t))]

    def make_sandbox(self, policy: ClassPolicy, *, label: str, message_limit: int,
                     config: dict[str, Any]) -> Sandbox:
        return container_sandbox(policy, label=label, message_limit=message_limit, config=config)

    def clean_up(self, run_id: str, config: Mapping[str, Any], *, previous_gone: bool,
                 spare: Callable[[str], bool] | None = None) -> list[Removed]:
        # the weaker fallback runs process workers: their cgroups go too
        found = PROCESS.clean_up(run_id, config, previous_gone=previous_gone, spare=spare)
        removed = remove_left_containers(config, run_id=run_id if previous_gone else None)
        if removed:
            found.append(Removed("containers", tuple(removed), f"removed {len(removed)} container(s) left by a "
                                                               f"killed controller"))
        return found


#: Every isolation kind this drhost has, by config name (the order ``drhost doctor`` reports them in).
ISOLATION_KINDS: dict[Isolation, IsolationKind] = {
    kind.name: kind for kind in (ThreadIsolation(), PROCESS, ContainerIsolation())
}


def isolation(name: str) -> IsolationKind:
    """The kind called ``name``; an unknown name is an error naming the known ones."""
    for key, kind in ISOLATION_KINDS.items():
        if key == name:
            return kind
    raise ValueError(f"unknown isolation {name!r}; this drhost has: {', '.join(ISOLATION_KINDS)}")


def make_sandbox(policy: ClassPolicy, *, label: str, message_limit: int, config: dict[str, Any]) -> Sandbox:
    """The sandbox a worker of ``policy``'s class gets. ``label`` names it (run, plugin, target)."""
    return isolation(policy.isolation).make_sandbox(policy, label=label, message_limit=message_limit, config=config)
