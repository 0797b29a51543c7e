"""The container sandbox with real podman: a plugin sees only /usr and its bundle, and its limits hold."""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from drhost.errors import RefusedError
from drhost.i18n import translator
from drhost.policy import class_policy
from drhost.supervisor import ISOLATION_KINDS, WorkerRunner, _podman, make_sandbox, remove_left_containers
from drhost.supervisor._bundle import build_bundle
from drhost.supervisor._container import ContainerSandbox
from drhost.supervisor._podman import ContainerUnavailable, container_available, find_podman, podman_setup
from drhost_hookspecs import PluginClass, Stage
from plugin_factory import make_plugin, simple_plugin
from worker_helpers import make_context

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(shutil.which("podman") is None,
    reason="podman is not installed (apt-get install podman runc; .ci/run does)"),
]

MEMORY_MB = 128
PIDS = 32


@pytest.fixture
def site(site: Path, state_dir: Path) -> Path:
    """conftest's plugin site, with the test's own state dir (container bundles are built there)."""
    return site


def container_runner(entry_point: str, *, label: str = "run-test/plugin/t", grace_s: float = 1.0,
                     memory_mb: int = MEMORY_MB) -> WorkerRunner:
    sandbox = ContainerSandbox(memory_mb=memory_mb, cpu_percent=50, nofile=128, pids_limit=PIDS, label=label,
                               message_limit=4 * 1024 * 1024)
    return WorkerRunner(entry_point, sandbox=sandbox, logger=logging.getLogger("test.container"), grace_s=grace_s,
                        message_limit=4 * 1024 * 1024)


@pytest.fixture
def runners() -> Iterator[list[WorkerRunner]]:
    """Runners a test made; closed afterwards, and then podman knows none of their containers."""
    made: list[WorkerRunner] = []
    yield made
    for runner in made:
        runner.close()
        assert isinstance(runner.sandbox, ContainerSandbox)
        assert runner.sandbox.containers() == []


def throwaway(site: Path, runners: list[WorkerRunner], name: str, body: str, **kwargs: object) -> WorkerRunner:
    make_plugin(site, name, simple_plugin(name, "third_party", body))
    importlib.invalidate_caches()
    runner = container_runner(name, **kwargs)  # type: ignore[arg-type]
    runners.append(runner)
    return runner


def run_work(runner: WorkerRunner, tmp_path: Path, *, timeout_s: float = 60, config: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    ctx = make_context(tmp_path, config=config)
    return runner.call("run_step", ctx, stage=Stage.UPGRADE, step="work", timeout_s=timeout_s)


def left_in_podman(runner: WorkerRunner) -> list[str]:
    """Containers of this runner's sandbox that ``podman ps -a`` still lists (running or exited)."""
    assert isinstance(runner.sandbox, ContainerSandbox)
    result = subprocess.run(["podman", "ps", "-a", "--filter", f"label=drhost.sandbox={runner.sandbox.sandbox_id}",
                             "--format", "{{.Names}}"], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_dr_monitoring_step_runs_in_the_container_and_the_host_writes_its_file(
        tmp_path: Path, state_dir: Path, runners: list[WorkerRunner]) -> None:
    """The real third-party plugin runs its step in a container; ctx.write_text is performed by the host."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "drproduct.ini").write_text("[service]\nhost = 127.0.0.1\nport = 8431\n")
    runner = container_runner("dr-monitoring")
    runners.append(runner)
    ctx = make_context(tmp_path)
    outcome = runner.call("run_step", ctx, stage=Stage.UPGRADE, step="update_monitoring_config", timeout_s=60)
    assert outcome.ok, outcome.message
    assert runner.isolation == "container" and runner.hello["pid"] < 100  # its own pid namespace, under an init
    written = json.loads((tmp_path / "etc" / "monitoring" / "drproduct.json").read_text())
    assert written["health_url"] == "http://127.0.0.1:8431/health" and written["version"] == "2.0.0"


def test_worker_sees_no_host_files(tmp_path: Path, site: Path, runners: list[WorkerRunner]) -> None:
    """Inside, only /usr, the bundle and a private /tmp exist: host paths and the host's /etc are absent."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host only")
    body = f"""
import os
seen = {{}}
for path in ({str(secret)!r}, "/root", "/etc/os-release", "/etc/shadow", "/home", {str(site)!r}):
    seen[path] = os.path.exists(path)
ctx.state["seen"] = seen
ctx.state["root"] = sorted(os.listdir("/"))
ctx.state["bundle"] = sorted(os.listdir("/opt/drhost/site"))
"""
    outcome = run_work(throwaway(site, runners, "zz-look", body), tmp_path)
    assert outcome.ok, outcome.message
    assert not any(outcome.state["seen"].values()), outcome.state["seen"]
    assert "root" not in outcome.state["root"] and "home" not in outcome.state["root"]
    assert {"zz_look.py", "drhost_hookspecs", "pluggy"} <= set(outcome.state["bundle"])


def test_worker_cannot_write_outside_tmp(tmp_path: Path, site: Path, runners: list[WorkerRunner]) -> None:
    """/ and /opt/drhost are read-only (EROFS); /tmp is a writable tmpfs."""
    body = """
import errno
errors = {}
for path in ("/opt/drhost/site/evil.py", "/evil", "/usr/evil", "/etc/evil"):
    try:
        with open(path, "a") as handle:
            handle.write("x")
        errors[path] = "written"
    except OSError as exc:
        errors[path] = errno.errorcode.get(exc.errno, str(exc.errno))
with open("/tmp/scratch", "w") as handle:
    handle.write("ok")
ctx.state["errors"] = errors
"""
    outcome = run_work(throwaway(site, runners, "zz-write", body), tmp_path)
    assert outcome.ok, outcome.message
    assert set(outcome.state["errors"].values()) == {"EROFS"}, outcome.state["errors"]


def test_worker_has_no_network(tmp_path: Path, site: Path, runners: list[WorkerRunner]) -> None:
    """Only the loopback interface exists, so the host's services on 127.0.0.1 are unreachable."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    body = f"""
import socket
ctx.state["interfaces"] = [name for _, name in socket.if_nameindex()]
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    ctx.state["connect"] = "connected"
except OSError as exc:
    ctx.state["connect"] = type(exc).__name__
"""
    try:
        outcome = run_work(throwaway(site, runners, "zz-net", body), tmp_path)
    finally:
        server.close()
    assert outcome.ok, outcome.message
    assert outcome.state["interfaces"] == ["lo"]
    assert outcome.state["connect"] == "ConnectionRefusedError"


def test_worker_runs_as_nobody_without_capabilities(tmp_path: Path, site: Path, runners: list[WorkerRunner]) -> None:
    """The worker is uid/gid 65534 with an empty effective capability set and no_new_privs."""
    body = """
import os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
ctx.state.update(uid=os.getuid(), gid=os.getgid(), cap_eff=status["CapEff"].strip(),
                 cap_bnd=status["CapBnd"].strip(), nnp=status["NoNewPrivs"].strip())
"""
    outcome = run_work(throwaway(site, runners, "zz-who", body), tmp_path)
    assert outcome.ok, outcome.message
    assert (outcome.state["uid"], outcome.state["gid"]) == (65534, 65534)
    assert int(outcome.state["cap_eff"], 16) == 0 and int(outcome.state["cap_bnd"], 16) == 0
    assert outcome.state["nnp"] == "1"


def test_allocation_over_the_memory_limit_is_killed_and_named(tmp_path: Path, site: Path,
                                                                runners: list[WorkerRunner]) -> None:
    """300 MB under a 128 MiB container ends the call as crashed; the reason names the memory limit."""
    body = "hoard = b'\\x01' * (300 * 1024 * 1024)\n"
    outcome = run_work(throwaway(site, runners, "zz-hog", body), tmp_path)
    assert outcome.ended == "memory", outcome
    assert f"container memory limit ({MEMORY_MB} MiB)" in outcome.message


def test_fork_bomb_is_stopped_by_the_pids_limit(tmp_path: Path, site: Path, runners: list[WorkerRunner]) -> None:
    """Forking without end hits --pids-limit: the step ends as 'pids', the host still forks, nothing stays behind."""
    body = """
import os, time
from drhost_hookspecs import StepFailed
children = 0
try:
    while True:
        if os.fork() == 0:
            while True:  # every child keeps forking too
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.5)
        children += 1
except OSError as exc:
    raise StepFailed(f"fork refused after {children} children: {exc}")
"""
    runner = throwaway(site, runners, "zz-bomb", body)
    outcome = run_work(runner, tmp_path, timeout_s=60)
    assert outcome.ended == "pids" and outcome.message.startswith(f"pids limit {PIDS} reached"), outcome
    assert "fork refused" in outcome.message
    assert outcome.detail["usage"]["processes"] <= PIDS
    assert subprocess.run(["true"], check=False).returncode == 0
    runner.close()
    assert left_in_podman(runner) == []


def test_hang_ignoring_sigterm_is_killed_at_the_deadline(tmp_path: Path, site: Path,
                                                         runners: list[WorkerRunner]) -> None:
    """A step that ignores cancel and SIGTERM is killed at its deadline, and its container is removed."""
    body = """
import ctypes, signal, time
ctypes.CDLL(None).signal(int(signal.SIGTERM), 1)  # SIG_IGN, process-wide, from a non-main thread
while True:
    time.sleep(0.1)
"""
    runner = throwaway(site, runners, "zz-hang", body, grace_s=0.5)
    started = time.monotonic()
    outcome = run_work(runner, tmp_path, timeout_s=2)
    elapsed = time.monotonic() - started
    assert outcome.ended == "timeout" and outcome.detail.get("killed") is True, outcome
    assert elapsed < 15
    assert left_in_podman(runner) == []


@pytest.mark.parametrize(("kind", "ended", "says"), [
    ("oom", "memory", "container memory limit"),
    ("crash", "crashed", "SIGSEGV"),
    ("fail", "failed", "injected fault"),
])
def test_injected_faults_are_contained(tmp_path: Path, site: Path, runners: list[WorkerRunner], kind: str,
                                       ended: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The oom/crash/fail faults end the call as expected; a crash is not mistaken for the memory limit; nothing
    is left in the operator's working directory (conmon writes an "oom" file into its cwd)."""
    monkeypatch.chdir(tmp_path)
    runner = throwaway(site, runners, f"zz-fault-{kind}", "pass")
    outcome = run_work(runner, tmp_path, config={"fault": f"work:{kind}"})
    assert outcome.ended == ended and says in outcome.message, outcome
    if kind == "crash":
        assert "memory limit" not in outcome.message
    again = run_work(runner, tmp_path)  # a dead worker is started again for the next call
    assert again.ok, again.message
    assert not (tmp_path / "oom").exists()


def test_hang_fault_is_stopped_at_the_deadline(tmp_path: Path, site: Path, runners: list[WorkerRunner]) -> None:
    """The hang fault ends as a timeout; the worker answers the next call."""
    runner = throwaway(site, runners, "zz-fault-hang", "pass", grace_s=0.5)
    outcome = run_work(runner, tmp_path, timeout_s=1.5, config={"fault": "work:hang"})
    assert outcome.ended == "timeout", outcome
    assert run_work(runner, tmp_path).ok


def test_bundle_is_reused_until_the_plugin_changes(tmp_path: Path, site: Path) -> None:
    """The bundle is cached by content; an edited plugin gets a new one, world-readable."""
    make_plugin(site, "zz-cache", simple_plugin("zz-cache", "third_party"))
    importlib.invalidate_caches()
    bundles = tmp_path / "bundles"
    first = build_bundle("zz-cache", bundles)
    assert build_bundle("zz-cache", bundles).path == first.path
    make_plugin(site, "zz-cache", simple_plugin("zz-cache", "third_party", "ctx.log('changed')"))
    second = build_bundle("zz-cache", bundles)
    assert second.path != first.path
    entry_points = next((second.site).glob("*.dist-info")) / "entry_points.txt"
    assert entry_points.read_text() == "[drhost.plugins]\nzz-cache = zz_cache\n"
    assert (second.site / "zz_cache.py").stat().st_mode & 0o777 == 0o644
    assert second.path.stat().st_mode & 0o777 == 0o755


def test_make_sandbox_gives_a_container_and_reports_it(state_dir: Path) -> None:
    """isolation = container gives the container sandbox; container_available says which runtime works."""
    config = _config_with_container()
    ok, why = container_available(config)
    assert ok, why
    sandbox = make_sandbox(class_policy(config, PluginClass.THIRD_PARTY), label="r/p/t", message_limit=1 << 20,
                           config=config)
    try:
        assert sandbox.kind == "container"
        in_force = sandbox.in_force()
        assert in_force["network"] == "none" and in_force["memory_bytes"] == 128 * 1024 * 1024
        assert in_force["runtime"] == podman_setup(config).runtime
    finally:
        sandbox.close()


def test_missing_podman_refuses_unless_weaker_isolation_is_allowed(state_dir: Path) -> None:
    """Without podman a container class is refused, naming the --set that allows the process sandbox."""
    config = _config_with_container(podman="/nonexistent/podman")
    ok, why = container_available(config)
    assert not ok and "podman not found" in why
    policy = class_policy(config, PluginClass.THIRD_PARTY)
    with pytest.raises(RefusedError, match=r"will not run unconfined.*run\.allow_weaker_isolation=true"):
        make_sandbox(policy, label="r/p/t", message_limit=1 << 20, config=config)
    config["run"]["allow_weaker_isolation"] = True
    sandbox = make_sandbox(policy, label="r/p/t", message_limit=1 << 20, config=config)
    try:
        assert sandbox.kind == "process"
        assert sandbox.in_force()["weaker_than_configured"].startswith("container unavailable: podman not found")
    finally:
        sandbox.close()


def test_a_missing_podman_is_said_in_the_operators_language(state_dir: Path) -> None:
    """A podman not on PATH reads in Chinese with zh_CN (the refusal, the podman error it quotes, doctor's line),
    quoting the name as it is; the English is the text it had before it was worded."""
    zh = translator("zh_CN")
    config = _config_with_container(podman="drhost-no-such-podman")
    with pytest.raises(ContainerUnavailable) as missing:
        find_podman(config)
    assert str(missing.value) == ("podman not found ('drhost-no-such-podman' is not on PATH; install podman, e.g. "
                                  "'apt-get install podman runc', or set container.podman)")
    assert missing.value.in_language(zh) == ("未找到 podman ('drhost-no-such-podman' 不在 PATH 中; 请安装 podman, "
                                             "例如 'apt-get install podman runc', 或设置 container.podman)")
    with pytest.raises(RefusedError) as refused:
        make_sandbox(class_policy(config, PluginClass.THIRD_PARTY), label="r/p/t", message_limit=1 << 20,
                     config=config)
    assert str(refused.value).startswith("third_party plugins run in a container, and none can be started here: "
                                         "podman not found ('drhost-no-such-podman' is not on PATH;")
    assert refused.value.in_language(zh).startswith("third_party 插件在容器中运行, 但此处无法启动容器: 未找到 podman "
                                                    "('drhost-no-such-podman' 不在 PATH 中;")
    kind = ISOLATION_KINDS["container"]
    report = kind.doctor(config)
    assert json.loads(json.dumps(report))["container"]["detail"] == str(missing.value)  # the JSON stays English
    assert kind.doctor_lines(report, zh)[1] == "容器沙箱: 不可用: " + missing.value.in_language(zh)


def test_podman_facts_are_asked_once_per_machine(state_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """podman's runtime and cgroup manager come from real probes once, then from podman.json in the cache
    directory: a new controller on another state directory asks podman for neither; ``--version`` is asked
    once per process; a failed ``podman info`` is not remembered."""
    monkeypatch.setenv("DRHOST_CACHE_DIR", str(tmp_path / "cache"))
    config = _config_with_container()
    for memory in ("_cgroup_cache", "_runtime_cache", "_version_cache"):  # as a new controller starts
        monkeypatch.setattr(_podman, memory, {})
    asked = podman_setup(config)
    assert (asked.cgroup_manager, asked.cgroups_version) != ("", "")
    cache = tmp_path / "cache" / "podman.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    stored = json.loads(cache.read_text())
    assert {"manager": asked.cgroup_manager, "version": asked.cgroups_version} in stored.values()
    assert {"runtime": asked.runtime} in [{"runtime": v.get("runtime")} for v in stored.values()]

    calls: list[list[str]] = []
    real_run = _podman.run_podman

    def recording(argv: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return real_run(argv, timeout=timeout)

    monkeypatch.setattr(_podman, "run_podman", recording)
    podman_setup(config)
    assert calls == [], "the same process asks podman nothing twice"
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path / "another-state"))
    monkeypatch.setattr(_podman, "_cgroup_cache", {})  # a second controller, on another state directory
    monkeypatch.setattr(_podman, "_runtime_cache", {})
    monkeypatch.setattr(_podman, "_version_cache", {})
    again = podman_setup(config)
    assert (again.runtime, again.cgroup_manager, again.cgroups_version) == (
        asked.runtime, asked.cgroup_manager, asked.cgroups_version)
    assert [argv[1:] for argv in calls] == [["--version"]], calls

    _podman.forget_runtime()
    assert not cache.exists()
    monkeypatch.setattr(_podman, "run_podman", lambda argv, *, timeout=30.0: subprocess.CompletedProcess(
        list(argv), 125, "", "podman info: broken"))
    assert _podman.cgroup_info("/usr/bin/podman", "0-test") == ("", "")
    assert not cache.exists() or "cgroups /usr/bin/podman 0-test" not in json.loads(cache.read_text())


def test_podman_facts_are_not_kept_in_a_cache_directory_others_can_write(
        state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache directory writable by others is not trusted with podman's runtime: nothing is read or written."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (shared / "podman.json").write_text(json.dumps({"planted": {"runtime": "evil"}}))
    monkeypatch.setenv("DRHOST_CACHE_DIR", str(shared))
    for memory in ("_cgroup_cache", "_runtime_cache", "_version_cache"):
        monkeypatch.setattr(_podman, memory, {})
    assert _podman._read_cache() == {}
    setup = podman_setup(_config_with_container())
    assert setup.runtime in ("crun", "runc")
    assert json.loads((shared / "podman.json").read_text()) == {"planted": {"runtime": "evil"}}


def _config_with_container(**container: object) -> dict[str, object]:
    defaults = json.loads((Path(__file__).parent.parent / "drhost" / "config" / "defaults.json").read_text())
    defaults["classes"]["third_party"]["isolation"] = "container"
    defaults["container"].update(container)
    return defaults  # type: ignore[no-any-return]


def test_launch_and_call_costs(tmp_path: Path, site: Path, runners: list[WorkerRunner],
                               capsys: pytest.CaptureFixture[str]) -> None:
    """A container worker starts (spawn until hello) in seconds, and a warm call costs milliseconds."""
    runner = throwaway(site, runners, "zz-speed", "pass")
    run_work(runner, tmp_path)  # builds the bundle, probes the runtime
    launches, first_calls = [], []
    for _ in range(3):
        runner.close()
        started = time.monotonic()
        runner.start()  # spawn until hello
        launches.append(time.monotonic() - started)
        started = time.monotonic()
        assert runner.call("describe", None, timeout_s=60).ok
        first_calls.append(time.monotonic() - started)
    calls = []
    for _ in range(20):
        started = time.monotonic()
        assert run_work(runner, tmp_path).ok
        calls.append(time.monotonic() - started)
    launch_ms, first_ms = 1000 * min(launches), 1000 * min(first_calls)
    call_ms = 1000 * sorted(calls)[len(calls) // 2]
    with capsys.disabled():
        print(f"\ncontainer worker: launch (spawn until hello) {launch_ms:.0f} ms (best of 3), first describe "
              f"{first_ms:.1f} ms, warm run_step {call_ms:.1f} ms (median of 20)")
    assert launch_ms < 10_000 and call_ms < 1_000


def test_left_containers_of_the_run_and_of_dead_controllers_are_removed_in_one_sweep(state_dir: Path,
                                                                                       tmp_path: Path) -> None:
    """The clean-up removes the containers labelled with the run and those whose controller is gone, and
    leaves a live controller's container of another run alone."""
    config = _config_with_container()
    setup = podman_setup(config)
    gone = subprocess.Popen(["true"])
    gone.wait()
    suffix = tmp_path.name[-12:].replace("_", "-").lower()
    owners = {f"left-dead-{suffix}": (gone.pid, "run-a"), f"left-ours-{suffix}": (os.getpid(), "run-b"),
              f"left-live-{suffix}": (os.getpid(), "run-c")}
    try:
        for name, (owner, run) in owners.items():
            subprocess.run([setup.podman, "create", "--name", name, "--label", "drhost=worker", "--label",
                            f"drhost.sandbox={owner}-x", "--label", f"drhost.run={run}",
                            *setup.root_arguments(), "true"], check=True, capture_output=True, timeout=60)
        removed = remove_left_containers(config, run_id="run-b")
        listed = subprocess.run([setup.podman, "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                                text=True, check=True, timeout=60).stdout.split()
    finally:
        for name in owners:  # one by one: a name another sweep already took must not keep the others
            subprocess.run([setup.podman, "rm", "-f", "-i", name], capture_output=True, timeout=60)
    # A sweep of another test's run may take the dead controller's container first (that is its job too);
    # the run's own container, whose controller is alive, only this call removes.
    assert f"left-ours-{suffix}" in removed
    assert set(removed) <= {f"left-dead-{suffix}", f"left-ours-{suffix}"}
    assert f"left-live-{suffix}" in listed
    assert not {f"left-dead-{suffix}", f"left-ours-{suffix}"} & set(listed)
