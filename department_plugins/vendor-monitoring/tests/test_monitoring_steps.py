"""dr-monitoring: the config it writes, the health probe, and putting the old config back."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

from drhost_hookspecs import Stage
from plugin_harness import Harness


def _config_file(h: Harness) -> str:
    return str(h.root / "etc" / "monitoring" / "drproduct.json")


def test_config_points_at_the_ini_port_and_new_version(harness: Harness) -> None:
    """The monitoring config names the new version and /health on the port of drproduct.ini."""
    harness.run_stages(*Stage.ordered())
    ini = configparser.ConfigParser()
    ini.read(harness.root / "etc" / "drproduct.ini")
    document = json.loads(Path(_config_file(harness)).read_text())
    assert document["version"] == "2.0.0"
    assert document["health_url"] == f"http://127.0.0.1:{ini.getint('service', 'port')}/health"
    assert harness.ctxs["dr-monitoring"].state["health_latency_ms"] > 0


def test_rollback_restores_an_existing_config_exactly(harness: Harness) -> None:
    """A monitoring config present before the upgrade is back byte for byte after rollback."""
    original = '{"hand": "written"}\n'
    (harness.root / "etc" / "monitoring").mkdir(parents=True)
    (harness.root / "etc" / "monitoring" / "drproduct.json").write_text(original)
    harness.run_step(Stage.PRECHECK, "dr-monitoring", "check_monitoring_agent")
    harness.run_step(Stage.UPGRADE, "dr-monitoring", "update_monitoring_config")
    assert Path(_config_file(harness)).read_text() != original
    harness.compensate(Stage.UPGRADE, "rollback")
    assert Path(_config_file(harness)).read_text() == original


def test_rollback_removes_a_directory_it_created(harness: Harness) -> None:
    """When etc/monitoring did not exist, rollback leaves no trace of it."""
    harness.run_step(Stage.PRECHECK, "dr-monitoring", "check_monitoring_agent")
    harness.run_step(Stage.UPGRADE, "dr-monitoring", "update_monitoring_config")
    harness.plugins["dr-monitoring"].invoke("rollback", harness.ctxs["dr-monitoring"], stage=Stage.UPGRADE,
                                            in_process=True)
    assert not (harness.root / "etc" / "monitoring").exists()


def test_collect_context_measures_the_monitoring_config(harness: Harness) -> None:
    """collect_context gives the monitoring config's real size as the file measurement once it exists."""
    ctx = harness.ctxs["dr-monitoring"]
    harness.run_stages(*Stage.ordered())
    found = harness.plugins["dr-monitoring"].invoke("collect_context", ctx, in_process=True)
    size = Path(_config_file(harness)).stat().st_size
    assert found["config"] == _config_file(harness)
    assert found["measurement"] == {"file_bytes": size, "label": "monitoring config"}
