"""The embedded demo: local targets (three by default) running drproduct 1.0.0, upgraded to 2.0.0."""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..packaging import build_package
from . import install
from .bastion import BastionNetwork, plan_bastion_network
from .sshd import SUDOERS_DIR, SshHost, create_keys, ensure_login_user, free_port

DEMO_TARGETS = ("dr-demo-1", "dr-demo-2", "dr-demo-3")
FROM_VERSION = "1.0.0"
TO_VERSION = "2.0.0"


def packages_dir(state_root: Path) -> Path:
    path = state_root / "demo" / "packages"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def demo_package(state_root: Path, version: str = TO_VERSION) -> Path:
    """The demo package of ``version``, built on first use (builds are deterministic)."""
    out = packages_dir(state_root)
    existing = out / f"drproduct-{version}.tar.gz"
    return existing if existing.exists() else build_package(version, out)


def demo_inventory(roots: dict[str, Path], package: Path) -> dict[str, Any]:
    """The config a demo run uses, in the same shape as an ops INI file."""
    return {
        "run": {"package": str(package)},
        "targets": {name: {"transport": "local", "root": str(root), "host": "localhost"}
                    for name, root in roots.items()},
    }


#: How many targets ``--demo-targets`` may ask for: each runs a real daemon (and with --ssh an sshd).
MAX_DEMO_TARGETS = 50


def demo_target_names(count: int = len(DEMO_TARGETS)) -> list[str]:
    return [f"dr-demo-{i}" for i in range(1, count + 1)]


def planned_roots(state_root: Path, count: int = len(DEMO_TARGETS)) -> dict[str, Path]:
    """Where a new demo's ``count`` targets would go (nothing is created)."""
    base = state_root / "demo" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    return {name: base / name / "opt" / "drproduct" for name in demo_target_names(count)}


def planned_ssh_hosts(roots: dict[str, Path], login_user: str | None = None) -> dict[str, SshHost]:
    """Loopback sshd hosts for an SSH demo (nothing created yet): one per target, beside its root. With
    ``login_user`` the hosts refuse root login: that user logs in and becomes root with sudo."""
    return {name: SshHost(name, root.parents[1] / "sshd", free_port(), login_user=login_user)
            for name, root in roots.items()}


def ssh_inventory(roots: dict[str, Path], hosts: dict[str, SshHost], package: Path,
                  proxy_jump: str | None = None) -> dict[str, Any]:
    """The demo config when its targets are reached over SSH (through ``proxy_jump`` when behind a bastion)."""
    inventory = demo_inventory(roots, package)
    for name, host in hosts.items():
        inventory["targets"][name] = {
            "transport": "ssh", "root": str(roots[name]), "host": host.host, "port": host.port,
            "user": host.login_user or "root", "key_file": str(host.client_key), "known_hosts": str(host.known_hosts),
            "host_key_policy": "strict",
        }
        if host.login_user is not None:
            inventory["targets"][name].update({"become": "sudo", "become_user": "root"})
        if proxy_jump:
            inventory["targets"][name]["proxy_jump"] = proxy_jump
    return inventory


def planned_bastion(roots: dict[str, Path], login_user: str | None = None) -> BastionNetwork:
    """The SSH demo's targets behind a bastion (nothing created yet): each target's sshd in a network namespace
    of its own that only the bastion reaches; the bastion's sshd is the one this machine can reach."""
    base = next(iter(roots.values())).parents[2]
    return plan_bastion_network(base / "bastion-net", list(roots), login_user=login_user,
                                directories={name: root.parents[1] / "sshd" for name, root in roots.items()})


def _login_users(hosts: Collection[SshHost]) -> list[str]:
    """Create the hosts' login users that do not exist yet; what was created, for the operator."""
    notes = []
    for user in sorted({host.login_user for host in hosts if host.login_user is not None}):
        if ensure_login_user(user):
            notes.append(f"created the login user {user} (key login only, passwordless sudo: "
                         f"{SUDOERS_DIR}/drhost-demo-{user})")
    return notes


def start_bastion(network: BastionNetwork) -> list[str]:
    """Build the bastion network of a demo and start its servers; all or none."""
    notes = _login_users([network.bastion, *network.targets.values()])
    network.build()
    return [*notes, f"targets behind the bastion {network.proxy_jump()}: network namespaces "
                    f"{', '.join(network.namespaces)}"]


def start_ssh_hosts(hosts: dict[str, SshHost]) -> list[str]:
    """Create keys and start one sshd per demo target; all or none. Returns what it did beyond that (a login
    user it had to create), for the operator."""
    notes = _login_users(list(hosts.values()))
    started: list[SshHost] = []
    try:
        for host in hosts.values():
            create_keys(host)
            host.start()
            started.append(host)
    except BaseException:
        for host in started:
            host.stop()
        raise
    return notes


def create_demo(state_root: Path, roots: dict[str, Path], reserved_ports: Collection[int] = (),
                namespaces: dict[str, str] | None = None) -> None:
    """Install and start drproduct 1.0.0 on fresh local targets at ``roots``.

    ``reserved_ports``: ports promised to something not listening yet (the SSH demo's sshd servers, chosen
    earlier): a daemon must not take one of them, or that sshd cannot start. ``namespaces``: the network
    namespace each target's daemon runs in (a target behind a bastion answers on its own loopback only).
    """
    old = demo_package(state_root, FROM_VERSION)
    installed: list[Path] = []
    started: list[Path] = []
    try:
        for root in roots.values():
            root.mkdir(parents=True)
            port = install.free_port()
            while port in reserved_ports:
                port = install.free_port()
            # The first target is installed; the others are copies of it made before it starts (same bytes).
            if installed:
                install.clone_fresh(installed[0], root, port)
            else:
                install.install_fresh(old, root, port)
            installed.append(root)
        for name, root in zip(roots, installed, strict=True):
            install.start(root, netns=(namespaces or {}).get(name))
            started.append(root)
    except BaseException:
        for root in started:
            install.stop(root)
        raise


def stop_demo(roots: list[Path]) -> list[str]:
    """Stop the demo daemons; returns problems (a demo must leave no process behind)."""
    problems = []
    for root in roots:
        try:
            install.stop(root)
        except install.InstallError as exc:
            problems.append(f"{root}: {exc}")
    return problems
