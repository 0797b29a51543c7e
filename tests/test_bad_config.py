"""Bad configuration (INI, JSON, ``--set``, run options): one line naming the file, the key and the value.

Every case: exit 2, ``drhost: error:`` naming where the value came from (file, ``[section] key``) and the
value itself, escaped when it holds control characters; no traceback; no run directory; the target's files
unchanged. ``config check`` lists every problem at once. Random files and structures fed to the loader only
ever raise :class:`ConfigError` (or :class:`ConfigProblems`, its list form).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import tree_digest
from drhost.cli import main as drhost_main
from drhost.config import ConfigProblems, load_config
from drhost.demo import install
from drhost.errors import ConfigError
from drhost.packaging import build_package
from sshd_hosts import sshd_available, start_hosts
from state_rows import read_state

Drhost = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class World:
    """A real drproduct target, an inventory naming it, and where a bad config file goes."""

    tmp: Path
    state: Path
    root: Path
    inventory: Path
    package: Path

    def fill(self, text: str) -> str:
        return text.replace("{tmp}", str(self.tmp)).replace("{root}", str(self.root))

    def runs(self) -> list[Path]:
        path = self.state / "runs"
        return sorted(path.iterdir()) if path.exists() else []


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One drproduct 1.0.0 install and a 2.0.0 package, shared: no case may change them (each checks)."""
    base = tmp_path_factory.mktemp("installed")
    root = base / "target"
    install.install_fresh(build_package("1.0.0", base), root, install.free_port())
    return root, build_package("2.0.0", base)


@pytest.fixture
def world(tmp_path: Path, state_dir: Path, installed: tuple[Path, Path]) -> World:
    root, package = installed
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:t1]\ntransport = local\nroot = {root}\n")
    return World(tmp_path, state_dir, root, inventory, package)


@dataclass(frozen=True)
class Case:
    """A config file (``name``, ``body``; none: only the inventory) and extra arguments, and what the one
    error line must contain (the file, the key, the value)."""

    name: str | None
    body: str | bytes | None
    args: tuple[str, ...]
    names: tuple[str, ...]


def ini(body: str, *names: str) -> Case:
    return Case("ops.ini", "[target:t1]\ntransport = local\nroot = {root}\n" + body, (), ("{tmp}/ops.ini", *names))


def jsn(body: str | bytes, *names: str) -> Case:
    return Case("ops.json", body, (), ("{tmp}/ops.json", *names))


def cli(*args: str, names: tuple[str, ...]) -> Case:
    return Case(None, None, args, names)


BAD_CONFIG = {
    # Numbers that are not numbers, or absurd ones, through INI.
    "ini-nan": ini("[run]\nkill_grace_s = nan\n", "[run] kill_grace_s", "'nan'", "from 0 to 3600"),
    "ini-infinity": ini("[run]\nunreachable_wait_s = inf\n", "[run] unreachable_wait_s", "'inf'"),
    "ini-overflow-to-infinity": ini("[timeouts]\nupgrade.stop_services = 1e999\n",
                                    "[timeouts] upgrade.stop_services", "'1e999'"),
    "ini-heartbeat-a-million-years": ini("[ssh:control]\nheartbeat_s = 3e13\n", "[ssh:control] heartbeat_s",
                                         "30000000000000.0", "<= 86400"),
    "ini-memory-absurd": ini("[class:core]\nmemory_mb = 99999999999999\n", "[class:core] memory_mb",
                             "99999999999999"),
    "ini-watchdog-NaN": ini("[watchdog]\nprogress_every_s = NaN\n", "[watchdog] progress_every_s", "'NaN'"),
    "ini-integer-with-underscore": ini("[run]\nstage_retries = 1_0\n", "[run] stage_retries", "'1_0'"),
    "ini-integer-in-arabic-digits": ini("[container]\ntmpfs_mb = \u0663\n", "[container] tmpfs_mb", "'\u0663'"),
    "ini-connect-timeout-minus-inf": Case("ops.ini", "[target:s1]\ntransport = ssh\nhost = h\nroot = /opt/p\n"
                                          "connect_timeout_s = -inf\n", (),
                                          ("{tmp}/ops.ini", "[target:s1] connect_timeout_s", "'-inf'")),
    # Names and roots that would write on the operator's terminal.
    "ini-root-with-escape": ini("[target:t2]\ntransport = local\nroot = /opt/p\x1b[2J\n", "[target:t2] root",
                                "\\x1b[2J", "control characters"),
    "ini-root-with-c1-csi": ini("[target:t2]\ntransport = local\nroot = /opt/\x9b31m\n", "[target:t2] root",
                                "\\x9b31m"),
    "ini-target-name-with-del": ini("[target:t\x7f2]\ntransport = local\nroot = /opt/p\n", "[target:t\\x7f2]",
                                    "control characters"),
    "ini-root-with-bidi-override": ini("[target:t2]\ntransport = local\nroot = /opt/\u202ep\n",
                                       "[target:t2] root", "\\u202e"),
    "ini-root-with-newline": ini("[target:t2]\ntransport = local\nroot = /opt/p\n  /etc\n", "[target:t2] root",
                                 "/opt/p\\n/etc"),
    "ini-invalid-utf8": Case("ops.ini", b"[run]\nforks = 2\xff\n", (), ("{tmp}/ops.ini", "byte offset 15",
                                                                         "0xff", "UTF-8")),
    # The same through JSON (whose reader takes NaN and Infinity unless told not to).
    "json-NaN": jsn('{"run": {"retry_wait_scale": NaN}}', "[run] retry_wait_scale", "nan", "finite"),
    "json-Infinity": jsn('{"ssh": {"transfer": {"dead_after_s": Infinity}}}', "[ssh] transfer.dead_after_s",
                         "inf"),
    "json-overflow": jsn('{"run": {"worker_message_limit_bytes": 1e400}}',
                         "[run] worker_message_limit_bytes", "inf"),
    "json-discovery-absurd": jsn('{"discovery": {"timeout_s": 1e300}}', "[discovery] timeout_s", "1e+300",
                                 "<= 3600"),
    "json-root-with-nul": jsn('{"targets": {"t2": {"transport": "local", "root": "/opt/\\u0000p"}}}',
                              "[targets] t2.root", "\\x00"),
    "json-integer-of-5000-digits": jsn('{"run": {"forks": ' + "9" * 5000 + "}}", "thousands of digits"),
    "json-nested-100000-deep": jsn("[" * 100_000, "nesting too deep"),
    "json-not-utf8": jsn('{"run": {"package": "\xe9"}}'.encode("latin-1"), "byte offset 21", "0xe9"),
    # And through --set.
    "set-nan": cli("--set", "run.kill_grace_s=nan", names=("--set: run.kill_grace_s", "'nan'")),
    "set-infinity": cli("--set", "ssh.control.heartbeat_s=Infinity",
                        names=("--set: ssh.control.heartbeat_s", "'Infinity'")),
    "set-overflow": cli("--set", "run.unreachable_wait_s=1e309", names=("--set: run.unreachable_wait_s", "'1e309'")),
    "set-minus-overflow": cli("--set", "rollout.pause_s=-1e400", names=("--set: rollout.pause_s", "'-1e400'")),
    "set-root-with-cr": cli("--set", "target.t1.root=/opt/\rp", names=("--set: target.t1.root", "/opt/\\rp")),
    "set-unknown-plugin": cli("--set", "plugin.dr-nope.x=1", names=("--set: plugin.dr-nope.x", "'dr-nope'",
                                                                    "installed plugin")),
    # Run options: given is meant.
    "forks-zero": cli("--forks", "0", names=("--forks", "from 1 to 1000", "found 0")),
    "forks-negative": cli("--forks", "-4", names=("--forks", "found -4")),
    "package-empty": cli("--package", "", names=("--package", "<empty>")),
    # Two targets on one install.
    "same-root-twice": ini("[target:t2]\ntransport = local\nroot = {root}/\n", "[target:t2] root",
                           "target t1 has the same root"),
    "same-root-through-a-symlink": ini("[target:t2]\ntransport = local\nroot = {tmp}/link\n", "[target:t2] root",
                                       "{tmp}/link", "same root: {root}"),
    "root-inside-another": ini("[target:t2]\ntransport = local\nroot = {root}/releases\n", "[target:t2] root",
                               "inside the other's"),
    "ssh-same-root-normalised": ini("[target:s1]\ntransport = ssh\nhost = DB1\nroot = /opt/p\n"
                                    "[target:s2]\ntransport = ssh\nhost = db1\nuser = other\nroot = //opt/./p/\n",
                                    "[target:s2] root", "'//opt/./p/'", "target s1"),
    # Credentials a run could not read.
    "key-file-missing": ini("[target:s1]\ntransport = ssh\nhost = h\nroot = /opt/p\nkey_file = {tmp}/nokey\n",
                            "[target:s1] key_file", "missing: {tmp}/nokey"),
    "password-file-is-a-directory": ini("[target:s1]\ntransport = ssh\nhost = h\nroot = /opt/p\n"
                                        "password_file = {tmp}\n", "[target:s1] password_file",
                                        "a directory: {tmp}"),
    "become-password-file-missing": ini("[target:s1]\ntransport = ssh\nhost = h\nroot = /opt/p\nbecome = sudo\n"
                                        "become_password_file = {tmp}/nopw\n", "[target:s1] become_password_file",
                                        "missing: {tmp}/nopw"),
    # Privilege escalation: only what drhost can do, for a user name sudo could take.
    "become-su": ini("[target:s1]\ntransport = ssh\nhost = h\nroot = /opt/p\nbecome = su\n", "[target:s1] become",
                     "'su'", "sudo"),
    "become-user-with-a-space": ini("[target:s1]\ntransport = ssh\nhost = h\nroot = /opt/p\nbecome = sudo\n"
                                    "become_user = root -h\n", "[target:s1] become_user", "'root -h'"),
}


def run_case(world: World, case: Case, command: str = "upgrade") -> list[str]:
    args = [command, "-i", str(world.inventory)]
    if case.name is not None:
        path = world.tmp / case.name
        assert case.body is not None
        path.write_bytes(world.fill(case.body).encode() if isinstance(case.body, str) else case.body)
        args += ["-c", str(path)]
    args += [world.fill(a) for a in case.args]
    if command == "upgrade" and "--package" not in case.args:
        args += ["--package", str(world.package)]
    return args


@pytest.mark.parametrize("case", BAD_CONFIG.values(), ids=BAD_CONFIG.keys())
def test_a_bad_setting_is_one_line_naming_file_key_and_value(world: World, case: Case,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A bad setting: exit 2, one line naming file, key and value (escaped), no run, target unchanged."""
    (world.tmp / "link").symlink_to(world.root)
    target_before = tree_digest(world.root)
    code = drhost_main(run_case(world, case))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in out + err and out == ""
    lines = [x for x in err.splitlines() if x.startswith("drhost: ")]
    assert len(lines) == 1 and lines[0].startswith("drhost: error: ") and len(lines[0]) < 1500, err
    assert not any(c in lines[0] for c in "\x1b\x7f\x9b\x00\r\u202e")
    for name in case.names:
        assert world.fill(name) in lines[0], (name, lines[0])
    assert world.runs() == []
    assert tree_digest(world.root) == target_before


def test_config_check_lists_every_problem(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """config check names every problem a run would find (numbers, names, roots, key files, plugins), exit 2."""
    bad = world.tmp / "ops.ini"
    bad.write_text(f"[target:t1]\ntransport = local\nroot = {world.root}\n"
                   f"[target:t2]\ntransport = local\nroot = {world.root}/\n"
                   f"[target:s1]\ntransport = ssh\nhost = h\nroot = /opt/p\nkey_file = {world.tmp}\n"
                   "[target:t\x1b3]\ntransport = local\nroot = /opt/q\n"
                   "[run]\nkill_grace_s = nan\n[ssh:control]\nheartbeat_s = 1e99\n")
    before = tree_digest(world.root)
    code = drhost_main(["config", "check", str(bad), "--set", "run.forks=0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err and "\x1b" not in err
    for expected in (f"{bad}: [run] kill_grace_s", f"{bad}: [ssh:control] heartbeat_s", "--set: run.forks",
                     f"{bad}: [target:t\\x1b3]", f"{bad}: [target:s1] key_file", f"{bad}: [target:t2] root"):
        assert sum(expected in line for line in err.splitlines()) == 1, (expected, err)
    assert "drhost: 6 problem(s)" in err
    assert tree_digest(world.root) == before and world.runs() == []


def test_config_check_names_an_unknown_plugin_of_set(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """config check refuses --set plugin.X.KEY for a plugin that is not installed, as a run would."""
    assert drhost_main(["config", "check", str(world.inventory), "--set", "plugin.dr-nope.level=3"]) == 2
    err = capsys.readouterr().err
    assert "--set: plugin.dr-nope.level" in err and "'dr-nope'" in err and "dr-core" in err


def test_config_check_passes_a_good_inventory(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """A good inventory still passes config check with its summary (the checks are not over-eager)."""
    assert drhost_main(["config", "check", str(world.inventory), "--set", "run.kill_grace_s=2.5",
                        "--set", "ssh.control.heartbeat_s=86400"]) == 0
    assert "1 target(s): t1" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing"])
def test_a_config_path_that_is_not_a_file_is_named(world: World, kind: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A config path that is a FIFO (never opened: it would hang), a directory or nothing is named, exit 2."""
    path = world.tmp / "ops.ini"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    found = {"fifo": "<a FIFO>", "directory": "<a directory>", "missing": "<no such file>"}[kind]
    assert drhost_main(["plan", "-i", str(world.inventory), "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"drhost: error: {path}: expected a readable config file, found {found}" in err


def test_a_missing_root_is_reported_and_not_created(world: World, drhost: Drhost) -> None:
    """A target root that does not exist is reported by name and not created (no lock dir, nothing)."""
    missing = world.tmp / "not-mounted" / "drproduct"
    world.inventory.write_text(f"[target:t1]\ntransport = local\nroot = {missing}\n")
    proc = drhost("upgrade", "-i", str(world.inventory), "--package", str(world.package), "--plain",
                  "--allow-weaker-isolation", "--on-failure", "abort")
    assert "Traceback" not in proc.stderr
    assert f"install root {missing} does not exist on t1" in proc.stdout + proc.stderr
    assert not (world.tmp / "not-mounted").exists()
    assert read_state(world.runs()[0])["targets"]["t1"]["status"] == "aborted"


@pytest.mark.sshd
def test_a_missing_root_over_ssh_is_reported_and_not_created(world: World, drhost: Drhost) -> None:
    """Over real sshd too: the missing root is named and nothing is created on the target."""
    if not sshd_available()[0]:
        pytest.skip(sshd_available()[1])
    (host,) = start_hosts(world.tmp / "sshd", 1)
    try:
        missing = world.tmp / "not-mounted" / "drproduct"
        world.inventory.write_text(
            f"[target:s1]\ntransport = ssh\nhost = {host.host}\nport = {host.port}\nuser = root\n"
            f"key_file = {host.client_key}\nknown_hosts = {host.known_hosts}\nroot = {missing}\n")
        proc = drhost("upgrade", "-i", str(world.inventory), "--package", str(world.package), "--plain",
                      "--allow-weaker-isolation", "--on-failure", "abort")
    finally:
        host.stop()
    assert "Traceback" not in proc.stderr
    assert f"install root {missing} does not exist on s1" in proc.stdout + proc.stderr
    assert not (world.tmp / "not-mounted").exists()


@pytest.mark.parametrize("body", ["[run]\nkill_grace_s = nan\n", "[run]\nforks = 2\xff\n"])
def test_no_traceback_reaches_the_terminal(world: World, drhost: Drhost, body: str) -> None:
    """Through the real program too: one error line, exit 2, nothing on stdout, no run dir."""
    path = world.tmp / "ops.ini"
    path.write_bytes(body.encode("latin-1"))
    proc = drhost("upgrade", "-i", str(world.inventory), "-c", str(path), "--package", str(world.package))
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"drhost: error: {path}: ") and proc.stderr.count("\n") == 1
    assert world.runs() == []


# -- property: random files and structures ----------------------------------------------------------------------

_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_keys = st.sampled_from(["run", "targets", "ssh", "timeouts", "plugins", "forks", "root", "transport", "local",
                         "control", "heartbeat_s", "t1", "upgrade.x", "classes", "core", "memory_mb"]) | st.text(
    max_size=8)
_structures = st.recursive(_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner,
                                                                                                max_size=4),
                           max_leaves=30)


def _load_only_config_errors(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        for collect in (False, True):
            try:
                load_config([path], all_problems=collect)
            except (ConfigError, ConfigProblems) as exc:
                assert str(exc) and "\x1b" not in str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from(["ops.ini", "ops.json"]))
def test_random_bytes_only_raise_config_errors(data: bytes, name: str) -> None:
    """Any bytes as an INI or JSON config file: the loader raises ConfigError or nothing."""
    _load_only_config_errors(name, data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _structures, max_size=5))
def test_random_structures_only_raise_config_errors(data: dict[str, Any]) -> None:
    """Any JSON structure, as a file (NaN and Infinity included) or as a base: only ConfigError escapes."""
    _load_only_config_errors("ops.json", json.dumps(data).encode())
    for collect in (False, True):
        try:
            config = load_config(base=data, all_problems=collect)
        except (ConfigError, ConfigProblems):
            continue
        if not config.problems.found:  # accepted: then every number in it is a real one
            assert all(math.isfinite(v) for v in _floats(config.data) if isinstance(v, float))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_random_set_values_only_raise_config_errors(text: str) -> None:
    """Any --set text: only ConfigError escapes."""
    for collect in (False, True):
        with contextlib.suppress(ConfigError, ConfigProblems):
            load_config(overrides=[text], all_problems=collect)


def _floats(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [f for v in node.values() for f in _floats(v)]
    if isinstance(node, list):
        return [f for v in node for f in _floats(v)]
    return [node]


@pytest.mark.parametrize("rollout", [True, 3, "x", [1]])
def test_a_rollout_that_is_not_a_table_is_a_config_error(tmp_path: Path, rollout: object) -> None:
    """``"rollout": true`` (found by the structure property above) is a ConfigError naming rollout, not a crash."""
    path = tmp_path / "ops.json"
    path.write_text(json.dumps({"rollout": rollout}))
    with pytest.raises((ConfigError, ConfigProblems), match="rollout"):
        load_config([path])
