"""The extension points stay registries: no kind is hard-coded outside its entry, and every entry is complete."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest

from drhost.config import schema
from drhost.policy import Isolation
from drhost.supervisor import ISOLATION_KINDS, isolation
from drhost.supervisor._isolation import Removed
from drhost.transport import TRANSPORTS, Availability, TransportName, transport
from drhost_hookspecs import Stage

DRHOST = Path(__file__).parent.parent / "drhost"
#: Where the kinds are named on purpose: the registries themselves.
REGISTRIES = {DRHOST / "supervisor" / "_isolation.py", DRHOST / "transport" / "_registry.py"}
KINDS = "|".join((*ISOLATION_KINDS, *TRANSPORTS))
#: Lines that name a kind for another reason than branching on it, each with why.
ALLOWED = {
    # the description cache's key layout: kept byte for byte so the caches operators have stay valid
    ('drhost/plugins/_describe.py', '"process": config.get("process"), "container": config.get("container") '
                                    'if kind == "container"'),
}
#: ``x.isolation == "container"``, ``target["transport"] != "ssh"``, ``sandbox.kind == "process"``,
#: ``p.isolation in ("thread", ...)``: a branch on a kind's name.
COMPARISON = re.compile(
    rf"""(isolation|transport|kind)\b["'\]]*\s*(==|!=|not in|in)\s*[(\[{{]?\s*["']({KINDS})["']""")


def _config() -> dict[str, Any]:
    from drhost.config import load_config

    return load_config([], []).data


def test_no_module_outside_the_registries_branches_on_a_kind_name() -> None:
    """No drhost module compares an isolation, transport or sandbox kind with a literal name: it asks the registry."""
    found = [f"{path.relative_to(DRHOST.parent)}:{number}: {line.strip()}"
             for path in sorted(DRHOST.rglob("*.py")) if path not in REGISTRIES
             for number, line in enumerate(path.read_text().splitlines(), 1) if COMPARISON.search(line)
             and (str(path.relative_to(DRHOST.parent)), line.strip()) not in ALLOWED]
    assert found == []


def test_the_pattern_finds_a_branch_on_a_kind() -> None:
    """The scan above is not vacuous: it finds the comparisons it is meant to forbid."""
    for line in ('if policy.isolation == "container":', 'if target["transport"] != "ssh":',
                 'if sandbox.kind == "process":', 'if p.isolation in ("thread", "process"):'):
        assert COMPARISON.search(line), line


@pytest.mark.parametrize("name", sorted(ISOLATION_KINDS))
def test_every_isolation_kind_answers_availability_doctor_and_clean_up(name: str) -> None:
    """Each isolation entry says whether it is available, renders its own doctor sections and cleans up a run."""
    kind = isolation(name)
    assert kind.name == name and kind.noun
    config = _config()
    found = kind.available(config)
    assert isinstance(found, Availability) and isinstance(found.reason, str) and found.reason
    sections = kind.doctor(config)
    assert all(isinstance(line, str) for line in kind.doctor_lines(sections, lambda m: m))
    assert (sections == {}) == (kind.doctor_lines(sections, lambda m: m) == [])
    removed = kind.clean_up("19700101-000000-nothing", config, previous_gone=False, spare=lambda _: True)
    # Nothing of this (never started) run; the sweep also removes what any gone controller left on the machine,
    # and the suite's other workers kill controllers (the crash matrix): those may be found here, never more.
    assert all(isinstance(r, Removed) and r.what == "containers" and "killed controller" in r.message
               for r in removed), removed
    assert kind.weaker is None or isolation(kind.weaker).weaker is None
    assert all(isinstance(p, tuple) for p in kind.config_problems(config))


@pytest.mark.parametrize("name", sorted(TRANSPORTS))
def test_every_transport_answers_availability_checks_and_where(name: str) -> None:
    """Each transport entry says whether it is available, checks a target's settings and names where it goes."""
    kind = transport(name)
    assert kind.name == name
    found = kind.available()
    assert isinstance(found, Availability) and found.reason
    target = {"transport": name, "root": "/opt/product", "host": "db1.example", "port": 22}
    assert kind.problems(target) == []
    assert kind.where(target).startswith(name)
    assert kind.root_identity(target)[1] == "/opt/product"


def test_an_unknown_kind_is_an_error_naming_the_known_ones() -> None:
    """Looking up a kind no registry has names the key and every kind this drhost has."""
    with pytest.raises(ValueError, match=r"'vm'.*thread, process, container"):
        isolation("vm")
    with pytest.raises(ValueError, match=r"'telnet'.*local, ssh"):
        transport("telnet")


def test_the_schema_lists_exactly_the_registered_kinds_and_stages() -> None:
    """The config schema's enums and the stage blocks are the registries' keys and the Stage enum."""
    root = schema()
    assert root["$defs"]["class"]["properties"]["isolation"]["enum"] == list(ISOLATION_KINDS)
    assert root["$defs"]["target"]["properties"]["transport"]["enum"] == list(TRANSPORTS)
    assert list(root["properties"]["stages"]["properties"]) == [s.value for s in Stage.ordered()]
    assert list(get_args(Isolation)) == list(ISOLATION_KINDS)
    assert list(get_args(TransportName)) == list(TRANSPORTS)
