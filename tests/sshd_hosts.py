"""Real sshd test hosts: the same code the SSH demo uses (drhost/demo/sshd.py)."""

from drhost.demo.sshd import SshHost, free_port, make_host, sshd_available, start_hosts

__all__ = ["SshHost", "free_port", "make_host", "sshd_available", "start_hosts"]
