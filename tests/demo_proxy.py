"""A one-target SSH demo run whose target drhost reaches only through the fault proxy (tests/tcp_proxy.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema

from drhost.cli._inputs import package_info, prepare
from drhost.cli._main import build_parser
from drhost.demo.environment import create_demo, start_ssh_hosts, stop_demo
from drhost.demo.sshd import SshHost
from drhost.orchestrator import create_run
from drhost.state import RunState, state_root
from tcp_proxy import TcpProxy

NETWORK_SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "schemas" / "network-events.schema.json")
                            .read_text())


@contextmanager
def demo_behind_proxy(*settings: str) -> Iterator[tuple[RunState, SshHost, Path, TcpProxy, Path]]:
    """Yields (state, host, root, proxy, the package's path on the target); ``settings`` are ``--set`` values."""
    args = build_parser().parse_args(["upgrade", "--demo", "--ssh", "--demo-targets", "1", "--keep",
                                      *(item for s in settings for item in ("--set", s))])
    prepared = prepare(args, need_package=True)
    assert prepared.demo_roots is not None and prepared.demo_ssh_hosts is not None and prepared.package
    create_demo(state_root(), prepared.demo_roots, reserved_ports=[h.port for h in prepared.demo_ssh_hosts.values()])
    start_ssh_hosts(prepared.demo_ssh_hosts)
    ((name, host),) = prepared.demo_ssh_hosts.items()
    (root,) = prepared.demo_roots.values()
    proxy = TcpProxy(host.host, host.port).start()
    try:
        config = prepared.config.data
        spec = config["targets"][name]
        # The proxy is the host as drhost knows it: known_hosts names it, with the sshd's key.
        key_type, key = (host.directory / "host_key.pub").read_text().split()[:2]
        with Path(spec["known_hosts"]).open("a") as known:
            known.write(f"[{proxy.host}]:{proxy.port} {key_type} {key}\n")
        spec["port"] = proxy.port
        state = create_run(config=config, config_files=[], plan=prepared.plan, package=package_info(prepared.package),
                           extra={"demo": {"roots": [str(root)], "keep": True}})
        yield state, host, root, proxy, root / "staging" / prepared.package.path.name
    finally:
        proxy.stop()
        host.stop()
        stop_demo([root])


def network_events_of(run_dir: Path) -> list[dict[str, Any]]:
    """The run's journal; every event docs/schemas/network-events.schema.json covers is checked against it."""
    found = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    for event in found:
        if event["event"] in NETWORK_SCHEMA["properties"]["event"]["enum"]:
            jsonschema.validate(event, NETWORK_SCHEMA)
    return found
