"""Resource sampling (drhost/watchdog/_resources.py): parsing two /proc samples, and sampling real machines."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

from drhost.transport import LocalSession, SshSession, SshTarget, TargetSession
from drhost.transport._base import ProgressCallback
from drhost.watchdog._messages import Environment
from drhost.watchdog._resources import parse_sample, sample_controller, sample_target
from drhost_hookspecs import RunResult
from sshd_hosts import SshHost, sshd_available, start_hosts

ssh_available, ssh_why = sshd_available()

MEMINFO = """\
MemTotal:        1000000 kB
MemFree:          100000 kB
MemAvailable:     250000 kB
Buffers:           10000 kB
Cached:           200000 kB
SwapTotal:             0 kB
"""

# Fields: major minor name, then reads..., io_ticks is the 13th column.
DISKSTATS_1 = """\
   7       0 loop0 10 0 80 5 0 0 0 0 0 0 0 0
   8       0 sda 100 0 800 50 20 0 160 10 0 1000 60
   8       1 sda1 90 0 700 40 10 0 80 5 0 1000 45
 259       0 nvme0n1 5 0 40 2 5 0 40 2 0 100 4
 259       1 nvme0n1p1 5 0 40 2 5 0 40 2 0 100 4
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0
"""
DISKSTATS_2 = """\
   7       0 loop0 10 0 80 5 0 0 0 0 0 500 0
   8       0 sda 100 0 800 50 20 0 160 10 0 1250 60
   8       1 sda1 90 0 700 40 10 0 80 5 0 1490 45
 259       0 nvme0n1 5 0 40 2 5 0 40 2 0 200 4
 259       1 nvme0n1p1 5 0 40 2 5 0 40 2 0 480 4
 253       0 zram0 0 0 0 0 0 0 0 0 0 400 0
"""
# total 1000 (guest fields not counted), idle+iowait 800 → busy 200
STAT_1 = "cpu  100 0 100 700 100 0 0 0 0 0"
# total 1600, idle+iowait 1200 → busy 400; the guest 50 is already inside user
STAT_2 = "cpu  250 0 150 1000 200 0 0 0 50 0"


def sample_text(*, meminfo: str = MEMINFO, stat1: str = STAT_1, stat2: str = STAT_2,
                disk1: str = DISKSTATS_1, disk2: str = DISKSTATS_2) -> str:
    parts = [("meminfo", meminfo), ("stat1", stat1), ("diskstats1", disk1), ("stat2", stat2),
             ("diskstats2", disk2), ("end", "")]
    return "".join(f"==drhost-sample== {name}\n{body.rstrip()}\n" for name, body in parts)


# ---------------------------------------------------------------------------- parse_sample


def test_known_deltas_give_exact_percentages() -> None:
    """CPU is busy/total of the two cpu lines, memory is (total - available)/total, IO the busiest whole disk."""
    env = parse_sample(sample_text(), 0.5)
    assert env == Environment(cpu_percent=33.3, memory_percent=75.0, disk_io_percent=50.0)


def diskstats(io_ticks: Mapping[str, int]) -> str:
    return "".join(f"   8 0 {name} 1 0 8 1 1 0 8 1 0 {ticks} 1\n" for name, ticks in io_ticks.items())


def test_partitions_and_pseudo_devices_are_not_disks() -> None:
    """Partitions (sda1, nvme0n1p2, mmcblk0p1) and loop/ram/zram devices are skipped; md0 is a whole device."""
    skipped = ["sda1", "nvme0n1p2", "mmcblk0p1", "loop0", "ram0", "zram0"]
    before = {"sda": 0, "nvme0n1": 0, "mmcblk0": 0, "md0": 0, **dict.fromkeys(skipped, 0)}
    after = {"sda": 0, "nvme0n1": 0, "mmcblk0": 0, "md0": 50, **dict.fromkeys(skipped, 400)}
    env = parse_sample(sample_text(disk1=diskstats(before), disk2=diskstats(after)), 0.5)
    assert env.disk_io_percent == 10.0  # md0: 50 ms busy of 500


def test_a_numbered_name_without_its_disk_is_a_disk() -> None:
    """A name ending in a digit counts when no name without that number is listed (xvda1 of some clouds)."""
    env = parse_sample(sample_text(disk1=diskstats({"xvda1": 0}), disk2=diskstats({"xvda1": 400})), 0.5)
    assert env.disk_io_percent == 80.0


def test_disk_busy_time_is_clamped_to_100() -> None:
    """A device busy for longer than the interval (the shell slept a little more) reads 100%, not more."""
    busy = DISKSTATS_2.replace("sda 100 0 800 50 20 0 160 10 0 1250 60", "sda 100 0 800 50 20 0 160 10 0 1900 60")
    assert parse_sample(sample_text(disk2=busy), 0.5).disk_io_percent == 100.0


def test_memory_without_memavailable_uses_free_plus_caches() -> None:
    """Kernels without MemAvailable: available is MemFree + Buffers + Cached."""
    old_kernel = "\n".join(line for line in MEMINFO.splitlines() if not line.startswith("MemAvailable"))
    # 1000000 - (100000 + 10000 + 200000) = 690000 → 69 %
    assert parse_sample(sample_text(meminfo=old_kernel), 0.5).memory_percent == 69.0


@pytest.mark.parametrize(("text", "expected"), [
    ("", Environment()),
    ("complete nonsense\n\x00\xff\n", Environment()),
    (sample_text(stat1="cpu  a b c d", disk2=""), Environment(memory_percent=75.0)),
    (sample_text(stat2="cpu  1 1", meminfo="MemTotal: lots\n"), Environment(disk_io_percent=50.0)),
    (sample_text(stat2="cpu  1 0 1 1 1 0 0 0 0 0", meminfo="MemTotal: 0 kB\nMemAvailable: 0 kB"),
     Environment(disk_io_percent=50.0)),  # counters went backwards (reboot), MemTotal 0: not measurable
    (sample_text(disk1="   8 0 sda 1 2 3\n", disk2="   8 0 sda 1 2 3\n"), Environment(cpu_percent=33.3,
                                                                              memory_percent=75.0)),
    (sample_text().replace("==drhost-sample== stat2\n", ""), Environment(memory_percent=75.0,
                                                                       disk_io_percent=50.0)),
])
def test_garbled_or_missing_parts_are_none(text: str, expected: Environment) -> None:
    """A part that is missing, short or not numbers gives None for its figure; the others are still measured."""
    assert parse_sample(text, 0.5) == expected


def test_zero_interval_gives_no_disk_figure() -> None:
    """Busy milliseconds over a zero interval mean nothing: disk IO is None instead of a division error."""
    assert parse_sample(sample_text(), 0.0).disk_io_percent is None


# ---------------------------------------------------------------------------- sampling real machines


def in_range(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 100.0


def assert_plausible(env: Environment) -> None:
    assert in_range(env.cpu_percent), env
    assert in_range(env.memory_percent), env
    # A machine whose diskstats lists no whole disk (some containers) cannot say.
    assert env.disk_io_percent is None or in_range(env.disk_io_percent), env
    for value in env.as_dict().values():
        assert value is None or round(value, 1) == value  # one decimal


@pytest.mark.integration
def test_local_target_sample_is_in_range() -> None:
    """sample_target through a LocalSession measures CPU and memory in 0..100, taking about the interval."""
    started = time.monotonic()
    env = sample_target(LocalSession("local"), interval_s=0.3)
    assert_plausible(env)
    assert 0.3 <= time.monotonic() - started < 15  # about the interval; the bound leaves room for a loaded machine


@pytest.fixture
def cpu_burner() -> Iterator[subprocess.Popen[bytes]]:
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        # Wait until the loop really runs, so the sample covers busy time rather than interpreter start-up.
        process = psutil.Process(burner.pid)
        deadline = time.monotonic() + 10
        while process.cpu_times().user < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield burner
    finally:
        burner.kill()
        burner.wait()


@pytest.mark.integration
def test_busy_loop_raises_measured_cpu(cpu_burner: subprocess.Popen[bytes]) -> None:
    """One busy loop occupies one of this machine's cores: the target's CPU reads at least 30% while it runs."""
    assert cpu_burner.poll() is None
    env = sample_target(LocalSession("local"), interval_s=1.0)
    assert env.cpu_percent is not None
    assert env.cpu_percent >= min(30.0, 100.0 / (psutil.cpu_count() or 1) * 0.6)


@pytest.mark.integration
def test_controller_sample_is_in_range() -> None:
    """sample_controller (psutil) measures this machine's CPU and memory in 0..100 over the interval."""
    started = time.monotonic()
    env = sample_controller(interval_s=0.3)
    assert_plausible(env)
    assert time.monotonic() - started >= 0.3


@pytest.mark.integration
def test_controller_sample_sees_a_busy_loop(cpu_burner: subprocess.Popen[bytes]) -> None:
    """The controller's CPU figure also rises while a busy loop runs."""
    assert cpu_burner.poll() is None
    env = sample_controller(interval_s=1.0)
    assert env.cpu_percent is not None
    assert env.cpu_percent >= min(30.0, 100.0 / (psutil.cpu_count() or 1) * 0.6)


@pytest.fixture
def ssh_session(tmp_path: Path) -> Iterator[SshSession]:
    if not ssh_available:
        pytest.skip(ssh_why)
    (host,) = start_hosts(tmp_path, 1)
    session = ssh_session_for(host, tmp_path)
    try:
        yield session
    finally:
        session.close()
        host.stop()


def ssh_session_for(host: SshHost, tmp_path: Path) -> SshSession:
    target = SshTarget(host.name, host.host, host.port, key_file=str(host.client_key),
                       known_hosts=str(host.known_hosts))
    return SshSession(host.name, target, run_id="run1", work_dir=str(tmp_path / "work"), kill_grace_s=1.0,
                      poll_interval_s=0.05)


@pytest.mark.integration
@pytest.mark.sshd
def test_ssh_target_sample_is_in_range(ssh_session: SshSession) -> None:
    """sample_target through a real OpenSSH server measures the target's CPU and memory in 0..100."""
    assert_plausible(sample_target(ssh_session, interval_s=0.3))


# ---------------------------------------------------------------------------- failures never raise


class BrokenSession(TargetSession):
    """A transport that fails in a given way: the one fake in this file, standing in for a dead target."""

    def __init__(self, *, error: Exception | None = None, returncode: int = 0, stdout: str = "") -> None:
        self.name = "broken"
        self.error = error
        self.returncode = returncode
        self.stdout = stdout

    def run(self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None,
            cwd: str | None = None, input: str | None = None, cancel: threading.Event | None = None) -> RunResult:
        if self.error is not None:
            raise self.error
        return RunResult(argv=tuple(argv), returncode=self.returncode, stdout=self.stdout, stderr="no /proc here",
                         duration_s=0.0)

    def put(self, local_path: str, remote_path: str, progress: ProgressCallback | None = None) -> None:
        raise NotImplementedError

    def get(self, remote_path: str, local_path: str) -> None:
        raise NotImplementedError

    def read_text(self, path: str) -> str:
        raise NotImplementedError

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def remove(self, path: str, recursive: bool = False) -> None:
        raise NotImplementedError


@pytest.mark.parametrize("session", [
    BrokenSession(error=RuntimeError("connection reset by boom")),
    BrokenSession(error=KeyError("boom")),
    BrokenSession(returncode=1, stdout=sample_text()),
], ids=["runtime-error", "unexpected-error", "non-zero-exit"])
def test_failing_session_gives_all_none(session: BrokenSession, caplog: pytest.LogCaptureFixture) -> None:
    """A command that raises or exits non-zero yields an all-None Environment and a debug log line, never an error."""
    with caplog.at_level(logging.DEBUG, logger="drhost.watchdog._resources"):
        assert sample_target(session) == Environment()
    assert any(r.levelno == logging.DEBUG and ("boom" in r.getMessage() or "no /proc here" in r.getMessage())
               for r in caplog.records)


@pytest.mark.integration
def test_sample_past_its_timeout_gives_all_none() -> None:
    """A sample that cannot finish within timeout_s is stopped and gives all None, in about timeout_s."""
    started = time.monotonic()
    assert sample_target(LocalSession("local", kill_grace_s=0.5), interval_s=30, timeout_s=0.5) == Environment()
    assert time.monotonic() - started < 5
