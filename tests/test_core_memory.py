"""``[class:core] memory_mb`` is honest: core plugins run inside drhost, so it is not enforced — the host's resident
memory is sampled while each core call runs, and a step that grows it past the class figure gets a warning event
and a recorded finding in its step record, naming the numbers and that nothing was enforced."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import CLI_TIMEOUT_S, pids_under, run_json
from drhost.cli._doctor import doctor_report
from drhost.config import load_config
from plugin_factory import make_plugin, simple_plugin
from state_rows import read_state

LIMIT_MB = 200
GROW_MB = 400
HOG = f"""
blob = "x" * ({GROW_MB} * 1024 * 1024)  # written, so resident
ctx.sleep(1.0)                          # held across several samples
del blob
"""


@pytest.fixture(scope="module")
def hog_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    """One demo run (one target) with a core plugin whose step holds 400 MiB, under core memory_mb = 200."""
    base = tmp_path_factory.mktemp("hog")
    site, state_dir = base / "site", base / "state"
    state_dir.mkdir()
    make_plugin(site, "zz-hog", simple_plugin("zz-hog", "core", HOG))
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--json",
                               "--set", f"class.core.memory_mb={LIMIT_MB}"], capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
        yield proc, Path(run_json(proc)["run_dir"])
    finally:
        for pid in pids_under(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.podman
def test_core_memory_is_not_enforced_the_run_succeeds(
        hog_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """Nothing is killed or failed for memory in a thread of the host: the run succeeds."""
    proc, _ = hog_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_json(proc)["status"] == "succeeded"


@pytest.mark.integration
@pytest.mark.podman
def test_growth_past_memory_mb_is_warned_and_recorded_in_the_step(
        hog_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The step that grew the host past memory_mb has one warning event and one finding, with its numbers."""
    proc, run_dir = hog_run
    (warning,) = [e for e in events(run_dir) if e["event"] == "plugin.host_memory"]
    assert (warning["plugin"], warning["step"], warning["stage"]) == ("zz-hog", "work", "upgrade")
    data = warning["data"]
    assert data["memory_mb"] == LIMIT_MB and data["enforced"] is False
    assert data["peak_mib"] >= GROW_MB and data["start_mib"] < data["peak_mib"] - GROW_MB // 2
    assert warning["message"] == (
        f"plugin 'zz-hog' step 'work': host memory grew to {data['peak_mib']} MiB (from {data['start_mib']} MiB), "
        f"over [class:core] memory_mb = {LIMIT_MB} (not enforced: core plugins run inside the host; move the plugin "
        f"to a class with process isolation, such as business, to enforce a limit)")
    assert f"warning: {warning['message']}" in proc.stderr
    body = read_state(run_dir)
    steps = body["targets"]["dr-demo-1"]["steps"]
    (finding,) = steps["upgrade/zz-hog/work"]["findings"]
    assert finding["kind"] == "host_memory" and finding["message"] == warning["message"]
    assert finding["peak_mib"] == data["peak_mib"] and finding["enforced"] is False


@pytest.mark.integration
@pytest.mark.podman
def test_core_steps_that_stay_under_memory_mb_leave_no_finding(
        hog_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """dr-core's own steps (the same class, well under the figure) are sampled too and leave nothing."""
    _, run_dir = hog_run
    body = read_state(run_dir)
    target = body["targets"]["dr-demo-1"]
    core_steps = [key for key in target["steps"] if "/dr-core/" in key]
    assert core_steps
    assert all("findings" not in target["steps"][key] for key in core_steps)
    assert "findings" not in target


def test_doctor_says_core_memory_is_sampled_and_warned_and_cpu_not_enforced() -> None:
    """doctor reports the thread class's memory_mb as sampled, warned, not enforced, and cpu_percent as not enforced."""
    config = load_config([], ["class.core.memory_mb=300", "class.core.cpu_percent=40"]).data
    core = doctor_report(config)["classes"]["core"]
    memory = core["limits"]["memory"]
    assert memory.startswith("sampled, warned, not enforced:") and "over 300 MiB" in memory
    assert core["limits"]["cpu"] == "not enforced: cpu_percent = 40 is not applied to threads of the host"
    assert "memory_mb is sampled and warned about, cpu_percent is not applied at all" in core["not_guaranteed"][0]
