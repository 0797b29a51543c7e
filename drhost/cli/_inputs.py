"""Turn command-line inputs into a validated config, the plugin registry, a plan and the package."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from drhost_hookspecs import PackageInfo, parse_faults

from ..config import LoadedConfig, load_config, validate_plugin_section
from ..demo.environment import (
    MAX_DEMO_TARGETS,
    demo_inventory,
    demo_package,
    planned_roots,
    planned_ssh_hosts,
    ssh_inventory,
)
from ..demo.sshd import SshHost
from ..errors import ConfigError, DrhostError, ExitCode, Origin, RefusedError
from ..orchestrator._rollout import Budget, RolloutError, batches_for
from ..packaging import Package, PackageError, read_package, verify_payload
from ..plan import Plan, build_plan, unknown_timeout_keys
from ..plugins import Registry, check_registry, discover
from ..state import state_root
from ..supervisor._cgroups import cgroup_support
from ..supervisor._confine import network_namespace_available
from ..supervisor._podman import container_available

#: Checked before a run is created, so that nothing is half-started.
BUILT_TRANSPORTS = ("local", "ssh")
BUILT_ISOLATIONS = ("thread", "process", "container")


class PackageRefused(DrhostError):
    exit_code = ExitCode.USAGE


def container_check(config: LoadedConfig, plan: Plan) -> str | None:
    """Refuse a run whose container plugins cannot be confined, unless weaker isolation is allowed.

    Returns the reason when the run goes ahead with weaker isolation (it is recorded with the run).
    """
    confined = [p.name for p in plan.plugins if p.isolation == "container"]
    if not confined:
        return None
    available, why = container_available(config.data)
    if available:
        return None
    if config.data["run"]["allow_weaker_isolation"]:
        return f"{', '.join(confined)} run in child processes instead of containers: {why}"
    raise RefusedError(
        f"plugins {', '.join(confined)} must run in a container, and none can be started here: {why}. They will "
        f"not run unconfined. Install podman with a working OCI runtime, or accept process isolation for this run "
        f"with --allow-weaker-isolation.")


@dataclass
class Prepared:
    config: LoadedConfig
    registry: Registry
    plan: Plan
    package: Package | None
    blocked: list[str]
    demo_roots: dict[str, Path] | None
    weaker_isolation: str | None = None
    demo_ssh_hosts: dict[str, SshHost] | None = None


def blocked_plugins(values: list[str] | None) -> list[str]:
    blocked = []
    for value in values or []:
        if not value.startswith("no:") or len(value) <= 3:
            raise ConfigError(Origin("command line", "", "-p"), "no:NAME (block plugin NAME)", value)
        blocked.append(value[3:])
    return blocked


def _check_targets(config: LoadedConfig) -> None:
    targets = config.data["targets"]
    if not targets:
        raise ConfigError(Origin("command line", "", "targets"),
                          "at least one target: -i inventory.ini with [target:NAME] sections, or --demo", "<none>")
    for name, target in targets.items():
        if not target.get("root"):
            raise ConfigError(config.origin(("targets", name, "root")), "the product's install root on the target",
                              "<nothing>")
        if target["transport"] == "local" and not Path(target["root"]).is_absolute():
            raise ConfigError(config.origin(("targets", name, "root")), "an absolute path", target["root"])
        if target["transport"] == "ssh" and not target.get("host"):
            raise ConfigError(config.origin(("targets", name, "host")), "the host name or address to reach over SSH",
                              "<nothing>")
        if target["transport"] not in BUILT_TRANSPORTS:
            raise ConfigError(config.origin(("targets", name, "transport")),
                              f"a transport this drhost has ({', '.join(BUILT_TRANSPORTS)})",
                              target["transport"])


def _section_origin(config: LoadedConfig, path: tuple[str, ...]) -> Origin:
    """Where a section came from: origins are recorded per key, so name the first key set inside it."""
    for key_path, origin in config.origins.items():
        if key_path[:len(path)] == path and len(key_path) > len(path):
            return origin
    return config.origin(path)


def _check_plugin_sections(config: LoadedConfig, registry: Registry) -> None:
    for name in list(config.data["plugins"]):
        record = registry.records.get(name)
        if record is None:
            known = ", ".join(sorted(registry.records)) or "none installed"
            raise ConfigError(_section_origin(config, ("plugins", name)),
                              f"a section for an installed plugin ({known})", name)
        if record.usable:
            validate_plugin_section(config, name, record.config_schema)


def validate_run_inputs(config: LoadedConfig, registry: Registry) -> Plan:
    """Every check that can be made before a run exists; returns the plan."""
    _check_targets(config)
    _check_plugin_sections(config, registry)
    plan = build_plan(registry, config.data)
    for plugin in plan.plugins:
        if plugin.isolation not in BUILT_ISOLATIONS:
            raise ConfigError(config.origin(("classes", plugin.plugin_class.value, "isolation")),
                              f"an isolation this drhost has ({', '.join(BUILT_ISOLATIONS)})", plugin.isolation)
    if config.data["process"]["cgroups"] == "required" and any(p.isolation == "process" for p in plan.plugins):
        missing = cgroup_support().missing()
        if missing:
            reasons = "; ".join(f"{controller}: {why}" for controller, why in missing.items())
            raise ConfigError(config.origin(("process", "cgroups")),
                              f"a machine that gives drhost the memory, cpu and pids cgroups ({reasons}); or "
                              f"[process] cgroups = auto", "required")
    if config.data["process"]["network"] == "none" and any(p.isolation == "process" for p in plan.plugins):
        available, why = network_namespace_available()
        if not available:
            raise ConfigError(config.origin(("process", "network")),
                              f"a machine where process workers can get their own network namespace ({why}); "
                              f"or set [process] network = host", "none")
    try:
        batches_for(config.data)
        Budget.from_config(config.data["rollout"])
    except RolloutError as exc:
        raise ConfigError(config.origin(("rollout", exc.key)), exc.expected, exc.found) from None
    unused = unknown_timeout_keys(plan, config.data)
    if unused:
        known = ", ".join(sorted({s.timeout_key for s in plan.steps}))
        raise ConfigError(config.origin(("timeouts", unused[0])), f"a timeout key of a planned step ({known})",
                          unused[0])
    for name, section in config.data["plugins"].items():
        if not section.get("fault"):
            continue
        steps = sorted({s.name for s in plan.steps if s.plugin == name})
        for spec in parse_faults(str(section["fault"])):
            if spec.step not in steps:
                raise ConfigError(config.origin(("plugins", name, "fault")),
                                  f"a step of plugin {name} ({', '.join(steps) or 'it has none in this run'})",
                                  spec.step)
            if spec.target is not None and spec.target not in config.data["targets"]:
                raise ConfigError(config.origin(("plugins", name, "fault")),
                                  f"a target of this run after '@' ({', '.join(sorted(config.data['targets']))})",
                                  spec.target)
    return plan


def load_package(path_text: str, origin: Origin) -> Package:
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(origin, "an upgrade package file (drproduct-VERSION.tar.gz)", f"<no such file: {path}>")
    try:
        package = read_package(path)
    except PackageError as exc:
        raise PackageRefused(str(exc)) from None
    problems = verify_payload(path)
    if problems:
        raise RefusedError(f"{path.name}: package content does not match its manifest: " + "; ".join(problems[:5]))
    return package


def package_info(package: Package) -> PackageInfo:
    return package.info()


def prepare(args: argparse.Namespace, *, need_package: bool) -> Prepared:
    """Everything a run needs, validated before anything on a target is touched."""
    blocked = blocked_plugins(args.plugin_options)
    files = [Path(p) for p in ([args.inventory] if args.inventory else []) + list(args.config or [])]
    overrides = list(args.set or [])
    if args.package:
        overrides.append(f"run.package={args.package}")
    if getattr(args, "forks", None):
        overrides.append(f"run.forks={args.forks}")
    if getattr(args, "allow_weaker_isolation", False):
        overrides.append("run.allow_weaker_isolation=true")
    if getattr(args, "on_failure", None):
        overrides.append(f"run.on_failure={args.on_failure}")
    demo_roots = None
    demo_ssh_hosts = None
    base = None
    if args.demo:
        if args.inventory:
            raise ConfigError(Origin("command line", "", "--demo"), "either --demo or -i INVENTORY", "both")
        root = state_root()
        count = getattr(args, "demo_targets", None)
        count = 3 if count is None else count
        if not 1 <= count <= MAX_DEMO_TARGETS:
            raise ConfigError(Origin("command line", "", "--demo-targets"),
                              f"a number of targets from 1 to {MAX_DEMO_TARGETS}", str(count))
        demo_roots = planned_roots(root, count)
        if getattr(args, "ssh", False):
            demo_ssh_hosts = planned_ssh_hosts(demo_roots)
            base = ssh_inventory(demo_roots, demo_ssh_hosts, demo_package(root))
        else:
            base = demo_inventory(demo_roots, demo_package(root))
    elif getattr(args, "ssh", False):
        raise ConfigError(Origin("command line", "", "--ssh"), "--ssh together with --demo", "--ssh alone")
    elif getattr(args, "demo_targets", None) is not None:
        raise ConfigError(Origin("command line", "", "--demo-targets"), "--demo-targets together with --demo",
                          "--demo-targets alone")
    config = load_config(files, overrides, base=base)
    registry = discover(blocked, config=config.data)
    # A plugin lock in force: exactly the locked plugins, or no run (exit 7), before anything else is checked.
    check_registry(registry, blocked)
    plan = validate_run_inputs(config, registry)
    weaker = container_check(config, plan)
    package = None
    if need_package:
        if not config.data["run"]["package"]:
            raise ConfigError(Origin("command line", "run", "package"),
                              "an upgrade package: --package FILE or [run] package = FILE", "<nothing>")
        package = load_package(config.data["run"]["package"], config.origin(("run", "package")))
    return Prepared(config, registry, plan, package, blocked, demo_roots, weaker, demo_ssh_hosts)
