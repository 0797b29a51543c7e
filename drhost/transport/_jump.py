"""``proxy_jump``: the jump hosts (bastions) between the controller and a target, in OpenSSH's ``-J`` form.

``proxy_jump = ops@bastion1:2222,bastion2`` means: connect to bastion1 (port 2222, user ops), from there to
bastion2 (port 22, the target's user), from there to the target. Each hop is a full SSH connection of its
own (host key checked, authenticated); the next one travels inside a ``direct-tcpip`` channel of the one
before. Parsing is here, without paramiko, so that a bad value is a config error before any run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["JumpHop", "parse_proxy_jump"]

#: At most this many hops: a longer chain is a mistake, not a network.
MAX_HOPS = 8
_HOST = re.compile(r"[A-Za-z0-9_.-]+\Z")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class JumpHop:
    """One jump host; ``user`` None means the target's login user."""

    host: str
    port: int = 22
    user: str | None = None

    def describe(self, default_user: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user or default_user}@{host}:{self.port}"


def _hop(text: str) -> JumpHop:
    user = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not _USER.match(user):
            raise ValueError(f"user {user!r} is not a user name")
    port = 22
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets, as [2001:db8::1]:22")
        port_text = rest[1:] if rest else ""
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise ValueError(f"{host!r} is not an IPv6 address")
    else:
        host, _, port_text = text.partition(":")
        if not _HOST.match(host):
            raise ValueError(f"{host!r} is not a host name or address")
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return JumpHop(host, port, user)


def parse_proxy_jump(value: str) -> tuple[JumpHop, ...]:
    """The hops of a ``proxy_jump`` value, first to last; ``ValueError`` says what is wrong and where."""
    text = value.strip()
    if not text or text.lower() == "none":
        return ()
    hops = []
    for number, part in enumerate(text.split(","), start=1):
        part = part.strip()
        if not part:
            raise ValueError(f"hop {number} is empty (hops are separated by single commas)")
        try:
            hops.append(_hop(part))
        except ValueError as exc:
            raise ValueError(f"hop {number}: {exc}") from None
    if len(hops) > MAX_HOPS:
        raise ValueError(f"{len(hops)} hops; at most {MAX_HOPS}")
    return tuple(hops)
