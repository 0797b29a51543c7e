"""dr-core's diagnostics at a timeout: the service's port, registration and status, read from the target."""

from __future__ import annotations

import configparser

from plugin_harness import Harness


def test_collect_context_reports_the_service_port_and_status(harness: Harness) -> None:
    """collect_context answers the port from the product's ini (as the service measurement) and the live status."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(harness.root / "etc" / "drproduct.ini")
    port = int(ini.get("service", "port"))
    found = harness.plugins["dr-core"].invoke("collect_context", harness.ctxs["dr-core"], in_process=True)
    assert found["measurement"] == {"port": port}
    assert found["registered_version"] == found["current_version"] == "1.0.0"
    assert found["service_status"]["running"] is True and found["service_status"]["version"] == "1.0.0"
