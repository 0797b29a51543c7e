"""One controller, a thousand targets: a whole real run through the CLI, whose cost per target does not grow
with the fleet (bench/scale.py, at a CI size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SCALE = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


def test_a_thousand_targets_run_to_the_end_at_a_flat_cost_per_target() -> None:
    """20 and 1,000 local targets through a whole upgrade (bench/scale.py checks every target succeeded):
    the state commits per target do not grow with the fleet (each writes its own row, not the fleet's),
    controller CPU grows no faster than targets^1.5 (it was 1.4 at 100 targets with the whole-file state; a
    flat cost is 1.0, and the fixed start-up cost makes it lower between these sizes), and the controller's
    memory stays bounded."""
    done = subprocess.run([sys.executable, str(SCALE), "--targets", "20", "1000", "--steps", "1",
                           "--count-commits", "--json"], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    small, large = result["sizes"]
    assert (small["targets"], large["targets"]) == (20, 1000)
    assert large["state_commits_per_target"] <= small["state_commits_per_target"] + 1, result
    assert result["exponent"] < 1.5, result
    assert large["peak_rss_mib"] < 256, result
    print(f"1,000 targets: {large['cpu_per_target_ms']} ms controller CPU and {large['wall_per_target_ms']} ms "
          f"wall per target, peak RSS {large['peak_rss_mib']} MiB, exponent {result['exponent']}")


@pytest.mark.sshd
def test_a_hundred_real_sshd_targets_run_to_the_end() -> None:
    """100 targets, each a real OpenSSH sshd of its own on loopback (host keys checked strictly), through a
    whole upgrade over SSH with a command on each: every target succeeds (bench/scale.py checks each), the
    state commits per target are those of a local run of the same plan, and the controller's memory stays
    bounded with 100 connections, heartbeats and remote helpers open."""
    done = subprocess.run([sys.executable, str(SCALE), "--ssh", "--targets", "100", "--steps", "1", "--commands",
                           "1", "--forks", "50", "--count-commits", "--json"], capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = json.loads(done.stdout)["sizes"]
    assert (row["targets"], row["transport"], row["commands_per_target"]) == (100, "ssh", 1)
    assert row["state_commits_per_target"] <= 26, row
    assert row["peak_rss_mib"] < 256, row
    print(f"100 sshd targets: {row['cpu_per_target_ms']} ms controller CPU and {row['wall_per_target_ms']} ms "
          f"wall per target, peak RSS {row['peak_rss_mib']} MiB")
