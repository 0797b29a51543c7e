"""Discovery runs no plugin code outside a sandbox: hostile imports end broken, with the reason, leaving nothing.

Every test drives the real ``drhost plugins list`` (a subprocess) with throwaway plugin distributions, so the
describe happens exactly as for an operator: in a podman container (a plugin no lock vouches for) or, where no
container can be started, in the business class's process sandbox (cgroups, own namespaces).
"""

from __future__ import annotations

import json
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from plugin_factory import make_plugin, simple_plugin

DrhostCLI = Callable[..., subprocess.CompletedProcess[str]]

needs_podman = pytest.mark.skipif(shutil.which("podman") is None,
                                  reason="podman is not installed (apt-get install podman runc; .ci/run does)")
#: (where the describe should run, the settings that make it run there)
SANDBOXES = [
    pytest.param("container", (), marks=needs_podman, id="container"),
    pytest.param("process", ("--set", "container.podman=/nonexistent/podman"), id="process"),
]
DEPARTMENT = {"dr-core", "dr-database", "dr-catalog", "dr-monitoring"}


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private description cache for the test (the drhost fixture passes the environment on)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DRHOST_CACHE_DIR", str(path))
    return path


def listing(drhost: DrhostCLI, *args: str) -> dict[str, dict[str, Any]]:
    proc = drhost("plugins", "list", "--json", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return {row["name"]: row for row in json.loads(proc.stdout)}


def processes_with(marker: str) -> list[str]:
    """Every live process whose command line contains ``marker`` (the test process itself never does)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if marker in cmdline and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


def assert_nothing_left(marker: str) -> None:
    # The describe's sandbox is gone when `plugins list` returns; allow the kernel a moment to reap.
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []


@pytest.mark.integration
@pytest.mark.parametrize(("where", "settings"), SANDBOXES)
def test_a_plugin_that_hangs_at_import_is_broken_at_the_deadline_and_killed(
        drhost: DrhostCLI, site: Path, cache_dir: Path, where: str, settings: tuple[str, ...]) -> None:
    """A plugin whose import never returns is broken with the [discovery] deadline as reason; nothing of it is left."""
    marker = secrets.token_hex(6)
    name = f"zz-hang-{marker}"
    make_plugin(site, name, "import time\ntime.sleep(1000)\n")
    started = time.monotonic()
    rows = listing(drhost, "--set", "discovery.timeout_s=5", *settings)
    assert time.monotonic() - started < 60
    row = rows[name]
    assert row["status"] == "broken"
    assert row["error"] == "describe did not finish within 5 s (killed)"
    assert row["described_in"] == where
    assert {n for n, r in rows.items() if r["status"] == "ok"} == DEPARTMENT
    assert_nothing_left(marker)


@pytest.mark.integration
@pytest.mark.parametrize(("where", "settings"), SANDBOXES)
def test_a_plugin_that_eats_memory_at_import_is_broken_naming_the_limit(
        drhost: DrhostCLI, site: Path, cache_dir: Path, where: str, settings: tuple[str, ...]) -> None:
    """A plugin that allocates past its describe sandbox's memory limit at import is broken: 'memory limit N MiB'."""
    marker = secrets.token_hex(6)
    name = f"zz-hog-{marker}"
    make_plugin(site, name, "hog = b'x' * (700 * 1024 * 1024)\n" + simple_plugin(name))
    row = listing(drhost, *settings)[name]
    assert row["status"] == "broken"
    limit = 128 if where == "container" else 256  # third_party's limit, or the business stand-in's
    assert f"memory limit {limit} MiB reached while importing" in row["error"]
    assert row["described_in"] == where
    assert_nothing_left(marker)


DAEMON = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.execv("/bin/sleep", ["sleep-{marker}", "1000"])
    os._exit(0)
time.sleep(2)  # the daemon is up for a while before the describe ends: the test sees that it ran
"""


@pytest.mark.integration
@pytest.mark.parametrize(("where", "settings"), SANDBOXES)
def test_a_daemon_started_at_import_does_not_outlive_the_describe(
        drhost: DrhostCLI, site: Path, cache_dir: Path, where: str, settings: tuple[str, ...]) -> None:
    """A plugin that double-forks a setsid 'sleep 1000' at import is described, and the daemon is gone after."""
    marker = secrets.token_hex(6)
    name = f"zz-daemon-{marker}"
    make_plugin(site, name, DAEMON.format(marker=marker) + simple_plugin(name))
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.extend(p for p in processes_with(f"sleep-{marker}") if p not in seen)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        row = listing(drhost, *settings)[name]
    finally:
        stop.set()
        watcher.join()
    assert seen, "the plugin's daemon never ran"
    assert row["status"] == "ok" and row["described_in"] == where and row["cached"] is False
    assert_nothing_left(marker)


@pytest.mark.integration
@pytest.mark.podman
def test_a_second_distribution_claiming_a_name_breaks_both_and_a_run_refuses(
        drhost: DrhostCLI, site: Path, cache_dir: Path) -> None:
    """Two distributions offering 'dr-core': both broken naming both, neither described; upgrade exits 7."""
    marker = secrets.token_hex(6)
    make_plugin(site, "dr-core", f"raise SystemExit('{marker}: impostor code ran')\n", module="evil_core",
                version="6.6.6")
    proc = drhost("plugins", "list", "--json")
    assert proc.returncode == 0 and marker not in proc.stderr
    offers = [row for row in json.loads(proc.stdout) if row["name"] == "dr-core"]
    assert sorted(row["distribution"] for row in offers) == ["drhost-plugin-platform-core", "evil_core"]
    for row in offers:
        assert row["status"] == "broken" and row["described_in"] is None
        assert "drhost-plugin-platform-core 1.0.0" in row["error"] and "evil_core 6.6.6" in row["error"]
    run = drhost("upgrade", "--demo", "--json")
    assert run.returncode == 7, run.stderr[-2000:]
    # --json: the refusal is the one JSON document on stdout, nothing else.
    error = json.loads(run.stdout)
    assert error["exit_code"] == 7 and error["error"]["type"] == "RefusedError"
    assert "drhost-plugin-platform-core 1.0.0" in error["error"]["message"]
    assert "evil_core 6.6.6" in error["error"]["message"]
    assert "Traceback" not in run.stderr and marker not in run.stdout + run.stderr
    # A run that leaves the name out does not need it.
    assert drhost("plan", "--demo", "-p", "no:dr-core").returncode == 0


@pytest.mark.integration
def test_the_second_list_comes_from_the_cache_and_a_changed_file_is_described_again(
        drhost: DrhostCLI, site: Path, cache_dir: Path) -> None:
    """An unchanged plugin is not described again (cached: true); changing one of its files invalidates its entry."""
    make_plugin(site, "zz-cached", simple_plugin("zz-cached"), record=True)
    first = listing(drhost)
    assert all(row["cached"] is False for row in first.values())
    second = listing(drhost)
    assert all(row["cached"] is True and row["status"] == "ok" for row in second.values())
    assert {n: r["described_in"] for n, r in second.items()} == {n: r["described_in"] for n, r in first.items()}
    module = site / "zz_cached.py"
    module.write_text(module.read_text() + "\n# changed\n")
    third = listing(drhost)
    assert third["zz-cached"]["cached"] is False and third["zz-cached"]["digest"] != first["zz-cached"]["digest"]
    assert all(row["cached"] is True for name, row in third.items() if name != "zz-cached")


@pytest.mark.integration
def test_the_cache_is_private_and_keeps_only_successful_descriptions(
        drhost: DrhostCLI, site: Path, cache_dir: Path) -> None:
    """Cache directory 0700, entries 0600; a broken plugin gets no entry and is described again next time."""
    make_plugin(site, "zz-broken", "raise ImportError('needs libfoo 2.0')\n")
    rows = listing(drhost)
    entries = sorted((cache_dir / "descriptions").iterdir())
    for directory in (cache_dir, cache_dir / "descriptions"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert entries and all(stat.S_IMODE(entry.stat().st_mode) == 0o600 for entry in entries)
    assert len(entries) == sum(row["status"] == "ok" for row in rows.values())
    again = listing(drhost)["zz-broken"]
    assert again["status"] == "broken" and again["cached"] is False and "needs libfoo 2.0" in again["error"]


@pytest.mark.integration
def test_a_fresh_account_without_a_cache_base_gets_a_working_cache(
        drhost: DrhostCLI, site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing ~/.cache (a fresh account) is created, not reported as an untrusted cache directory."""
    monkeypatch.delenv("DRHOST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-home" / ".cache"))
    proc = drhost("plugins", "list", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not a private directory" not in proc.stderr
    descriptions = tmp_path / "fresh-home" / ".cache" / "drhost" / "descriptions"
    assert stat.S_IMODE(descriptions.stat().st_mode) == 0o700 and any(descriptions.iterdir())


@pytest.mark.integration
def test_a_corrupt_cache_entry_is_ignored_and_rewritten(drhost: DrhostCLI, site: Path, cache_dir: Path) -> None:
    """Garbage in every cache entry: the plugins are described again (no traceback) and the entries rewritten."""
    listing(drhost)
    entries = sorted((cache_dir / "descriptions").iterdir())
    for entry in entries:
        entry.write_text('{"format": 1, "description": [truncated')
    rows = listing(drhost)
    assert all(row["cached"] is False and row["status"] == "ok" for row in rows.values())
    for entry in entries:
        assert json.loads(entry.read_text())["format"] == 1
    assert all(row["cached"] for row in listing(drhost).values())


@pytest.mark.integration
def test_no_cache_describes_afresh_and_writes_nothing(drhost: DrhostCLI, site: Path, cache_dir: Path) -> None:
    """--no-cache: every plugin described in its sandbox, the cache neither read nor written."""
    rows = listing(drhost, "--no-cache")
    assert rows and all(row["cached"] is False and row["described_in"] for row in rows.values())
    assert not (cache_dir / "descriptions").exists() or not list((cache_dir / "descriptions").iterdir())


def test_the_describe_deadline_must_be_positive(drhost: DrhostCLI, cache_dir: Path) -> None:
    """[discovery] timeout_s = 0 is a config error (exit 2) naming the key, before anything is described."""
    proc = drhost("plugins", "list", "--set", "discovery.timeout_s=0")
    assert proc.returncode == 2 and "timeout_s" in proc.stderr and "Traceback" not in proc.stderr


def test_a_pth_file_in_a_plugin_distribution_is_flagged(drhost: DrhostCLI, site: Path, cache_dir: Path) -> None:
    """A .pth a plugin's RECORD installs is shown as a warning; the plugins' own editable-install .pth is not."""
    make_plugin(site, "zz-pth", simple_plugin("zz-pth"), record=True,
                extra_files={"zz_pth_hook.pth": "import os; os.environ.setdefault('X', '1')\n"})
    proc = drhost("plugins", "list")
    assert proc.returncode == 0, proc.stderr
    assert ("warning: zz-pth: distribution zz_pth 0.1 installs zz_pth_hook.pth, which runs code at every Python "
            "start") in proc.stdout
    rows = listing(drhost)
    assert len(rows["zz-pth"]["warnings"]) == 1
    assert all(rows[name]["warnings"] == [] for name in DEPARTMENT)
