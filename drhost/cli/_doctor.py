"""``drhost doctor``: what this machine gives each plugin class (cgroups, podman, limits and their mechanisms),
or, with ``--target NAME``, whether a target can be worked on."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drhost_hookspecs import PluginClass
from drhost_hookspecs._runtime import PROBE_PLUGIN, PROBE_VALUE

from ..config import LoadedConfig, load_config
from ..errors import ConfigError, DrhostError, ExitCode, Origin
from ..i18n import N_, translator
from ..policy import class_policy
from ..preflight import load_package
from ..supervisor import (
    ISOLATION_KINDS,
    CgroupSandbox,
    RlimitSandbox,
    Sandbox,
    WorkerDied,
    WorkerRunner,
    innermost,
    isolation,
    make_sandbox,
)
from ..target_check import all_ok, check_target

#: What each mechanism does NOT guarantee, for the operator deciding whether it is enough.
CAVEATS = {
    "thread": N_("runs inside drhost itself: no memory, CPU or process limit is enforced (memory_mb is sampled and "
                 "warned about, cpu_percent is not applied at all); a crash, a leak or a hang "
                 "in C code is drhost's own; a hung step cannot be killed, only asked to stop (cooperative deadline)"),
    "cgroup_memory": N_("counts the page cache the worker causes, not only its own memory; the kernel OOM killer "
                        "sends SIGKILL, so the plugin gets no chance to clean up; nested under drhost's own cgroup, "
                        "whose lower limit (if any) wins"),
    "cgroup_cpu": N_("a share of one core per 100 ms period, not a deadline: a throttled step runs longer and "
                     "is stopped by the step timeout, not by the CPU limit"),
    "cgroup_pids": N_("counts threads as well as processes; bounds how many exist at once, not what each does"),
    "cgroup_kill": N_("every process in the cgroup is killed, setsid() escapees included; work handed to another "
                      "service (systemd, cron, a remote host) is outside the cgroup"),
    "rlimit_memory": N_("RLIMIT_AS bounds address space, not memory: thread stacks and malloc arenas hit it early "
                        "and mapped files count; resident memory is only sampled by the supervisor every 0.25 s, "
                        "so a fast allocation overshoots before the worker is killed"),
    "rlimit_cpu": N_("no CPU share: a spinning plugin can take a whole core"),
    "rlimit_pids": N_("RLIMIT_NPROC does nothing for root; the process count is only sampled by the supervisor"),
    "rlimit_kill": N_("the process group is killed: a child that calls setsid() leaves the group and survives"),
    "nofile": N_("RLIMIT_NOFILE is per process: every child the plugin starts gets its own count"),
    "container": N_("shares the host's kernel (no VM boundary); limits and confinement are what podman and its OCI "
                    "runtime enforce (see 'limits')"),
    "confined": N_("the host stays readable where it is world-readable (read-only, not hidden; only directories the "
                   "worker user cannot traverse and /run are hidden); the kernel is shared, and where it allows "
                   "unprivileged user namespaces they are kernel attack surface; all process workers share one uid "
                   "(their own pid namespaces keep them from signalling or tracing each other)"),
    "network_none": N_("an empty network namespace: the worker reaches its target only through the Context API"),
    "network_host": N_("the host's network: a plugin can open any connection the controller can"),
}


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
    if not isolation(policy.isolation).in_worker:
        found["limits"] = {
            "mechanism": "none (thread in the host)", "deadline": "cooperative (ctx.cancelled)",
            "memory": f"sampled, warned, not enforced: the host's resident memory every 0.25 s while a call runs; "
                      f"over {policy.memory_mb} MiB a warning and a finding in the step's record",
            "cpu": f"not enforced: cpu_percent = {policy.cpu_percent} is not applied to threads of the host",
            "output": "what the plugin prints (print, sys.stdout, fd 1) goes to drhost's stderr, never stdout",
            "state": "state and results must be JSON: anything else fails the step, named (every class)",
        }
        found["not_guaranteed"] = [CAVEATS[policy.isolation]]
        return found
    limit = int((config.get("run") or {}).get("worker_message_limit_bytes", 4 * 1024 * 1024))
    try:
        sandbox = make_sandbox(policy, label=f"doctor/{plugin_class.value}", message_limit=limit,
                               config=dict(config))
    except DrhostError as exc:
        found["refused"] = str(exc)
        found["not_guaranteed"] = ["no worker of this class can start here"]
        return found
    inner = innermost(sandbox)
    # a worker process (not a container, slow to start) is probed live
    process_worker = isinstance(inner, (CgroupSandbox, RlimitSandbox))
    try:
        found["limits"] = sandbox.in_force()
        if process_worker:
            found["proven"] = _live_probe(sandbox, limit)
    finally:
        sandbox.close()
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
        caveats.append(f"{sandbox.kind}: {CAVEATS.get(sandbox.kind, 'see limits')}")
    if process_worker:
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
    """Everything ``drhost doctor`` prints, as one JSON-able object: each isolation kind's sections, then classes."""
    report: dict[str, Any] = {}
    for kind in ISOLATION_KINDS.values():
        report.update(kind.doctor(config))
    network = report.get("process_network") or {"mode": str((config.get("process") or {}).get("network", "host"))}
    report["classes"] = {c.value: _class_report(c, config, network) for c in PluginClass}
    return report


def _print_text(report: Mapping[str, Any]) -> None:
    t = translator()
    for kind in ISOLATION_KINDS.values():
        for line in kind.doctor_lines(report, t):
            print(line)
    for name, row in report["classes"].items():
        print("\n" + t("class {name}: isolation {isolation}").format(name=name, isolation=row["isolation"]))
        if "refused" in row:
            print("  " + t("REFUSED: {why}").format(why=row["refused"]))
        for key, value in (row.get("limits") or {}).items():
            print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        proven = row.get("proven")
        if proven:
            print("  " + t("proven by a live worker just now: {who}").format(
                who=proven.get("identity") or proven["worker"]))
            for what, result in (proven.get("refused") or {}).items():
                print("    " + t("refused: {what} ({result})").format(what=what, result=result))
        for caveat in row["not_guaranteed"]:
            # "memory: TEXT" in the JSON (English); the text is a CAVEATS entry, translated here.
            key, _, text = caveat.partition(": ")
            shown = f"{key}: {t(text)}" if text else t(caveat)
            print("  " + t("does not guarantee - {caveat}").format(caveat=shown))


def _doctor_targets(args: argparse.Namespace, config: LoadedConfig) -> int:
    """``--target NAME``: prove each named target can be worked on (login, become, tools, root, disk)."""
    targets = config.data.get("targets") or {}
    unknown = [name for name in args.targets if name not in targets]
    if unknown:
        known = ", ".join(sorted(targets)) or "none"
        raise ConfigError(Origin("command line", "", "--target"), f"a target of the inventory ({known})",
                          unknown[0])
    required = None
    if config.data["run"].get("package"):
        required = load_package(config.data["run"]["package"], config.origin(("run", "package")),
                                config).required_free_bytes
    results = {name: check_target(name, targets[name], config.data, required_bytes=required)
               for name in args.targets}
    if args.json:
        print(json.dumps({"targets": {name: [dataclasses.asdict(check) for check in checks]
                                      for name, checks in results.items()}}, indent=2))
    else:
        t = translator()
        for name, checks in results.items():
            print(t("target {name}: ready").format(name=name) if all_ok(checks)
                  else t("target {name}: NOT ready").format(name=name))
            for check in checks:
                print(check.line(t))
    return ExitCode.SUCCEEDED if all(all_ok(checks) for checks in results.values()) else ExitCode.FAILED


def cmd_doctor(args: argparse.Namespace) -> int:
    files = [Path(f) for f in [*([args.inventory] if args.inventory else []), *(args.config_files or [])]]
    overrides = list(args.set or []) + ([f"run.package={args.package}"] if args.package else [])
    config = load_config(files, overrides)
    if args.targets:
        return _doctor_targets(args, config)
    report = doctor_report(config.data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    return ExitCode.SUCCEEDED
