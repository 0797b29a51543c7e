"""Acceptance: a demo run with hostile plugins of every class, through the real CLI (`drhost upgrade --json`).

Each hostile plugin tries one hole (leave its cgroups, become root, write outside the target, reach the
network, leave a daemon, bomb memory or processes, print into the CLI's stdout, touch a path it did not
declare). Every case asserts: the host survives (the run ends and the product is upgraded or rolled back as
the class policy says), the limit or refusal is named in the plugin's ending, `--json` stdout is exactly one
JSON document, and nothing is left: no process, no container, no cgroup directory of the run, no file
outside the target's root. The per-kind matrix of the same faults is tests/test_fault_matrix.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import TargetProbe
from drhost.supervisor._cgroups import probe_cgroups
from fault_plugins import NAMED_BY, fault_plugin
from plugin_factory import make_plugin
from state_rows import read_state

pytestmark = [pytest.mark.integration, pytest.mark.cgroups, pytest.mark.podman, pytest.mark.slow]

Drhost = Callable[..., subprocess.CompletedProcess[str]]
EVIL_FILE = Path("/opt/drhost-fault-matrix-evil")
#: Places a plugin could leave a file outside the target root; listed before and after the run.
WATCHED_DIRS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/opt"), Path("/etc"))

#: A core plugin that prints into the CLI's stdout at import and in a step, every way there is.
CORE_PRINTER = """
import os, sys
print("MARKER-IMPORT not JSON")

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name=NAME, department="chaos", plugin_class=PluginClass.CORE)

def noisy(ctx):
    print("MARKER-STEP not JSON")
    sys.stdout.write("MARKER-WRITE not JSON\\n")
    os.write(1, b"MARKER-FD1 not JSON\\n")

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.PRECHECK:
        register(Step("noisy", noisy, retryable=False, timeout_s=30, category=Category.PLUGIN, order=99))
"""


def processes_with(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and entry.name != str(os.getpid()):
                found.append(f"pid {entry.name}: {cmdline[:120]!r}")
    return found


def containers_with(marker: str) -> list[str]:
    if not shutil.which("podman"):
        return []
    ps = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                        timeout=60, check=False)
    return [name for name in ps.stdout.split() if marker in name]


def cgroup_dirs_of(run_id: str) -> list[str]:
    label = run_id.replace("/", "_")
    return [str(p) for base in probe_cgroups().bases.values() for p in (base / "drhost").glob(f"{label}*")]


def listing() -> dict[Path, set[str]]:
    return {d: set(os.listdir(d)) for d in WATCHED_DIRS if d.is_dir()}


def hostile_run(drhost: Drhost, tmp_path: Path, plugins: dict[str, tuple[str, str]],
                *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], dict[str, Any], str, Path]:
    """Install ``plugins`` (name -> (class, kind)), run the one-target demo with them; return proc, summary,
    target record, the marker in every hostile plugin's name and the target's root."""
    marker = f"zz-{uuid.uuid4().hex[:6]}"
    site = tmp_path / "site"
    ports: list[str] = []
    for name, (plugin_class, kind) in plugins.items():
        full = f"{marker}-{name}"
        if kind == "network":
            ports += ["--set", f"plugin.{full}.port=9"]
        source = (f"NAME = {full!r}\n" + CORE_PRINTER if kind == "core_printer"
                  else fault_plugin(full, plugin_class, kind))
        make_plugin(site, full, source)
    site.chmod(0o755)
    before = listing()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = drhost("upgrade", "--demo", "--demo-targets", "1", "--json", "--set", "run.kill_grace_s=0.5",
                  "--set", "timeouts.upgrade.hostile=4", *ports, *extra, env=env, timeout=600)
    summary = json.loads(proc.stdout)  # exactly one JSON document, whatever the plugins printed
    state = read_state(Path(summary["run_dir"]))
    target = state["targets"]["dr-demo-1"]
    after = listing()
    new_files = {str(d): sorted(after[d] - before.get(d, set())) for d in after if after[d] - before.get(d, set())}
    assert not any(marker in f or "drhost-hostile" in f or "drhost-fault" in f
                   for files in new_files.values() for f in files), new_files
    assert not EVIL_FILE.exists() and not Path("/etc/drhost-hostile-context").exists()
    assert processes_with(marker) == [] and containers_with(marker) == []
    assert cgroup_dirs_of(summary["run_id"]) == []
    return proc, summary, target, marker, Path(state["demo"]["roots"][0])


def named(target: dict[str, Any], plugin: str, kind: str) -> None:
    ending = target["plugins"][plugin]
    why = f"{ending.get('why', '')} {ending.get('limit', '')} {ending.get('signal', '')}"
    assert any(word in why for word in NAMED_BY[kind]), f"{plugin}: cause of {kind} not named in {ending}"


def test_hostile_business_and_third_party_plugins_are_skipped_or_recorded_and_the_upgrade_completes(
        drhost: Drhost, tmp_path: Path) -> None:
    """Business hostiles are skipped, third-party ones recorded, core prints reach stderr only: 2.0.0, nothing left."""
    plugins = {
        "b-escape": ("business", "escape_cgroup"), "b-root": ("business", "become_root"),
        "b-daemon": ("business", "daemon"), "b-fork": ("business", "fork_bomb"),
        "b-write": ("business", "write_outside"), "b-net": ("business", "network"),
        "b-context": ("business", "context_outside"), "t-context": ("third_party", "context_outside"),
        "t-write": ("third_party", "write_outside"), "t-daemon": ("third_party", "daemon"),
        "t-escape": ("third_party", "escape_cgroup"),
        "c-print": ("core", "core_printer"),
    }
    proc, summary, target, marker, root = hostile_run(drhost, tmp_path, plugins, "--set", "class.business.pids=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, (plugin_class, kind) in plugins.items():
        full = f"{marker}-{name}"
        if plugin_class == "business":
            named(target, full, kind)
            assert full in target["skipped_plugins"]
        elif plugin_class == "third_party":
            named(target, full, kind)
            assert any(e["plugin"] == full and e["action"] == "recorded" for e in target["errors"])
    for word in ("MARKER-IMPORT", "MARKER-STEP", "MARKER-WRITE", "MARKER-FD1"):
        assert word not in proc.stdout and word in proc.stderr
    assert target["plugins"][f"{marker}-c-print"]["ended"] == "ok"
    assert summary["status"] == "succeeded" and TargetProbe(root).current_version == "2.0.0"


def test_a_hostile_database_plugin_aborts_and_rolls_back_with_the_pids_limit_named(
        drhost: Drhost, tmp_path: Path) -> None:
    """A fork bomb in the database class is held at pids.max, named, and the target is rolled back to 1.0.0."""
    proc, summary, target, marker, root = hostile_run(drhost, tmp_path, {"d-fork": ("database", "fork_bomb")},
                                                "--set", "class.database.pids=16")
    assert proc.returncode == 3, proc.stderr[-3000:]
    named(target, f"{marker}-d-fork", "fork_bomb")
    assert summary["status"] == "rolled_back" and target["status"] == "rolled_back"
    assert TargetProbe(root).current_version == "1.0.0"
