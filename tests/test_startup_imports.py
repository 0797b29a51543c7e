"""Start-up: a command loads what it uses; paramiko and its dependencies load only for an SSH session."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import drhost.transport

HEAVY = ("paramiko", "cryptography", "invoke")


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_the_cli_and_a_local_session_do_not_load_paramiko() -> None:
    """Importing the CLI, building its parser and opening a local session load no SSH library."""
    loaded = _modules_after(
        "from drhost.cli._main import build_parser\n"
        "build_parser().parse_args(['upgrade', '--demo'])\n"
        "from drhost.transport import transport\n"
        "transport('local').connect('t', {'root': '/'}, {'run': {'kill_grace_s': 1}}, run_id='r', run_dir=None,"
        " on_network=None).close()")
    assert not {name.partition(".")[0] for name in loaded} & set(HEAVY)


def test_ssh_names_of_the_transport_package_load_on_first_use() -> None:
    """``drhost.transport.SshSession`` and the SSH errors still come from the package face, loaded when asked."""
    from drhost.transport import AuthError, HostKeyError, SshSession, SshTarget
    from drhost.transport._ssh import SshSession as defined

    assert SshSession is defined
    assert issubclass(HostKeyError, drhost.transport.TransportError)
    assert issubclass(AuthError, drhost.transport.TransportError)
    assert SshTarget(name="t", host="h").host_entry == "h"
    with pytest.raises(AttributeError, match="no attribute 'SshSessions'"):
        _ = drhost.transport.SshSessions  # type: ignore[attr-defined]
