"""Hosts behind a bastion, on one machine: network namespaces joined by veth pairs (the demo's ``--bastion``
and the tests' jump-host fleet).

    this machine ── veth ── bastion namespace ── veth ── target namespace (one per target)

This machine reaches the bastion's address only. Each target's address is on a link between the bastion's
namespace and the target's, which this machine has no route to; a namespace does not forward packets; and
each target's firewall (iptables in its namespace) drops whatever does not come from the bastion. A direct
connection to a target is impossible; only a jump through the bastion's sshd works. Addresses are link-local
(169.254.x.y/30), picked where this machine uses none.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .sshd import SshHost, create_keys

__all__ = ["BastionNetwork", "bastion_available", "build_bastion_network", "plan_bastion_network", "remove_recorded"]

#: The port every sshd of the network listens on (not 22: known_hosts names such a host "[addr]:port").
PORT = 2222


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)


def bastion_available() -> tuple[bool, str]:
    """Whether this machine can build the network (root, ``ip netns``, iptables)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if _ip("netns", "list").returncode != 0:
        return False, "ip netns is not available (iproute2)"
    if subprocess.run(["iptables", "--version"], capture_output=True).returncode != 0:
        return False, "iptables is not available"
    return True, ""


def _free_blocks(count: int) -> list[tuple[str, str]]:
    """``count`` unused 169.254.x.y/30 blocks as (first, second) addresses."""
    used = _ip("-4", "-o", "addr").stdout
    for namespace in _ip("netns", "list").stdout.split():
        used += _ip("-n", namespace, "-4", "-o", "addr").stdout
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    found: list[tuple[str, str]] = []
    for _ in range(2000):
        third, block = rng.randrange(1, 255), rng.randrange(0, 64) * 4
        pair = (f"169.254.{third}.{block + 1}", f"169.254.{third}.{block + 2}")
        if f"{pair[0]}/" not in used and f"{pair[1]}/" not in used and pair not in found:
            found.append(pair)
            if len(found) == count:
                return found
    raise RuntimeError("no free 169.254.x.y/30 blocks for the bastion network")


@dataclass
class BastionNetwork:
    """The namespaces, links and servers of one bastion network; :meth:`close` removes all of it."""

    tag: str
    bastion: SshHost
    targets: dict[str, SshHost]
    namespaces: list[str] = field(default_factory=list)
    outer_link: str = ""
    #: Routes of this machine that make each target's link unreachable from here (removed by close).
    unreachable: list[str] = field(default_factory=list)
    #: The /30 blocks: this machine ↔ bastion first, then bastion ↔ each target, as (near, far) addresses.
    blocks: list[tuple[str, str]] = field(default_factory=list)

    def proxy_jump(self) -> str:
        """The ``proxy_jump`` value that reaches the targets."""
        user = self.bastion.login_user or "root"
        return f"{user}@{self.bastion.host}:{self.bastion.port}"

    def isolate(self, namespace: str, on: bool) -> None:
        """Black-hole (``on``) or restore a namespace: every packet in or out dropped, as for a host that
        vanished from the network without closing anything."""
        action = "-I" if on else "-D"
        for chain in ("INPUT", "OUTPUT"):
            subprocess.run(["ip", "netns", "exec", namespace, "iptables", action, chain, "-p", "tcp", "-j", "DROP"],
                           capture_output=True, check=on, timeout=30)

    def build(self) -> None:
        """Create the namespaces and links, and start the bastion's and each target's sshd (keys made here;
        each target's client key may also log in to the bastion, and its known_hosts holds both host keys).
        All or nothing: a failure removes what was made."""
        ok, why = bastion_available()
        if not ok:
            raise RuntimeError(f"cannot build a bastion network: {why}")
        tag, bastion = self.tag, self.bastion
        outer_here, outer_there = self.blocks[0]
        bastion_ns = self.namespaces[0]
        self.write_record()
        try:
            _steps([
                ("netns", "add", bastion_ns),
                ("link", "add", self.outer_link, "type", "veth", "peer", "name", f"drj{tag}b1"),
                ("link", "set", f"drj{tag}b1", "netns", bastion_ns),
                ("addr", "add", f"{outer_here}/30", "dev", self.outer_link),
                ("link", "set", self.outer_link, "up"),
                ("-n", bastion_ns, "addr", "add", f"{outer_there}/30", "dev", f"drj{tag}b1"),
                ("-n", bastion_ns, "link", "set", f"drj{tag}b1", "up"),
                ("-n", bastion_ns, "link", "set", "lo", "up"),
            ])
            for number, (host, (near, far)) in enumerate(zip(self.targets.values(), self.blocks[1:], strict=True)):
                namespace = str(host.netns)
                inside, outside = f"drj{tag}t{number}a", f"drj{tag}t{number}b"
                _steps([
                    ("netns", "add", namespace),
                    ("link", "add", inside, "type", "veth", "peer", "name", outside),
                    ("link", "set", inside, "netns", bastion_ns),
                    ("link", "set", outside, "netns", namespace),
                    ("-n", bastion_ns, "addr", "add", f"{near}/30", "dev", inside),
                    ("-n", bastion_ns, "link", "set", inside, "up"),
                    ("-n", namespace, "addr", "add", f"{far}/30", "dev", outside),
                    ("-n", namespace, "link", "set", outside, "up"),
                    ("-n", namespace, "link", "set", "lo", "up"),
                ])
                # From here the target's link is unreachable (not sent to a default gateway that might answer),
                # and only the bastion may talk to the target, whatever routes anyone adds later.
                _steps([("route", "add", "unreachable", self.unreachable[number])])
                subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-A", "INPUT", "-i", outside, "!",
                                "-s", near, "-j", "DROP"], check=True, capture_output=True, timeout=30)
            create_keys(bastion)
            for host in self.targets.values():
                create_keys(host)
            # The bastion takes every target's client key; every target's known_hosts knows the bastion too.
            (bastion.directory / "authorized_keys").write_text(
                "".join((host.directory / "client_key.pub").read_text() for host in self.targets.values()))
            for host in self.targets.values():
                host.known_hosts.write_text(host.known_hosts_line() + bastion.known_hosts_line())
            bastion.start()
            for host in self.targets.values():
                host.start()
        except BaseException:
            self.close()
            raise

    def write_record(self) -> None:
        """``network.json`` beside the bastion's files: what to remove, for whoever cleans up later (written
        before anything is made, so that a build cut short leaves its record too)."""
        path = self.bastion.directory.parent / "network.json"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps(self.record()) + "\n")

    def close(self) -> None:
        for host in (*self.targets.values(), self.bastion):
            with contextlib.suppress(Exception):
                host.stop()
        remove_recorded(self.record())

    def record(self) -> dict[str, list[str]]:
        """What a later process needs to remove the network (the demo's clean-up after the run)."""
        return {"namespaces": list(self.namespaces), "links": [self.outer_link] if self.outer_link else [],
                "unreachable": list(self.unreachable)}


def remove_recorded(record: dict[str, list[str]]) -> None:
    """Remove a network from its :meth:`BastionNetwork.record` (its servers are stopped by their pid files)."""
    for prefix in record.get("unreachable", []):
        _ip("route", "del", "unreachable", prefix)
    for link in record.get("links", []):
        _ip("link", "del", link)
    for namespace in record.get("namespaces", []):
        _ip("netns", "del", namespace)


def _steps(steps: list[tuple[str, ...]]) -> None:
    for step in steps:
        done = _ip(*step)
        if done.returncode != 0:
            raise RuntimeError(f"cannot build the bastion network (ip {' '.join(step)}): {done.stderr.strip()}")


def plan_bastion_network(base: Path, names: list[str], *, login_user: str | None = None,
                         directories: dict[str, Path] | None = None) -> BastionNetwork:
    """Choose the namespaces, links and addresses (nothing is created yet): the inventory can name them."""
    tag = secrets.token_hex(3)  # interface names: "drj" + 6 + "t12a" stays within 15 characters
    blocks = _free_blocks(len(names) + 1)
    bastion_ns = f"drj{tag}b"
    bastion = SshHost("bastion", base / "bastion", PORT, host=blocks[0][1], login_user=login_user, netns=bastion_ns)
    network = BastionNetwork(tag, bastion, {}, [bastion_ns], f"drj{tag}b0")
    network.blocks = blocks
    for number, (name, (near, far)) in enumerate(zip(names, blocks[1:], strict=True)):
        directory = (directories or {}).get(name) or base / name
        network.targets[name] = SshHost(name, directory, PORT, host=far, login_user=login_user,
                                        netns=f"drj{tag}t{number}")
        network.namespaces.append(f"drj{tag}t{number}")
        prefix, last = near.rsplit(".", 1)
        network.unreachable.append(f"{prefix}.{int(last) - 1}/30")
    return network


def build_bastion_network(base: Path, names: list[str], *, login_user: str | None = None,
                          directories: dict[str, Path] | None = None) -> BastionNetwork:
    """Plan and build a network (see :func:`plan_bastion_network` and :meth:`BastionNetwork.build`)."""
    network = plan_bastion_network(base, names, login_user=login_user, directories=directories)
    network.build()
    return network
