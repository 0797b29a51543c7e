"""``drhost doctor``: what this machine gives each plugin class (cgroups, podman, limits and their mechanisms)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drhost_hookspecs import PluginClass
from drhost_hookspecs._runtime import PROBE_PLUGIN, PROBE_VALUE

from ..config import load_config
from ..errors import DrhostError, ExitCode
from ..policy import class_policy
from ..supervisor import (
    LIMIT_CONTROLLERS,
    CgroupSandbox,
    RlimitSandbox,
    Sandbox,
    WorkerDied,
    WorkerRunner,
    innermost,
    make_sandbox,
    probe_cgroups,
)

#: What each mechanism does NOT guarantee, for the operator deciding whether it is enough.
CAVEATS = {
    "thread": "runs inside drhost itself: no memory, CPU or process limit is enforced (memory_mb is sampled and "
              "warned about, cpu_percent is not applied at all); a crash, a leak or a hang "
              "in C code is drhost's own; a hung step cannot be killed, only asked to stop (cooperative deadline)",
    "cgroup_memory": "counts the page cache the worker causes, not only its own memory; the kernel OOM killer "
                     "sends SIGKILL, so the plugin gets no chance to clean up; nested under drhost's own cgroup, "
                     "whose lower limit (if any) wins",
    "cgroup_cpu": "a share of one core per 100 ms period, not a deadline: a throttled step runs longer and "
                  "is stopped by the step timeout, not by the CPU limit",
    "cgroup_pids": "counts threads as well as processes; bounds how many exist at once, not what each does",
    "cgroup_kill": "every process in the cgroup is killed, setsid() escapees included; work handed to another "
                   "service (systemd, cron, a remote host) is outside the cgroup",
    "rlimit_memory": "RLIMIT_AS bounds address space, not memory: thread stacks and malloc arenas hit it early "
                     "and mapped files count; resident memory is only sampled by the supervisor every 0.25 s, "
                     "so a fast allocation overshoots before the worker is killed",
    "rlimit_cpu": "no CPU share: a spinning plugin can take a whole core",
    "rlimit_pids": "RLIMIT_NPROC does nothing for root; the process count is only sampled by the supervisor",
    "rlimit_kill": "the process group is killed: a child that calls setsid() leaves the group and survives",
    "nofile": "RLIMIT_NOFILE is per process: every child the plugin starts gets its own count",
    "container": "shares the host's kernel (no VM boundary); limits and confinement are what podman and its OCI "
                 "runtime enforce (see 'limits')",
    "confined": "the host stays readable where it is world-readable (read-only, not hidden; only directories the "
                "worker user cannot traverse and /run are hidden); the kernel is shared, and where it allows "
                "unprivileged user namespaces they are kernel attack surface; all process workers share one uid "
                "(their own pid namespaces keep them from signalling or tracing each other)",
    "network_none": "an empty network namespace: the worker reaches its target only through the Context API",
    "network_host": "the host's network: a plugin can open any connection the controller can",
}


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return done.returncode, (done.stdout or done.stderr).strip()


def _podman() -> dict[str, Any]:
    path = shutil.which("podman")
    if path is None:
        return {"present": False, "path": None, "version": None}
    code, text = _run([path, "--version"])
    return {"present": True, "path": path, "version": text if code == 0 else None,
            **({} if code == 0 else {"error": text[-300:]})}


def _container(config: Mapping[str, Any]) -> dict[str, Any]:
    try:
        podman = importlib.import_module("drhost.supervisor._podman")
    except ImportError:
        return {"available": False, "detail": "container sandbox: not available in this build"}
    check: Callable[[Mapping[str, Any]], tuple[bool, str]] | None = getattr(podman, "container_available", None)
    if check is None:
        return {"available": False, "detail": "container sandbox: not available in this build"}
    try:
        available, detail = check(config)
    except Exception as exc:  # a probe that breaks is a finding, not a doctor crash
        return {"available": False, "detail": f"container probe failed: {type(exc).__name__}: {exc}"}
    return {"available": bool(available), "detail": str(detail)}


def _network(config: Mapping[str, Any]) -> dict[str, Any]:
    mode = str((config.get("process") or {}).get("network", "host"))
    found: dict[str, Any] = {"mode": mode}
    if mode == "none":
        try:
            netns = importlib.import_module("drhost.supervisor._confine")
            available, detail = netns.network_namespace_available()
            found.update(available=bool(available), detail=str(detail))
        except (ImportError, AttributeError):
            found.update(available=False, detail="network namespaces: not available in this build")
    return found


def _live_probe(sandbox: Sandbox, message_limit: int) -> dict[str, Any]:
    """Start a real worker of the class and report what its confinement proved (or that it did not start)."""
    runner = WorkerRunner(PROBE_PLUGIN, sandbox=sandbox, logger=logging.getLogger("drhost.doctor"),
                          message_limit=message_limit, value=PROBE_VALUE)
    try:
        runner.start()
        confined = (runner.hello.get("limits") or {}).get("confined")
    except WorkerDied as exc:
        return {"worker": f"did not start: {exc}"}
    finally:
        runner.close()
    if not confined:
        return {"worker": "started", "confinement": "none proven (drhost is not root: the worker runs as drhost's "
                                                    "own user)"}
    return {"worker": "started", "identity": f"uid {confined['uid']} ({confined['user']}), capabilities "
                                             f"{confined['capabilities']}, no_new_privs {confined['no_new_privs']}",
            "namespaces": confined.get("namespaces", []), "refused": confined.get("refused", {})}


def _class_report(plugin_class: PluginClass, config: Mapping[str, Any], network: Mapping[str, Any]) -> dict[str, Any]:
    policy = class_policy(config, plugin_class)
    found: dict[str, Any] = {"isolation": policy.isolation}
    if policy.isolation == "thread":
        found["limits"] = {
            "mechanism": "none (thread in the host)", "deadline": "cooperative (ctx.cancelled)",
            "memory": f"sampled, warned, not enforced: the host's resident memory every 0.25 s while a call runs; "
                      f"over {policy.memory_mb} MiB a warning and a finding in the step's record",
            "cpu": f"not enforced: cpu_percent = {policy.cpu_percent} is not applied to threads of the host",
            "output": "what the plugin prints (print, sys.stdout, fd 1) goes to drhost's stderr, never stdout",
            "state": "state and results must be JSON: anything else fails the step, named (every class)",
        }
        found["not_guaranteed"] = [CAVEATS["thread"]]
        return found
    limit = int((config.get("run") or {}).get("worker_message_limit_bytes", 4 * 1024 * 1024))
    try:
        sandbox = make_sandbox(policy, label=f"doctor/{plugin_class.value}", message_limit=limit,
                               config=dict(config))
    except DrhostError as exc:
        found["refused"] = str(exc)
        found["not_guaranteed"] = ["no worker of this class can start here"]
        return found
    try:
        found["limits"] = sandbox.in_force()
        if sandbox.kind == "process":
            found["proven"] = _live_probe(sandbox, limit)
    finally:
        sandbox.close()
    inner = innermost(sandbox)
    caveats: list[str] = []
    if isinstance(inner, CgroupSandbox):
        in_force = found["limits"]
        for key, name in (("memory", "cgroup_memory"), ("cpu", "cgroup_cpu"), ("pids", "cgroup_pids")):
            value = str(in_force.get(key, ""))
            caveats.append(f"{key}: {CAVEATS[name if value.startswith('cgroup') else 'rlimit_' + key]}")
        caveats.append(f"kill: {CAVEATS['cgroup_kill']}")
    elif isinstance(inner, RlimitSandbox):
        caveats += [f"memory: {CAVEATS['rlimit_memory']}", f"cpu: {CAVEATS['rlimit_cpu']}",
                    f"pids: {CAVEATS['rlimit_pids']}", f"kill: {CAVEATS['rlimit_kill']}"]
    else:
        caveats.append(f"{sandbox.kind}: {CAVEATS['container'] if sandbox.kind == 'container' else 'see limits'}")
    if sandbox.kind == "process":
        caveats.append(f"nofile: {CAVEATS['nofile']}")
        net = "network_none" if network.get("mode") == "none" else "network_host"
        found["limits"]["network"] = ("none (own network namespace)" if net == "network_none"
                                      and network.get("available") else network.get("mode"))
        caveats.append(f"network: {CAVEATS[net]}")
        if "identity" in found["limits"]:
            caveats.append(f"confinement: {CAVEATS['confined']}")
    found["not_guaranteed"] = caveats
    return found


def doctor_report(config: Mapping[str, Any]) -> dict[str, Any]:
    """Everything ``drhost doctor`` prints, as one JSON-able object."""
    support = probe_cgroups()  # fresh: doctor reports what works now, not what worked at start-up
    controllers = {}
    for controller in (*LIMIT_CONTROLLERS, "cpuacct"):
        if support.version == 2 and controller == "cpuacct":
            continue
        base = support.bases.get(controller)
        controllers[controller] = {"usable": base is not None, "parent": str(base) if base else None,
                                   "problem": support.problems.get(controller)}
    network = _network(config)
    return {
        "cgroups": {"version": support.version, "mode": str((config.get("process") or {}).get("cgroups", "auto")),
                    "controllers": controllers},
        "podman": _podman(),
        "container": _container(config),
        "process_network": network,
        "classes": {c.value: _class_report(c, config, network) for c in PluginClass},
    }


def _print_text(report: Mapping[str, Any]) -> None:
    cg = report["cgroups"]
    version = {0: "none", 1: "v1", 2: "v2"}.get(cg["version"], str(cg["version"]))
    print(f"cgroups: {version} ([process] cgroups = {cg['mode']})")
    for name, row in cg["controllers"].items():
        state = f"usable under {row['parent']}" if row["usable"] else f"NOT usable: {row['problem']}"
        print(f"  {name:8} {state}")
    podman = report["podman"]
    print(f"podman: {podman['version'] or podman.get('error', '?')} ({podman['path']})" if podman["present"]
          else "podman: not found on PATH")
    container = report["container"]
    print(f"container sandbox: {'available' if container['available'] else 'NOT available'}: {container['detail']}"
          if not container["detail"].startswith("container sandbox:") else container["detail"])
    net = report["process_network"]
    print(f"process network: {net['mode']}" + (f" ({net.get('detail')})" if "detail" in net else ""))
    for name, row in report["classes"].items():
        print(f"\nclass {name}: isolation {row['isolation']}")
        if "refused" in row:
            print(f"  REFUSED: {row['refused']}")
        for key, value in (row.get("limits") or {}).items():
            print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        proven = row.get("proven")
        if proven:
            print(f"  proven by a live worker just now: {proven.get('identity') or proven['worker']}")
            for what, result in (proven.get("refused") or {}).items():
                print(f"    refused: {what} ({result})")
        for caveat in row["not_guaranteed"]:
            print(f"  does not guarantee - {caveat}")


def cmd_doctor(args: argparse.Namespace) -> int:
    config = load_config([Path(f) for f in args.config_files or []], list(args.set or []))
    report = doctor_report(config.data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    return ExitCode.SUCCEEDED
