"""Turn command-line inputs into a validated config, the plugin registry, a plan and the package."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import LoadedConfig, load_config
from ..demo.bastion import BastionNetwork, bastion_available
from ..demo.environment import (
    MAX_DEMO_TARGETS,
    demo_inventory,
    demo_package,
    planned_bastion,
    planned_roots,
    planned_ssh_hosts,
    ssh_inventory,
)
from ..demo.sshd import LOGIN_USER, SshHost
from ..errors import ConfigError, Origin
from ..i18n import N_
from ..packaging import Package
from ..plan import Plan
from ..plugins import Registry, check_registry, discover
from ..preflight import container_check, load_package, package_info, validate_run_inputs
from ..state import state_root

__all__ = ["MAX_FORKS", "Prepared", "blocked_plugins", "package_info", "prepare"]

#: The schema's bound of [run] forks, said with the option's name when --forks is out of it.
MAX_FORKS = 1000


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
    demo_bastion: BastionNetwork | None = None


def blocked_plugins(values: list[str] | None) -> list[str]:
    blocked = []
    for value in values or []:
        if not value.startswith("no:") or len(value) <= 3:
            raise ConfigError(Origin("command line", "", "-p"), N_("no:NAME (block plugin NAME)"), value)
        blocked.append(value[3:])
    return blocked


def prepare(args: argparse.Namespace, *, need_package: bool) -> Prepared:
    """Everything a run needs, validated before anything on a target is touched."""
    blocked = blocked_plugins(args.plugin_options)
    files = [Path(p) for p in ([args.inventory] if args.inventory else []) + list(args.config or [])]
    overrides = list(args.set or [])
    # An option given is an option meant: '--forks 0' or '--package ""' (an unset shell variable) is an
    # error, never the default in disguise.
    if args.package is not None:
        if not args.package.strip():
            raise ConfigError(Origin("command line", "", "--package"), N_("an upgrade package file"), "<empty>")
        overrides.append(f"run.package={args.package}")
    forks = getattr(args, "forks", None)
    if forks is not None:
        if not 1 <= forks <= MAX_FORKS:
            raise ConfigError(Origin("command line", "", "--forks"), f"a number of targets from 1 to {MAX_FORKS}",
                              forks)
        overrides.append(f"run.forks={forks}")
    if getattr(args, "allow_weaker_isolation", False):
        overrides.append("run.allow_weaker_isolation=true")
    if getattr(args, "on_failure", None):
        overrides.append(f"run.on_failure={args.on_failure}")
    demo_roots = None
    demo_ssh_hosts = None
    demo_bastion = None
    base = None
    if args.demo:
        if args.inventory:
            raise ConfigError(Origin("command line", "", "--demo"), N_("either --demo or -i INVENTORY"), "both")
        root = state_root()
        count = getattr(args, "demo_targets", None)
        count = 3 if count is None else count
        if not 1 <= count <= MAX_DEMO_TARGETS:
            raise ConfigError(Origin("command line", "", "--demo-targets"),
                              f"a number of targets from 1 to {MAX_DEMO_TARGETS}", str(count))
        demo_roots = planned_roots(root, count)
        login_user = getattr(args, "login_user", None)
        if login_user is not None and not getattr(args, "ssh", False):
            raise ConfigError(Origin("command line", "", "--login-user"), N_("--login-user together with --ssh"),
                              "--login-user without --ssh")
        if login_user is not None and not LOGIN_USER.fullmatch(login_user):
            raise ConfigError(Origin("command line", "", "--login-user"),
                              N_("a lower-case account name (letters, digits, '_', '-'; up to 31)"), login_user)
        if getattr(args, "bastion", False) and not getattr(args, "ssh", False):
            raise ConfigError(Origin("command line", "", "--bastion"), N_("--bastion together with --ssh"),
                              "--bastion without --ssh")
        if getattr(args, "bastion", False):
            ok, why = bastion_available()
            if not ok:
                raise ConfigError(Origin("command line", "", "--bastion"),
                                  N_("a machine that can build network namespaces"), why)
            demo_bastion = planned_bastion(demo_roots, login_user)
            demo_ssh_hosts = demo_bastion.targets
            base = ssh_inventory(demo_roots, demo_ssh_hosts, demo_package(root), demo_bastion.proxy_jump())
        elif getattr(args, "ssh", False):
            demo_ssh_hosts = planned_ssh_hosts(demo_roots, login_user)
            base = ssh_inventory(demo_roots, demo_ssh_hosts, demo_package(root))
        else:
            base = demo_inventory(demo_roots, demo_package(root))
    elif getattr(args, "ssh", False):
        raise ConfigError(Origin("command line", "", "--ssh"), N_("--ssh together with --demo"), "--ssh alone")
    elif getattr(args, "bastion", False):
        raise ConfigError(Origin("command line", "", "--bastion"), N_("--bastion together with --demo --ssh"),
                          "--bastion alone")
    elif getattr(args, "login_user", None) is not None:
        raise ConfigError(Origin("command line", "", "--login-user"), N_("--login-user together with --demo --ssh"),
                          "--login-user alone")
    elif getattr(args, "demo_targets", None) is not None:
        raise ConfigError(Origin("command line", "", "--demo-targets"), N_("--demo-targets together with --demo"),
                          "--demo-targets alone")
    config = load_config(files, overrides, base=base, limit=getattr(args, "limit", None))
    registry = discover(blocked, config=config.data)
    # A plugin lock in force: exactly the locked plugins, or no run (exit 7), before anything else is checked.
    check_registry(registry, blocked)
    plan = validate_run_inputs(config, registry)
    weaker = container_check(config, plan)
    package = None
    if need_package:
        if not config.data["run"]["package"]:
            raise ConfigError(Origin("command line", "run", "package"),
                              N_("an upgrade package: --package FILE or [run] package = FILE"), "<nothing>")
        package = load_package(config.data["run"]["package"], config.origin(("run", "package")), config)
    return Prepared(config, registry, plan, package, blocked, demo_roots, weaker, demo_ssh_hosts, demo_bastion)
