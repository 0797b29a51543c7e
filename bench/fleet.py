"""Fleet benchmark: `drhost upgrade` beside `ansible-playbook` and `pyinfra`, same hosts, same work, same forks.

Run on demand:  python bench/fleet.py [--hosts 20 50 100] [--runs 1] [--forks 10 [hosts]] [--size-mib 64]
                [--steps 20] [--tools drhost ansible-playbook pyinfra] [--ansible-venv DIR] [--pyinfra-venv DIR]
                [--ansible-ssh-args ARGS] [--keep] [--write docs/benchmarks.md]

Every host is its own loopback sshd (drhost/demo/sshd.py) with its own host key, checked strictly against a
known_hosts file by both tools. Per host both tools do the same work: upload one random file (the same for
every host) and run ``--steps`` trivial commands (half ``true``, half ``test -d ROOT``).

- drhost: the real CLI (``python -m drhost upgrade -i INVENTORY --package P --set run.forks=N --plain --json``)
  with ``DRHOST_LOAD_PLUGINS=bench-fleet``: only a benchmark plugin made here at run time (class ``core``, a
  thread in drhost, the cheapest isolation), installed with ``pip install --no-deps --target`` and put on
  PYTHONPATH. The package is a real drproduct 2.0.0 package; the plugin does not use it.
- Ansible: ansible-core from the package index in its own venv (``--ansible-venv``, made when missing), a
  playbook of one ``ansible.builtin.copy`` and the same commands as ``ansible.builtin.command`` tasks, in its
  fastest configuration: pipelining, ControlPersist, no compression.
- pyinfra: pyinfra 3.x from the package index in its own venv (``--pyinfra-venv``, made when missing), a deploy
  file of one ``files.put`` and the same commands as ``server.shell`` operations, run with ``--yes`` (no
  change-detection pass) and ``--parallel FORKS``.

Each tool runs under a small meter process (this file with ``--meter``) that is a child subreaper, so the
ControlPersist masters ssh forks into the background stay in the measured tree: their CPU is counted when
the meter stops and reaps them after the tool has exited. The meter reports the tool's wall time, the user +
system CPU of its whole process tree, the largest single process's RSS, the peak PSS of the tree (sampled
every 0.5 s) and the busy CPU time of the whole machine. The targets' share of that comes from the sshd
listeners' own and reaped children's CPU (/proc/PID/stat); what is left is everything else on the machine.
Every sshd and the temp dir are removed at the end, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
import psutil
from _report import machine, publish

from drhost.demo.sshd import SshHost, start_hosts

MiB = 1024 * 1024
METER = "--meter"
PLUGIN_NAME = "bench-fleet"
SECTION = "## Fleet: drhost vs ansible-playbook and pyinfra"
DEFAULT_ANSIBLE_VENV = Path.home() / ".cache" / "drhost-bench" / "ansible-venv"
DEFAULT_PYINFRA_VENV = Path.home() / ".cache" / "drhost-bench" / "pyinfra-venv"
TOOLS = ("drhost", "ansible-playbook", "pyinfra")
#: Ansible's own default is "-C -o ControlMaster=auto -o ControlPersist=60s"; compression only costs CPU on a
#: fast link, so its fastest configuration drops it.
FASTEST_ANSIBLE_SSH_ARGS = "-o ControlMaster=auto -o ControlPersist=60s"
PR_SET_CHILD_SUBREAPER = 36

PLUGIN_SOURCE = '''
"""Benchmark plugin made by bench/fleet.py: one upload and N trivial commands per target, nothing else."""

from drhost_hookspecs import Category, PluginClass, PluginInfo, Stage, Step, hookimpl

PAYLOAD = {payload!r}
TRUE_STEPS = {true_steps}
TEST_STEPS = {test_steps}


@hookimpl
def drhost_plugin_info():
    return PluginInfo(name={name!r}, department="bench", plugin_class=PluginClass.CORE)


def upload(ctx):
    ctx.put(PAYLOAD, ctx.target.install_root + "/payload.bin")


def run_true(ctx):
    ctx.run(["true"])


def test_root(ctx):
    ctx.run(["test", "-d", ctx.target.install_root])


@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.TRANSFER:
        register(Step("upload_payload", upload, retryable=True, timeout_s=900, category=Category.NETWORK, order=1))
        for index in range(TRUE_STEPS):
            register(Step(f"true_{{index + 1:02d}}", run_true, retryable=True, timeout_s=120,
                          category=Category.PLUGIN, order=10 + index))
    elif stage is Stage.UPGRADE:
        for index in range(TEST_STEPS):
            register(Step(f"test_root_{{index + 1:02d}}", test_root, retryable=True, timeout_s=120,
                          category=Category.PLUGIN, order=10 + index))
'''

PYPROJECT = f"""\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "drhost-bench-fleet"
version = "1.0.0"

[project.entry-points."drhost.plugins"]
{PLUGIN_NAME} = "drhost_bench_fleet"

[tool.setuptools]
py-modules = ["drhost_bench_fleet"]
"""


# -- the meter: runs in its own process, around one tool run ---------------------------------------------------


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, idle and iowait left out)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def meter(argv: Sequence[str]) -> int:
    """``--meter RESULT STDOUT STDERR -- CMD...``: run CMD, reap its whole tree, write the figures to RESULT."""
    result, stdout, stderr = argv[0], argv[1], argv[2]
    command = list(argv[4:])
    # Orphans of the tool (ssh's ControlPersist masters) come to us instead of init, so their CPU is counted.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    me = psutil.Process()
    peak_pss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_pss
        while not done.wait(0.5):
            total = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_full_info().pss
            peak_pss = max(peak_pss, total)

    sampler = threading.Thread(target=sample, daemon=True)
    busy_before = machine_busy_s()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        started = time.monotonic()
        sampler.start()
        returncode = subprocess.run(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=False).returncode
        wall = time.monotonic() - started
    done.set()
    sampler.join()
    busy = machine_busy_s() - busy_before
    leftovers = me.children(recursive=True)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(result).write_text(json.dumps({
        "returncode": returncode, "wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
        "max_rss_mib": usage.ru_maxrss / 1024, "peak_pss_mib": peak_pss / MiB, "machine_busy_s": busy,
        "leftovers": len(leftovers),
    }))
    return 0


# -- the benchmark --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    max_rss_mib: float
    peak_pss_mib: float
    machine_busy_s: float
    targets_s: float

    @property
    def other_s(self) -> float:
        """Busy CPU of the machine that neither the tool nor the targets used: other people's processes."""
        return max(0.0, self.machine_busy_s - self.cpu_s - self.targets_s)


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class TargetsCpu:
    """CPU used so far on the targets' side: every process the hosts' sshd listeners ever started.

    Where cgroup v1's cpuacct can be written, the listeners go into a cgroup of their own and every process
    they start stays in it, also one that leaves its parent (drhost's detached jobs and a helper whose session
    ended are reparented to init): its ``cpuacct.usage`` is exact. Elsewhere, the listeners' own and reaped
    children's CPU (/proc/PID/stat), which misses the reparented ones."""

    def __init__(self, hosts: Sequence[SshHost], name: str) -> None:
        self.hosts = list(hosts)
        self.group: Path | None = CPUACCT / name
        try:
            self.group.mkdir()
            for host in self.hosts:
                (self.group / "cgroup.procs").write_text(f"{host.listener_pid()}\n")
        except OSError:
            self.close()
            self.group = None

    @property
    def exact(self) -> bool:
        return self.group is not None

    def __call__(self) -> float:
        if self.group is not None:
            return int((self.group / "cpuacct.usage").read_text()) / 1e9
        total = 0
        for host in self.hosts:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{host.listener_pid()}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(value) for value in fields[11:15])
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """Remove the cgroup once its processes have ended (the hosts are stopped first)."""
        if self.group is None:
            return
        for _ in range(50):
            try:
                self.group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


@dataclass
class Fleet:
    """The hosts of one host count and the two tools' inputs for them."""

    work: Path
    hosts: list[SshHost]
    inventory: Path
    ansible_dir: Path
    pyinfra_dir: Path
    targets_cpu: TargetsCpu


class Bench:
    def __init__(self, base: Path, args: argparse.Namespace) -> None:
        self.base = base
        self.args = args
        self.running: subprocess.Popen[bytes] | None = None
        self.counter = 0
        self.payload = base / "payload.bin"
        self.payload_sha256 = ""
        self.site = base / "site"
        self.package = Path()
        self.ansible_playbook = Path(args.ansible_venv) / "bin" / "ansible-playbook"
        self.pyinfra = Path(args.pyinfra_venv) / "bin" / "pyinfra"
        #: Every sshd started so far, stopped again at the end whatever happens.
        self.hosts: list[SshHost] = []
        self.targets_cpu: list[TargetsCpu] = []

    # -- inputs ---------------------------------------------------------------

    def prepare(self) -> None:
        digest = hashlib.sha256()
        with open(self.payload, "wb") as handle:
            for _ in range(self.args.size_mib):
                chunk = os.urandom(MiB)
                digest.update(chunk)
                handle.write(chunk)
        self.payload_sha256 = digest.hexdigest()
        out = self.base / "package"
        built = subprocess.run([sys.executable, "-m", "drhost", "package", "build", "2.0.0", "--out", str(out)],
                               check=True, capture_output=True, text=True)
        self.package = Path(built.stdout.strip().splitlines()[-1])
        self.install_plugin()
        if "ansible-playbook" in self.args.tools:
            self.ensure_tool(self.ansible_playbook, "ansible-core")
        if "pyinfra" in self.args.tools:
            self.ensure_tool(self.pyinfra, "pyinfra>=3,<4")

    def install_plugin(self) -> None:
        source = self.base / "plugin-src"
        source.mkdir()
        (source / "pyproject.toml").write_text(PYPROJECT)
        (source / "drhost_bench_fleet.py").write_text(PLUGIN_SOURCE.format(
            payload=str(self.payload), true_steps=self.args.steps - self.args.steps // 2,
            test_steps=self.args.steps // 2, name=PLUGIN_NAME))
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-deps", *pip_build_flags(), "--target", str(self.site), str(source)],
                              cwd=self.base, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not install the benchmark plugin:\n{done.stdout}{done.stderr}")

    @staticmethod
    def ensure_tool(program: Path, requirement: str) -> None:
        if program.exists():
            return
        venv = program.parent.parent
        print(f"installing {requirement} into {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        requirement], check=True)

    def peer_versions(self) -> str:
        found = []
        if "ansible-playbook" in self.args.tools:
            out = subprocess.run([str(self.ansible_playbook), "--version"], capture_output=True, text=True,
                                 check=True).stdout
            core = re.search(r"\[core ([^\]]+)\]", out)
            found.append(f"ansible-core {core.group(1) if core else '?'}")
        if "pyinfra" in self.args.tools:
            out = subprocess.run([str(self.pyinfra), "--version"], capture_output=True, text=True, check=True).stdout
            version = re.search(r"(\d+\.\d+\S*)", out)
            found.append(f"pyinfra {version.group(1) if version else '?'}")
        return ", ".join(found)

    def fleet(self, count: int) -> Fleet:
        work = self.base / f"fleet-{count}"
        work.mkdir()
        hosts = start_hosts(work / "hosts", count, prefix="bench")
        self.hosts += hosts
        inventory = work / "inventory.ini"
        inventory.write_text("".join(
            f"[target:{host.name}]\ntransport = ssh\nhost = {host.host}\nport = {host.port}\nuser = root\n"
            f"key_file = {host.client_key}\nknown_hosts = {host.known_hosts}\nhost_key_policy = strict\n"
            f"root = {host.root}\n\n" for host in hosts))
        ansible_dir = work / "ansible"
        ansible_dir.mkdir()
        self.write_ansible(ansible_dir, hosts)
        pyinfra_dir = work / "pyinfra"
        pyinfra_dir.mkdir()
        self.write_pyinfra(pyinfra_dir, hosts)
        targets_cpu = TargetsCpu(hosts, f"drhost-bench-fleet-{os.getpid()}-{count}")
        self.targets_cpu.append(targets_cpu)
        return Fleet(work, hosts, inventory, ansible_dir, pyinfra_dir, targets_cpu)

    def write_ansible(self, directory: Path, hosts: list[SshHost]) -> None:
        lines = ["[fleet]"]
        for host in hosts:
            ssh_args = (f"-o UserKnownHostsFile={host.known_hosts} -o StrictHostKeyChecking=yes "
                        "-o IdentitiesOnly=yes")
            lines.append(f"{host.name} ansible_host={host.host} ansible_port={host.port} ansible_user=root "
                         f"ansible_ssh_private_key_file={host.client_key} "
                         f"ansible_ssh_common_args={shlex.quote(ssh_args)} root={host.root}")
        (directory / "inventory.ini").write_text("\n".join(lines) + "\n")
        tasks = [textwrap.dedent(f"""\
            - name: upload payload
              ansible.builtin.copy:
                src: {self.payload}
                dest: "{{{{ root }}}}/payload.bin"
                mode: "0644"
            """)]
        true_steps = self.args.steps - self.args.steps // 2
        tasks += [f'- name: true {i + 1:02d}\n  ansible.builtin.command: "true"\n' for i in range(true_steps)]
        tasks += [f'- name: test root {i + 1:02d}\n  ansible.builtin.command: test -d {{{{ root }}}}\n'
                  for i in range(self.args.steps // 2)]
        (directory / "playbook.yml").write_text(
            "- name: drhost fleet benchmark\n  hosts: fleet\n  gather_facts: false\n  tasks:\n"
            + textwrap.indent("".join(tasks), "    "))

    def write_pyinfra(self, directory: Path, hosts: list[SshHost]) -> None:
        # Host keys checked strictly against each host's known_hosts, as drhost and Ansible do; no agent, no
        # ~/.ssh keys: only the host's client key.
        inventory = [(host.name, {
            "ssh_hostname": host.host, "ssh_port": host.port, "ssh_user": "root", "ssh_key": str(host.client_key),
            "ssh_known_hosts_file": str(host.known_hosts), "ssh_strict_host_key_checking": "yes",
            "ssh_allow_agent": False, "ssh_look_for_keys": False, "root": str(host.root)}) for host in hosts]
        (directory / "inventory.py").write_text(f"hosts = {inventory!r}\n")
        true_steps = self.args.steps - self.args.steps // 2
        (directory / "deploy.py").write_text(textwrap.dedent(f"""\
            from pyinfra import host
            from pyinfra.operations import files, server

            files.put(name="upload payload", src={str(self.payload)!r}, dest=host.data.root + "/payload.bin",
                      mode="644")
            for index in range({true_steps}):
                server.shell(name=f"true {{index + 1:02d}}", commands=["true"])
            for index in range({self.args.steps // 2}):
                server.shell(name=f"test root {{index + 1:02d}}", commands=["test -d " + host.data.root])
            """))

    def write_ansible_cfg(self, directory: Path, forks: int, scratch: Path) -> Path:
        # control_path_dir is per run: a master left from the previous run would make the next one warm.
        config = directory / "ansible.cfg"
        config.write_text(textwrap.dedent(f"""\
            [defaults]
            inventory = {directory / 'inventory.ini'}
            forks = {forks}
            host_key_checking = True
            gathering = explicit
            interpreter_python = /usr/bin/python3
            retry_files_enabled = False
            local_tmp = {scratch / 'ansible-local'}

            [ssh_connection]
            pipelining = True
            control_path_dir = {scratch / 'cp'}
            """))
        with open(config, "a", encoding="utf-8") as handle:
            handle.write(f"ssh_args = {self.args.ansible_ssh_args}\n")
        return config

    # -- runs -----------------------------------------------------------------

    def metered(self, argv: list[str], env: dict[str, str], cwd: Path, label: str) -> tuple[dict[str, float], Path]:
        self.counter += 1
        logs = self.base / "logs"
        logs.mkdir(exist_ok=True)
        stem = logs / f"{self.counter:03d}-{label}"
        result = stem.with_suffix(".json")
        stdout, stderr = stem.with_suffix(".out"), stem.with_suffix(".err")
        command = [sys.executable, str(Path(__file__).resolve()), METER, str(result), str(stdout), str(stderr), "--",
                   *argv]
        self.running = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)
        try:
            self.running.wait()
        finally:
            self.running = None
        figures: dict[str, float] = json.loads(result.read_text())
        if figures["returncode"] != 0:
            raise RuntimeError(f"{label} exited {figures['returncode']:.0f}; see {stdout} and {stderr}:\n"
                               + stdout.read_text()[-3000:] + stderr.read_text()[-3000:])
        return figures, stdout

    def clean_targets(self, fleet: Fleet) -> None:
        for host in fleet.hosts:
            (host.root / "payload.bin").unlink(missing_ok=True)

    def verify_targets(self, fleet: Fleet, label: str) -> None:
        for host in fleet.hosts:
            path = host.root / "payload.bin"
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(4 * MiB):
                    digest.update(chunk)
            if digest.hexdigest() != self.payload_sha256:
                raise RuntimeError(f"{label}: {path} has sha256 {digest.hexdigest()}, expected {self.payload_sha256}")

    def run_tool(self, tool: str, fleet: Fleet, forks: int) -> Sample:
        before = fleet.targets_cpu()
        run = {"drhost": self.run_drhost, "ansible-playbook": self.run_ansible, "pyinfra": self.run_pyinfra}[tool]
        figures = run(fleet, forks)
        # Sessions end as the tool disconnects; give their listeners a moment to reap them.
        time.sleep(1)
        return Sample(wall_s=figures["wall_s"], cpu_s=figures["user_s"] + figures["sys_s"], user_s=figures["user_s"],
                      sys_s=figures["sys_s"], max_rss_mib=figures["max_rss_mib"],
                      peak_pss_mib=figures["peak_pss_mib"], machine_busy_s=figures["machine_busy_s"],
                      targets_s=fleet.targets_cpu() - before)

    def run_drhost(self, fleet: Fleet, forks: int) -> dict[str, float]:
        scratch = Path(tempfile.mkdtemp(prefix="drhost-run-", dir=fleet.work))
        env = dict(os.environ)
        env["DRHOST_LOAD_PLUGINS"] = PLUGIN_NAME
        env["DRHOST_STATE_DIR"] = str(scratch / "state")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "drhost", "upgrade", "-i", str(fleet.inventory), "--package", str(self.package),
                "--set", f"run.forks={forks}", "--plain", "--json"]
        label = f"drhost-{len(fleet.hosts)}h-{forks}f"
        if self.args.profile:
            # py-spy's own sampling is counted in the meter's figures: a profiled run is for the profile only.
            py_spy = shutil.which("py-spy")
            if py_spy is None:
                raise RuntimeError("--profile needs py-spy on PATH (pip install py-spy)")
            argv = [py_spy, "record", "--subprocesses", "--format", "raw", "--rate", "200",
                    "--output", str(self.args.profile.with_suffix(f".{label}.txt")), "--", *argv]
        figures, stdout = self.metered(argv, env, scratch, label)
        # py-spy says what it does on the same stdout.
        summary = json.loads("".join(line for line in stdout.read_text().splitlines(keepends=True)
                                     if not line.startswith("py-spy> ")))
        statuses = {name: target.get("status") for name, target in summary["targets"].items()}
        if summary["status"] != "succeeded" or set(statuses.values()) != {"succeeded"} or len(statuses) != len(
                fleet.hosts):
            raise RuntimeError(f"{label}: run {summary['status']}: {statuses}")
        self.verify_targets(fleet, label)
        return figures

    def run_ansible(self, fleet: Fleet, forks: int) -> dict[str, float]:
        scratch = Path(tempfile.mkdtemp(prefix="ansible-run-", dir=fleet.work))
        config = self.write_ansible_cfg(fleet.ansible_dir, forks, scratch)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["ANSIBLE_CONFIG"] = str(config)
        argv = [str(self.ansible_playbook), str(fleet.ansible_dir / "playbook.yml")]
        label = f"ansible-{len(fleet.hosts)}h-{forks}f"
        figures, stdout = self.metered(argv, env, fleet.ansible_dir, label)
        recap = dict(re.findall(r"^(\S+)\s+:\s+ok=(\d+)", stdout.read_text(), re.MULTILINE))
        expected = str(self.args.steps + 1)
        wrong = {host.name: recap.get(host.name) for host in fleet.hosts if recap.get(host.name) != expected}
        if wrong:
            raise RuntimeError(f"{label}: hosts without ok={expected} in the recap: {wrong}")
        self.verify_targets(fleet, label)
        return figures

    def run_pyinfra(self, fleet: Fleet, forks: int) -> dict[str, float]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        argv = [str(self.pyinfra), "--yes", "--parallel", str(forks), "inventory.py", "deploy.py"]
        label = f"pyinfra-{len(fleet.hosts)}h-{forks}f"
        figures, stdout = self.metered(argv, env, fleet.pyinfra_dir, label)
        # pyinfra's results table ends with "Grand total  HOSTS×OPS  SUCCESSES  ERRORS  NO-CHANGE".
        text = re.sub(r"\x1b\[[0-9;]*m", "", stdout.read_text() + stdout.with_suffix(".err").read_text())
        total = re.search(r"^\s*Grand total\s+(\d+)\s+(\d+)\s+(\S+)", text, re.MULTILINE)
        expected = str(len(fleet.hosts) * (self.args.steps + 1))
        if total is None or total.group(1) != expected or total.group(2) != expected or total.group(3) != "-":
            raise RuntimeError(f"{label}: not {expected} successful operations and no error in the results:\n"
                               + text[-3000:])
        self.verify_targets(fleet, label)
        return figures

    def stop_running(self) -> None:
        process = self.running
        if process is None:
            return
        with contextlib.suppress(psutil.Error):
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            for member in tree:
                with contextlib.suppress(psutil.Error):
                    member.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def pip_build_flags() -> list[str]:
    """Offline when this environment can build a wheel itself, else let pip fetch a build backend."""
    # setuptools before 70.1 builds wheels only with the separate 'wheel' package; without it
    # --no-build-isolation fails, so pip has to set up an isolated build environment from the index.
    setuptools = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    if setuptools >= (70, 1) or importlib.util.find_spec("wheel") is not None:
        return ["--no-build-isolation", "--no-index"]
    return []


def drhost_revision() -> str:
    """The commit measured, and whether drhost's code differed from it (a shared work tree may be mid-edit)."""
    repo = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(repo)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "--", "drhost", "hookspecs"], capture_output=True,
                             text=True).stdout.strip()
    return f"{commit or '?'}{' + uncommitted changes' if changed else ''}"


def forks_values(text: Sequence[str], hosts: int) -> list[int]:
    values = [hosts if value == "hosts" else int(value) for value in text]
    return sorted(set(values))


def med(samples: list[Sample], field: str) -> float:
    return float(statistics.median(getattr(s, field) for s in samples))


def describe(args: argparse.Namespace, peers: str) -> str:
    """What the section says once, before its first measurement."""
    true_steps, test_steps = args.steps - args.steps // 2, args.steps // 2
    intro = (
        "The same fleet work done by `drhost upgrade`, `ansible-playbook` and `pyinfra`, on the same loopback sshd "
        "hosts (one `sshd` per host, own port, own host key, checked strictly against a known_hosts file by all "
        "three: no auto-accept), with the same forks, in one run (`bench/fleet.py`). Per host: one upload of a "
        "random file (the same file for every host, verified by sha256 on disk afterwards) and "
        f"{args.steps} trivial remote commands ({true_steps} × `true`, {test_steps} × `test -d ROOT`). The tools "
        "take turns at going first from one repetition to the next; each cell is the median of the repetitions.")
    bullets = [
        "drhost: the real CLI, `python -m drhost upgrade -i INVENTORY --package drproduct-2.0.0.tar.gz --set "
        f"run.forks=N --plain --json`, with `DRHOST_LOAD_PLUGINS={PLUGIN_NAME}`: only a benchmark plugin the "
        "script generates and installs with `pip install --no-deps --target` (class `core`: a thread inside "
        "drhost, the cheapest isolation; process and container classes add a worker launch per target, see "
        "[Isolation overhead](#isolation-overhead)). Its transfer stage has one step `ctx.put(FILE, ROOT/…)` and "
        f"{true_steps} steps `ctx.run([\"true\"])`, its upgrade stage {test_steps} steps "
        "`ctx.run([\"test\", \"-d\", ROOT])`, all retryable. drhost's defaults otherwise, which include "
        "`run.max_parallel_uploads = 4`. Per target drhost opens the connections of the design's `[ssh:*]` table "
        "that the run uses, each a paramiko connection with its own heartbeat: `control` (lock, reachability) "
        "and `plugin_exec` (the steps), each with a remote helper (the target's python3, sent over the channel) "
        "that runs each command as a detached job and answers when it ends; an upload opens a `transfer` "
        "connection of its own, sends the file over SFTP (AES-GCM) while the helper hashes it as it arrives, "
        "and compares that hash with the controller's (hashed once for all targets). Around "
        "the steps a run does its own bookkeeping per target: lock, run state (SQLite) and step history on the "
        "controller as each step starts and ends, the target's job directory.",
        "Ansible: `ansible-playbook` in its fastest configuration: `pipelining = True`, `ssh_args = "
        f"{args.ansible_ssh_args}` (a master connection per host kept 60 s after its last use, no compression; a "
        "fresh `control_path_dir` for every run, so no run starts warm), `gather_facts: false`, "
        "`host_key_checking = True` with per host `-o UserKnownHostsFile=HOST/known_hosts -o "
        "StrictHostKeyChecking=yes -o IdentitiesOnly=yes`, `interpreter_python = /usr/bin/python3`, the default "
        "`linear` strategy, forks = N. Tasks: one `ansible.builtin.copy` of the file, then the same commands as "
        "`ansible.builtin.command` tasks. Per task and host Ansible forks a worker, which multiplexes a session over "
        "the host's master and pipes the module into `/usr/bin/python3` on the target.",
        "pyinfra: `pyinfra --yes --parallel N inventory.py deploy.py` (`--yes`: no change-detection pass before "
        "executing), one paramiko connection per host, `ssh_strict_host_key_checking = yes` with the host's "
        "known_hosts file, no agent, no key search. Operations: one `files.put` of the file (pyinfra hashes the "
        "remote file first to decide whether to upload), then the same commands as `server.shell` operations, each "
        "one `sh -c` over a new SSH channel.",
        "Measured per run by a meter process around the tool (a child subreaper, so the ControlPersist masters "
        "ssh forks into the background are reaped and counted): wall time, user + system CPU of the tool's whole "
        "process tree on the controller, the largest single process's RSS and the peak PSS of the tree (sampled "
        "every 0.5 s; PSS so that forked workers' shared pages count once). Targets' CPU: the hosts' sshd "
        "listeners run in a cpuacct cgroup of their own, so everything they start is counted, also what leaves "
        "its session (sshd with its internal SFTP server, shells, drhost's helper and its detached jobs, Ansible's "
        "module interpreters, the commands). Others' CPU: the machine's busy time minus the two, i.e. whatever "
        "else ran on the machine meanwhile (a noise indicator: the controller and the targets share the same "
        "cores here).",
    ]
    width = 110
    return "\n".join([
        SECTION, "", f"Peers: {peers}.", "", textwrap.fill(intro, width), "",
        *(textwrap.fill(b, width, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False)
          for b in bullets),
        "",
    ])


def report(args: argparse.Namespace, results: dict[tuple[int, int, str], list[Sample]], versions: str,
           fresh_section: bool, peers: str, exact_targets: bool) -> str:
    rows = ["| hosts | forks | tool | wall s (runs) | wall s, median | controller CPU s (user + sys) | "
            "peak tree PSS MiB | largest process RSS MiB | targets' CPU s | others' CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for (hosts, forks, tool), samples in sorted(results.items(), key=lambda item: (item[0][0], item[0][1],
                                                                                     TOOLS.index(item[0][2]))):
        runs = ", ".join(f"{s.wall_s:.1f}" for s in samples)
        rows.append(f"| {hosts} | {forks} | {tool} | {runs} | {med(samples, 'wall_s'):.1f} | "
                    f"{med(samples, 'cpu_s'):.1f} ({med(samples, 'user_s'):.1f} + {med(samples, 'sys_s'):.1f}) | "
                    f"{med(samples, 'peak_pss_mib'):.0f} | {med(samples, 'max_rss_mib'):.0f} | "
                    f"{med(samples, 'targets_s'):.1f} | {med(samples, 'other_s'):.1f} |")
        if tool != "drhost" and (hosts, forks, "drhost") in results:
            ours = results[(hosts, forks, "drhost")]
            ratios.append(
                f"- {hosts} hosts, forks {forks}: drhost / {tool} = "
                f"{med(ours, 'wall_s') / med(samples, 'wall_s'):.2f} wall, "
                f"{med(ours, 'cpu_s') / med(samples, 'cpu_s'):.2f} controller CPU, "
                f"{med(ours, 'targets_s') / med(samples, 'targets_s'):.2f} targets' CPU")
    command = (f"python bench/fleet.py --hosts {' '.join(map(str, args.hosts))} --runs {args.runs} "
               f"--forks {' '.join(args.forks)}"
               + (f" --size-mib {args.size_mib}" if args.size_mib != 64 else "")
               + (f" --steps {args.steps}" if args.steps != 20 else "")
               + (f" --tools {' '.join(args.tools)}" if tuple(args.tools) != TOOLS else "")
               + (f" --ansible-ssh-args {shlex.quote(args.ansible_ssh_args)}"
                  if args.ansible_ssh_args != FASTEST_ANSIBLE_SSH_ARGS else ""))
    variant = ("" if args.ansible_ssh_args == FASTEST_ANSIBLE_SSH_ARGS
               else f", Ansible ssh_args `{args.ansible_ssh_args}`")
    lines = [describe(args, peers)] if fresh_section else []
    lines += [
        f"### Fleet: {args.steps} commands + {args.size_mib} MiB upload per host{variant} ({time.strftime('%F')})", "",
        f"Machine: {machine()}, {versions}  ",
        f"Command: `{command}`", "",
        *rows, "",
        ("Targets' CPU from the hosts' cpuacct cgroup (every process they started)." if exact_targets else
         "Targets' CPU from the sshd listeners' reaped children (cpuacct unavailable: detached processes missed)."),
        "",
        *ratios, "",
    ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == METER:
        return meter(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[20, 50, 100], help="host counts, one fleet each")
    parser.add_argument("--runs", type=int, default=1, help="repetitions of each tool per configuration")
    parser.add_argument("--forks", nargs="+", default=["10"], help="forks for both tools; 'hosts' = the host count")
    parser.add_argument("--size-mib", type=int, default=64, help="size of the uploaded file")
    parser.add_argument("--steps", type=int, default=20, help="remote commands per host")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="the tools to run")
    parser.add_argument("--ansible-venv", default=str(DEFAULT_ANSIBLE_VENV), help="made with ansible-core if missing")
    parser.add_argument("--pyinfra-venv", default=str(DEFAULT_PYINFRA_VENV), help="made with pyinfra 3 if missing")
    parser.add_argument("--ansible-ssh-args", default=FASTEST_ANSIBLE_SSH_ARGS,
                        help=f"Ansible's ssh_args (default: its fastest, '{FASTEST_ANSIBLE_SSH_ARGS}')")
    parser.add_argument("--profile", type=Path, help="record drhost's runs with py-spy into PROFILE.LABEL.txt "
                        "(collapsed stacks; the run's figures then include py-spy's own cost)")
    parser.add_argument("--write", type=Path, help="append the results to this markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs of every run) at the end")
    args = parser.parse_args()
    for value in args.forks:
        if value != "hosts" and not value.isdigit():
            parser.error(f"--forks {value}: a number or 'hosts'")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    base = Path(tempfile.mkdtemp(prefix="drhost-bench-fleet-"))
    bench = Bench(base, args)
    results: dict[tuple[int, int, str], list[Sample]] = {}
    # Read before the runs: others may commit to a shared work tree while the benchmark runs.
    revision = drhost_revision()
    peers = ""
    exact_targets = True
    try:
        bench.prepare()
        peers = bench.peer_versions()
        tools = [tool for tool in TOOLS if tool in args.tools]
        for count in args.hosts:
            fleet = bench.fleet(count)
            for forks in forks_values(args.forks, count):
                for repetition in range(args.runs):
                    # Each repetition starts with another tool, so none is always first on a cold fleet.
                    shift = repetition % len(tools)
                    order = tools[shift:] + tools[:shift]
                    for tool in order:
                        bench.clean_targets(fleet)
                        print(f"{count} hosts, forks {forks}, run {repetition + 1}: {tool} ...", file=sys.stderr,
                              flush=True)
                        sample = bench.run_tool(tool, fleet, forks)
                        print(f"    wall {sample.wall_s:.1f} s, controller CPU {sample.cpu_s:.1f} s, targets CPU "
                              f"{sample.targets_s:.1f} s, others' CPU {sample.other_s:.1f} s", file=sys.stderr,
                              flush=True)
                        results.setdefault((count, forks, tool), []).append(sample)
                        bench.clean_targets(fleet)
            for host in fleet.hosts:
                host.stop()
            fleet.targets_cpu.close()
            exact_targets = exact_targets and fleet.targets_cpu.exact
    except KeyboardInterrupt:
        print("interrupted: stopping the tool, the sshd hosts and removing the temp dir", file=sys.stderr)
        return 130
    finally:
        bench.stop_running()
        for host in bench.hosts:
            host.stop()
        for targets_cpu in bench.targets_cpu:
            targets_cpu.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    after = drhost_revision()
    measured = revision if after == revision else f"{revision}, changed to {after} during the run"
    versions = f"drhost {measured}, {peers}, paramiko {paramiko.__version__}, {ssh_version}"
    fresh = args.write is None or not args.write.exists() or SECTION not in args.write.read_text(encoding="utf-8")
    publish(report(args, results, versions, fresh, peers, exact_targets), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
