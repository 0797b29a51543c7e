"""The isolation fault matrix: hostile plugins of every kind, in every isolation class they apply to.

Each case runs a real run (real worker processes or containers, real limits, real signals) and asserts:
the host survives, the limit or cause that stopped the plugin is named, the class policy was applied, and
nothing the plugin started is left behind.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drhost.config import load_config
from drhost.orchestrator import RunSummary, create_run, drive
from drhost.plan import build_plan
from drhost.plugins import discover
from drhost_hookspecs import PackageInfo
from fault_plugins import NAMED_BY, fault_plugin
from plugin_factory import make_plugin

CLASSES = ("business", "database", "third_party")
KINDS = ("exit", "segfault", "hang_ignoring_term", "memory_bomb", "fork_bomb", "cpu_spin", "stdout_flood",
         "protocol_garbage", "oversize_message")
#: Confinement: containers (read-only root, uid 65534, --network none) and process workers (drhost-worker,
#: read-only mount namespace, own pid and network namespaces) alike.
EVERY_CLASS_EXTRA = ("network", "write_outside", "escape_cgroup", "become_root", "daemon")
#: The kinds that only the step's time budget stops.
ENDED_BY_TIMEOUT = ("hang_ignoring_term", "cpu_spin")


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker``, and our containers still known to podman."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(f"pid {entry.name}: {cmdline[:120]!r}")
    if shutil.which("podman"):
        ps = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                            timeout=60)
        found.extend(f"container {name}" for name in ps.stdout.split() if marker in name)
    return found


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on the host's loopback: what a plugin with network access could reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def run_hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin_class: str, kind: str,
                port: int) -> tuple[RunSummary, dict[str, Any], str]:
    name = f"zz-{kind.replace('_', '-')}-{plugin_class.replace('_', '-')}"
    site = tmp_path / "site"
    make_plugin(site, name, fault_plugin(name, plugin_class, kind))
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DRHOST_INSTANT_RETRIES", "1")
    monkeypatch.setenv("DRHOST_LOAD_PLUGINS", name)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    importlib.invalidate_caches()
    root = tmp_path / "target"
    root.mkdir()
    # 3 s ends the hanging kinds quickly. Every other kind ends by its own fault, and its budget also pays for
    # starting the worker or container (seen over 3 s for a container on a loaded CI machine), so it gets a budget
    # that only a real hang would reach; a flood is work, not a hang, and must succeed.
    timeout_s = 3 if kind in ENDED_BY_TIMEOUT else 60
    config = load_config(overrides=[
        "target.t.transport=local", f"target.t.root={root}", f"timeouts.upgrade.hostile={timeout_s}",
        "run.kill_grace_s=0.5",
        f"plugin.{name}.port={port}", "run.worker_message_limit_bytes=1048576",
    ])
    plan = build_plan(discover(), config.data)
    package = PackageInfo("p", "2", ("1",), str(tmp_path / "pkg"), "", "0" * 64, 0)
    state = create_run(config=config.data, config_files=[], plan=plan, package=package)
    summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
    return summary, state.get("targets")["t"], name


def assert_policy(plugin_class: str, summary: RunSummary, target: dict[str, Any], name: str) -> None:
    if plugin_class == "business":
        assert summary.status == "succeeded" and name in target["skipped_plugins"]
        assert "skipped" in target["plugins"][name]["ended"]
    elif plugin_class == "third_party":
        assert summary.status == "succeeded" and not target["skipped_plugins"]
        assert target["errors"] and target["errors"][0]["action"] == "recorded"
    else:
        assert summary.status == "rolled_back" and target["status"] == "rolled_back"


def check_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin_class: str, kind: str, port: int) -> None:
    summary, target, name = run_hostile(tmp_path, monkeypatch, plugin_class, kind, port)
    ending = target.get("plugins", {}).get(name, {})
    why = f"{ending.get('why', '')} {ending.get('limit', '')} {ending.get('signal', '')}"
    assert any(word in why for word in NAMED_BY[kind]), f"{kind}: cause not named in {ending}"
    assert_policy(plugin_class, summary, target, name)
    assert leftovers(name) == []


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in ("hang_ignoring_term", "cpu_spin")
                                  else k for k in KINDS + EVERY_CLASS_EXTRA])
@pytest.mark.parametrize("plugin_class", [pytest.param(c, marks=pytest.mark.podman) if c == "third_party" else c
                                          for c in CLASSES])
def test_hostile_plugin_is_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: int,
                                     plugin_class: str, kind: str) -> None:
    """A hostile plugin fails alone: the host survives, the cause is named, the class policy applies, no leftovers."""
    if kind == "stdout_flood":
        summary, target, name = run_hostile(tmp_path, monkeypatch, plugin_class, kind, listener)
        # Prints go to the log, never into the protocol: the step simply succeeds.
        assert summary.status == "succeeded" and target["plugins"][name]["ended"] == "ok"
        assert target["plugin_state"][name]["flooded"] is True
        assert leftovers(name) == []
        return
    check_case(tmp_path, monkeypatch, plugin_class, kind, listener)
    assert not Path("/opt/drhost-fault-matrix-evil").exists()


@pytest.mark.podman
def test_import_error_is_a_broken_plugin_not_a_broken_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin raising at import is listed broken in every class; the others still load."""
    site = tmp_path / "site"
    for plugin_class in CLASSES:
        make_plugin(site, f"zz-import-{plugin_class.replace('_', '-')}", "raise RuntimeError('bad import')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    importlib.invalidate_caches()
    registry = discover()
    for plugin_class in CLASSES:
        record = registry.get(f"zz-import-{plugin_class.replace('_', '-')}")
        assert record.status == "broken" and "bad import" in record.error
    assert registry.get("dr-core").status == "ok"
    assert sys.modules.get("drhost") is not None
