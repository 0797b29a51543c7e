"""Every check that can be made before a run exists: targets, plugin sections, the plan, the package.

Below the CLI so that every front end (``drhost upgrade``, ``drhost config check``, ``drhost plugin-test``)
refuses the same inputs with the same messages before anything on a target is touched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from drhost_hookspecs import PackageInfo
from drhost_hookspecs._runtime import parse_faults

from .config import LoadedConfig, validate_plugin_section
from .errors import ConfigError, DrhostError, ExitCode, Origin, RefusedError, message_phrase
from .orchestrator import Budget, RolloutError, batches_for
from .packaging import (
    DEFAULT_MAX_UNPACKED_BYTES,
    Package,
    PackageError,
    check_product,
    read_package,
    verify_payload,
)
from .packaging.manifest import MIB
from .plan import Plan, build_plan, unknown_timeout_keys
from .plugins import Registry
from .supervisor import ISOLATION_KINDS, container_available, isolation
from .transport import TRANSPORTS, transport

__all__ = [
    "BUILT_ISOLATIONS",
    "BUILT_TRANSPORTS",
    "PackageRefused",
    "container_check",
    "input_problems",
    "load_package",
    "package_info",
    "plugin_section_problems",
    "root_identity",
    "target_problems",
    "targets_well_formed",
    "validate_run_inputs",
]

#: Checked before a run is created, so that nothing is half-started.
BUILT_TRANSPORTS = tuple(TRANSPORTS)
BUILT_ISOLATIONS = tuple(ISOLATION_KINDS)


class PackageRefused(DrhostError):
    """An unusable package: bad input (exit 2), refused before any run or target is touched."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, path: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


def container_check(config: LoadedConfig, plan: Plan) -> str | None:
    """Refuse a run whose container plugins cannot be confined, unless weaker isolation is allowed.

    Returns the reason when the run goes ahead with weaker isolation (it is recorded with the run).
    """
    # the kinds with a weaker stand-in (containers) are the ones a machine may lack
    confined = [p.name for p in plan.plugins if isolation(p.isolation).weaker is not None]
    if not confined:
        return None
    available, why = container_available(config.data)
    if available:
        return None
    if config.data["run"]["allow_weaker_isolation"]:
        return f"{', '.join(confined)} run in child processes instead of containers: {why}"
    raise RefusedError.worded(
        "plugins {plugins} must run in a container, and none can be started here: {why}. They will not run "
        "unconfined. Install podman with a working OCI runtime, or accept process isolation for this run with "
        "--allow-weaker-isolation.", plugins=", ".join(confined), why=why)


#: Files an SSH target reads its credentials from: a run fails at connect time without them.
KEY_FILES = ("key_file", "password_file")
#: Where settings of ``--demo`` come from (drhost.config's ``base``).
DEMO_ORIGIN = "demo inventory"


def _target_problems(config: LoadedConfig, name: str, target: dict[str, object]) -> list[ConfigError]:
    problems = []
    root = target.get("root")
    if not root:
        problems.append(ConfigError(config.origin(("targets", name, "root")),
                                    "the product's install root on the target", "<nothing>"))
    kind = TRANSPORTS.get(str(target["transport"]))
    if kind is None:
        problems.append(ConfigError(config.origin(("targets", name, "transport")),
                                    f"a transport this drhost has ({', '.join(BUILT_TRANSPORTS)})",
                                    target["transport"]))
        return problems
    for key, expected, found in kind.problems(target):
        problems.append(ConfigError(config.origin(("targets", name, key)), expected, found))
    for key in kind.key_files:
        # The SSH demo's keys are made when its sshd starts, after these checks.
        if target.get(key) and config.origin(("targets", name, key)).file != DEMO_ORIGIN:
            found = _not_a_readable_file(Path(str(target[key])))
            if found:
                problems.append(ConfigError(config.origin(("targets", name, key)), "a readable regular file",
                                            f"<{found}: {target[key]}>"))
    return problems


def _not_a_readable_file(path: Path) -> str | None:
    """What ``path`` is instead of a file this process can read, or None when it is one."""
    try:
        info = path.stat()
    except OSError as exc:
        return "missing" if isinstance(exc, FileNotFoundError) else f"not reachable: {exc.strerror}"
    if stat.S_ISDIR(info.st_mode):
        return "a directory"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def root_identity(target: dict[str, object]) -> tuple[str, str]:
    """(machine, path) naming where a target's root really is: two targets with equal identities (or one
    inside the other) would drive one install from two sides. The path is normalised; on this machine
    symlinks are resolved too, since the link and its destination are the same install."""
    return transport(str(target["transport"])).root_identity(target)


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _shared_roots(config: LoadedConfig, targets: dict[str, dict[str, object]]) -> list[ConfigError]:
    problems = []
    seen: list[tuple[str, tuple[str, str]]] = []
    for name, target in sorted(targets.items()):
        if not target.get("root") or target["transport"] not in BUILT_TRANSPORTS:
            continue
        machine, path = root_identity(target)
        for other, (other_machine, other_path) in seen:
            if machine != other_machine or not (_contains(other_path, path) or _contains(path, other_path)):
                continue
            how = "the same root" if path == other_path else "a root inside the other's"
            problems.append(ConfigError(config.origin(("targets", name, "root")),
                                        f"a root no other target has (target {other} has {how}: {other_path} on "
                                        f"{other_machine})", target["root"]))
            break
        seen.append((name, (machine, path)))
    return problems


def targets_well_formed(config: LoadedConfig) -> bool:
    """Whether the targets have the shape :func:`target_problems` reads (a config with schema problems
    elsewhere still gets its targets checked by ``config check``)."""
    targets = config.data.get("targets")
    return isinstance(targets, dict) and all(
        isinstance(t, dict) and isinstance(t.get("transport"), str)
        and all(isinstance(t.get(k, ""), str) for k in ("root", "host", *KEY_FILES)) for t in targets.values())


def target_problems(config: LoadedConfig) -> list[ConfigError]:
    """Every problem of the targets, in the order an operator fixes them: each target's own, then clashes."""
    targets = config.data["targets"]
    if not targets:
        return [ConfigError(Origin("command line", "", "targets"),
                            "at least one target: -i inventory.ini with [target:NAME] sections, or --demo",
                            "<none>")]
    problems = [p for name, target in targets.items() for p in _target_problems(config, name, target)]
    return problems + _shared_roots(config, targets)


def _section_origin(config: LoadedConfig, path: tuple[str, ...]) -> Origin:
    """Where a section came from: origins are recorded per key, so name the first key set inside it."""
    for key_path, origin in config.origins.items():
        if key_path[:len(path)] == path and len(key_path) > len(path):
            return origin
    return config.origin(path)


def plugin_section_problems(config: LoadedConfig, registry: Registry) -> list[ConfigError]:
    """Sections (or ``--set plugin.NAME.KEY``) of plugins that are not installed, and bad plugin settings."""
    problems = []
    for name in list(config.data["plugins"]):
        record = registry.records.get(name)
        if record is None:
            known = ", ".join(sorted(registry.records)) or "none installed"
            problems.append(ConfigError(_section_origin(config, ("plugins", name)),
                                        f"a section for an installed plugin ({known})", name))
        elif record.usable:
            try:
                validate_plugin_section(config, name, record.config_schema)
            except ConfigError as exc:
                problems.append(exc)
    return problems


def input_problems(config: LoadedConfig, registry: Registry) -> list[ConfigError]:
    """The problems of targets and plugin sections, all of them (``config check`` lists every one)."""
    return target_problems(config) + plugin_section_problems(config, registry)


def validate_run_inputs(config: LoadedConfig, registry: Registry) -> Plan:
    """Every check that can be made before a run exists; returns the plan."""
    problems = input_problems(config, registry)
    if problems:
        raise problems[0]
    # Before the plan, which holds only isolations this drhost has (the schema already says so); a broken plugin
    # is the plan's refusal first.
    for record in [] if registry.broken() else registry.usable():
        cls = record.plugin_class.value if record.plugin_class is not None else None
        configured = config.data["classes"][cls]["isolation"] if cls is not None else None
        if cls is not None and configured not in BUILT_ISOLATIONS:
            raise ConfigError(config.origin(("classes", cls, "isolation")),
                              f"an isolation this drhost has ({', '.join(BUILT_ISOLATIONS)})", configured)
    plan = build_plan(registry, config.data)
    for plugin in plan.plugins:
        if plugin.isolation not in BUILT_ISOLATIONS:
            raise ConfigError(config.origin(("classes", plugin.plugin_class.value, "isolation")),
                              f"an isolation this drhost has ({', '.join(BUILT_ISOLATIONS)})", plugin.isolation)
    for name in dict.fromkeys(p.isolation for p in plan.plugins):
        for path, expected, found in isolation(name).config_problems(config.data):
            raise ConfigError(config.origin(path), expected, found)
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


def load_package(path_text: str, origin: Origin, config: LoadedConfig | None = None) -> Package:
    """Read and verify the package; with ``config``, also against ``[package]`` (product, size limit).

    Every problem is a PackageRefused (exit 2): the package is bad input, and nothing exists yet."""
    path = Path(path_text)
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ConfigError(origin, "an upgrade package file (drproduct-VERSION.tar.gz)",
                          f"<{'a directory' if path.is_dir() else 'not a regular file'}: {path}>")
    if not path.is_file():
        raise ConfigError(origin, "an upgrade package file (drproduct-VERSION.tar.gz)", f"<no such file: {path}>")
    section = (config.data.get("package") if config is not None else None) or {}
    max_bytes = int(section.get("max_unpacked_mb", DEFAULT_MAX_UNPACKED_BYTES // MIB)) * MIB
    try:
        package = read_package(path, max_bytes)
        if config is not None and section.get("product"):
            check_product(package, str(section["product"]), str(config.origin(("package", "product"))))
    except PackageError as exc:
        raise PackageRefused.worded("{message}", message=message_phrase(exc),
                                    init={"path": str(path), "key": exc.entry}) from None
    problems = verify_payload(path, max_bytes)
    if problems:
        head = f"{path.name}: "
        shown_problems = [p[len(head):] if p.startswith(head) else p for p in problems[:5]]
        raise PackageRefused(head + "package content does not match its manifest: " + "; ".join(shown_problems),
                             str(path), None)
    return package


def package_info(package: Package) -> PackageInfo:
    return package.info()
