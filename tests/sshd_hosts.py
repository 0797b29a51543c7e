"""Real sshd test hosts: the same code the SSH demo uses (drhost/demo/sshd.py)."""

from dataclasses import dataclass

from drhost.demo.sshd import SshHost, free_port, make_host, sshd_available, start_hosts

__all__ = ["LoginUser", "SshHost", "free_port", "make_host", "sshd_available", "start_hosts"]


@dataclass(frozen=True)
class LoginUser:
    """A throwaway account that logs in with a key and becomes root with sudo (``password``: password sudo);
    the ``login_user`` and ``password_login_user`` fixtures make and remove one."""

    name: str
    password: str | None = None
