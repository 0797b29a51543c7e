"""``drhost doctor --target NAME`` against real sshd hosts that refuse root login: it proves login, become,
the tools, the root and the disk space before a run, says what fails, and changes nothing on the target."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drhost.cli import main as drhost_main
from sshd_hosts import SshHost, sshd_available

available, why = sshd_available()
pytestmark = [pytest.mark.sshd, pytest.mark.integration, pytest.mark.skipif(not available, reason=why)]


@pytest.fixture
def host(login_host: SshHost) -> SshHost:
    return login_host


def inventory(tmp_path: Path, host: SshHost, root: Path, **extra: str) -> Path:
    keys = {"transport": "ssh", "host": host.host, "port": str(host.port), "user": str(host.login_user),
            "key_file": str(host.client_key), "known_hosts": str(host.known_hosts), "root": str(root),
            "become": "sudo", **extra}
    path = tmp_path / "hosts.ini"
    path.write_text("[target:db1]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()))
    return path


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, list[dict[str, object]]]]:
    code = drhost_main(["doctor", "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)["targets"]


def scratch_dirs() -> set[str]:
    return {path.name for path in Path("/tmp").glob(".doctor-*")}


def no_new_scratch(before: set[str], within_s: float = 30.0) -> set[str]:
    """Scratch directories made since ``before`` that are still there after ``within_s``: another test's doctor
    may be working in /tmp right now, and removes its own when it ends; ours must already be gone."""
    deadline = time.monotonic() + within_s
    while (left := scratch_dirs() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_a_ready_target_passes_every_check_and_nothing_is_left(host: SshHost, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Login as a user, sudo to root, the tools, a writable root and its free space: all proven, exit 0,
    and the doctor's scratch directory is gone afterwards."""
    before = scratch_dirs()
    code, found = doctor(capsys, "-i", str(inventory(tmp_path, host, host.root)), "--target", "db1")
    checks = {check["name"]: check for check in found["db1"]}
    assert code == 0, found
    assert list(checks) == ["login", "helper", "become", "tools", "root", "disk"]
    assert str(checks["helper"]["detail"]).startswith("remote helper running (python 3.")
    assert all(check["ok"] for check in checks.values())
    assert f"ssh {host.login_user}@{host.host}:{host.port}, sudo to root" in str(checks["login"]["detail"])
    assert "commands run as root (uid 0)" in str(checks["login"]["detail"])
    assert "MiB free on" in str(checks["disk"]["detail"])
    assert no_new_scratch(before) == set()


def test_a_missing_root_fails_and_is_not_created(host: SshHost, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A root that does not exist is reported as missing (exit 1), and the doctor does not create it."""
    missing = tmp_path / "not-mounted" / "drproduct"
    code, found = doctor(capsys, "-i", str(inventory(tmp_path, host, missing)), "--target", "db1")
    checks = {check["name"]: check for check in found["db1"]}
    assert code == 1
    assert checks["root"] == {"name": "root", "ok": False, "detail": f"{missing} is missing"}
    assert checks["disk"]["ok"] is True  # the free space of the deepest existing parent
    assert not (tmp_path / "not-mounted").exists()


def test_a_become_that_cannot_work_is_named(host: SshHost, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A become_user sudo refuses is the one failing check, with sudo's reason; exit 1."""
    code, found = doctor(capsys, "-i", str(inventory(tmp_path, host, host.root, become_user="nobody-here")),
                         "--target", "db1")
    assert code == 1
    (check,) = found["db1"]
    assert check["name"] == "become" and check["ok"] is False
    assert "nobody-here" in str(check["detail"])


def test_an_unknown_target_is_a_usage_error_naming_the_known_ones(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--target with a name the inventory does not have: exit 2, the known names listed."""
    path = tmp_path / "hosts.ini"
    path.write_text(f"[target:local1]\ntransport = local\nroot = {tmp_path}\n")
    code = drhost_main(["doctor", "-i", str(path), "--target", "db9"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--target" in err and "local1" in err and "'db9'" in err
