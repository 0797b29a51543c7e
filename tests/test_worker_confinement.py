"""Process workers are confined: not root, no capabilities, a read-only host, own pid/IPC/network namespaces.

Every test runs a real plugin in a real worker made by make_sandbox (cgroups, unshare, the
drhost-worker user) and lets the plugin try what a hostile author would.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import drhost
from drhost.config import load_config
from drhost.errors import RefusedError
from drhost.i18n import translator
from drhost.policy import class_policy
from drhost.supervisor import WorkerRunner, make_sandbox
from drhost.supervisor._confine import DEFAULT_WORKER_USER, ConfinedSandbox, worker_identity
from drhost_hookspecs import PluginClass, Stage
from plugin_factory import make_plugin, simple_plugin
from worker_helpers import make_context

pytestmark = [
    pytest.mark.cgroups,
    pytest.mark.skipif(os.geteuid() != 0, reason="confinement of process workers is built by a root drhost"),
]

try:
    WORKER = pwd.getpwnam(DEFAULT_WORKER_USER)
except KeyError:  # scripts/install-dev creates it; without it every process worker is refused (tested below)
    WORKER = None
needs_worker_user = pytest.mark.skipif(WORKER is None,
                                       reason=f"user {DEFAULT_WORKER_USER} missing: run scripts/install-dev")


def config(**process: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(load_config().data))
    data["process"].update(process)
    return dict(data)


@pytest.fixture
def runner_of() -> Iterator[Any]:
    made: list[WorkerRunner] = []

    def make(entry_point: str, cfg: dict[str, Any] | None = None) -> WorkerRunner:
        sandbox = make_sandbox(class_policy(cfg or config(), PluginClass.BUSINESS),
                               label=f"test/confine/{entry_point}/{os.getpid()}", message_limit=1 << 22,
                               config=cfg or config())
        runner = WorkerRunner(entry_point, sandbox=sandbox, logger=logging.getLogger("test.confine"), grace_s=0.5,
                              message_limit=1 << 22)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def run_step(runner: WorkerRunner, tmp_path: Path) -> Any:
    return runner.call("run_step", make_context(tmp_path / "target"), stage=Stage.UPGRADE, step="work", timeout_s=60)


PROBES = """
import errno, os, socket, signal

def attempt(fn):
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "allowed"

def write(path, text="x"):
    with open(path, "w") as handle:
        handle.write(text)

def own_cgroup(controller):
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if controller in controllers.split(","):
            return path

def probe(ctx):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    memory = own_cgroup("memory")
    ctx.state["uid"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())]
    ctx.state["caps"] = status["CapEff"].strip()
    ctx.state["no_new_privs"] = status["NoNewPrivs"].strip()
    ctx.state["become_root"] = attempt(lambda: os.setuid(0))
    ctx.state["leave_cgroup"] = attempt(lambda: write("/sys/fs/cgroup/memory/cgroup.procs", str(os.getpid())))
    parent = "/sys/fs/cgroup/memory" + memory.rsplit("/", 2)[0]
    ctx.state["join_parent_cgroup"] = attempt(lambda: write(parent + "/cgroup.procs", str(os.getpid())))
    ctx.state["raise_own_limit"] = attempt(
        lambda: write("/sys/fs/cgroup/memory" + memory + "/memory.limit_in_bytes", "-1"))
    ctx.state["host_file"] = attempt(lambda: write(HOST_FILE))
    ctx.state["etc_file"] = attempt(lambda: write("/etc/" + MARKER))
    ctx.state["plugin_dir"] = attempt(lambda: write(os.path.join(os.path.dirname(__file__), "planted.py")))
    ctx.state["scratch"] = attempt(lambda: write("/tmp/" + MARKER))
    ctx.state["visible_pids"] = len([p for p in os.listdir("/proc") if p.isdigit()])
    ctx.state["signal_host_process"] = attempt(lambda: os.kill(VICTIM, signal.SIGKILL))
    ctx.state["connect_host"] = attempt(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
"""


@needs_worker_user
def test_a_hostile_business_plugin_cannot_reach_root_cgroups_host_files_processes_or_network(
        site: Path, tmp_path: Path, runner_of: Any) -> None:
    """The worker is drhost-worker without capabilities; cgroups, host files, processes and network are out of reach."""
    assert WORKER is not None
    marker = f"drhost-confine-{uuid.uuid4().hex}"
    host_file = Path(drhost.__file__).parent / f"{marker}.planted"
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    # The victim runs as the worker's own uid: only the pid namespace keeps the plugin from killing it.
    victim = subprocess.Popen(["sleep", "120"], user=WORKER.pw_uid, group=WORKER.pw_gid)
    make_plugin(site, "zz-hostile", f"HOST_FILE = {str(host_file)!r}\nMARKER = {marker!r}\nVICTIM = {victim.pid}\n"
                                    f"PORT = {listener.getsockname()[1]}\n" + PROBES
                + simple_plugin("zz-hostile", step_body="probe(ctx)"))
    try:
        outcome = run_step(runner_of("zz-hostile"), tmp_path)
        assert outcome.ok, outcome.message
        state = outcome.state
        assert state["uid"] == [WORKER.pw_uid, WORKER.pw_uid, WORKER.pw_gid, WORKER.pw_gid, []]
        assert int(state["caps"], 16) == 0 and state["no_new_privs"] == "1"
        assert state["become_root"] == "EPERM"
        for escape in ("leave_cgroup", "join_parent_cgroup", "raise_own_limit", "etc_file", "plugin_dir"):
            assert state[escape] in ("EROFS", "EACCES"), (escape, state[escape])
        # A checkout under /tmp (a fresh CI clone) is behind the worker's own scratch /tmp: not even visible.
        hidden = host_file.is_relative_to("/tmp")
        assert state["host_file"] in (("ENOENT",) if hidden else ("EROFS", "EACCES")), state["host_file"]
        assert not Path("/etc", marker).exists()
        assert not host_file.exists() and not (site / "planted.py").exists()
        assert state["scratch"] == "allowed" and not Path("/tmp", marker).exists()  # its own /tmp, not the host's
        assert state["visible_pids"] <= 3  # itself (pid 1), the step's thread is not a process
        assert state["signal_host_process"] == "ESRCH" and victim.poll() is None
        assert state["connect_host"] in ("ENETUNREACH", "ECONNREFUSED", "EHOSTUNREACH")
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        victim.kill()
        victim.wait()
        listener.close()
        host_file.unlink(missing_ok=True)
        Path("/etc", marker).unlink(missing_ok=True)


@needs_worker_user
def test_a_daemon_the_plugin_starts_dies_with_the_worker(site: Path, tmp_path: Path, runner_of: Any) -> None:
    """A double-forked, setsid daemon started by a step is gone once the worker is closed (pid namespace)."""
    marker = f"drhost-daemon-{uuid.uuid4().hex}"
    make_plugin(site, "zz-daemon", simple_plugin("zz-daemon", step_body=f"""
        import subprocess, sys, time
        sleeper = "import os, time; os.fork() or time.sleep(300); time.sleep(300)"
        subprocess.Popen([sys.executable, "-c", sleeper, "{marker}"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    """))
    runner = runner_of("zz-daemon")
    outcome = run_step(runner, tmp_path)
    assert outcome.ok, outcome.message

    def daemons() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]

    assert daemons(), "the daemon should run while the worker lives"
    runner.close()
    deadline = time.monotonic() + 10
    while daemons() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemons() == []


@needs_worker_user
def test_the_worker_reports_the_confinement_it_checked(site: Path, tmp_path: Path, runner_of: Any) -> None:
    """The worker's hello carries what it verified itself: user, no capabilities, no_new_privs, hidden /root."""
    make_plugin(site, "zz-plain", simple_plugin("zz-plain"))
    runner = runner_of("zz-plain")
    assert runner.call("describe", None, timeout_s=60).ok
    confined = runner.hello["limits"]["confined"]
    assert confined["user"] == DEFAULT_WORKER_USER and confined["capabilities"] == "none"
    assert confined["no_new_privs"] is True and confined["unreadable"] == []
    assert "/tmp" in confined["scratch"]
    assert isinstance(runner.sandbox, ConfinedSandbox)
    in_force = runner.sandbox.in_force()
    assert in_force["identity"].startswith(f"user {DEFAULT_WORKER_USER} ")
    assert in_force["network"] == "none (own network namespace)"


@needs_worker_user
def test_a_plugin_the_worker_user_cannot_read_is_named_in_the_error(site: Path, tmp_path: Path,
                                                                    runner_of: Any) -> None:
    """A plugin installed where drhost-worker cannot read fails to load with the path and the user named."""
    make_plugin(site, "zz-private", simple_plugin("zz-private"))
    site.chmod(0o700)
    try:
        outcome = runner_of("zz-private").call("describe", None, timeout_s=60)
    finally:
        site.chmod(0o755)
    assert not outcome.ok
    assert str(site) in outcome.message and DEFAULT_WORKER_USER in outcome.message


def test_a_missing_worker_user_is_refused_unless_weaker_isolation_is_allowed() -> None:
    """Without the worker user a root drhost refuses process workers, naming the user and the fix."""
    policy = class_policy(config(), PluginClass.BUSINESS)
    with pytest.raises(RefusedError) as refused:
        make_sandbox(policy, label="test/nouser", message_limit=1 << 20, config=config(user="zz-no-such-user"))
    assert "'zz-no-such-user' does not exist" in str(refused.value) and "useradd" in str(refused.value)
    weaker = config(user="")
    weaker["run"]["allow_weaker_isolation"] = True
    sandbox = make_sandbox(policy, label="test/nouser", message_limit=1 << 20, config=weaker)
    try:
        assert sandbox.in_force()["identity"].startswith("root")
    finally:
        sandbox.close()


def test_a_root_worker_user_is_refused() -> None:
    """[process] user naming a uid-0 account is refused: the worker must not be root under another name."""
    with pytest.raises(RefusedError, match="is root"):
        make_sandbox(class_policy(config(), PluginClass.BUSINESS), label="test/rootuser", message_limit=1 << 20,
                     config=config(user="root"))


def test_worker_user_refusals_are_said_in_the_operators_language() -> None:
    """A root or missing worker user is refused in Chinese with zh_CN, quoting the user as configured; the
    English is unchanged."""
    zh = translator("zh_CN")
    with pytest.raises(RefusedError) as root:
        worker_identity({"process": {"user": "root"}})
    assert str(root.value) == ("[process] user = 'root' is root (uid 0, gid 0); process workers need an "
                               "unprivileged user")
    assert root.value.in_language(zh) == "[process] user = 'root' 是 root (uid 0, gid 0); 工作进程需要非特权用户"
    with pytest.raises(RefusedError) as missing:
        worker_identity({"process": {"user": "zz-no-such-user"}})
    assert str(missing.value).startswith("process workers run as an unprivileged user, and the worker user "
                                         "'zz-no-such-user' does not exist on this machine. Create it with")
    assert missing.value.in_language(zh).startswith("工作进程以非特权用户运行, 但 工作用户 'zz-no-such-user' "
                                                    "在此机器上不存在。请用 scripts/install-dev 创建该用户")
