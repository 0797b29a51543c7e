"""The typed vocabulary: each set of words is declared once, matches the config schema and docs, and old journals
still read (issue 16)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest

import drhost
from drhost.events import EVENT_NAMES, NETWORK_EVENTS, RENAMED, RETIRED, WATCHDOG_EVENTS, Event, current_event_name
from drhost.orchestrator import (
    PHASES,
    RUN_EXIT_CODES,
    RUN_MODES,
    RUN_STATUSES,
    STAGE_STATUSES,
    STEP_STATUSES,
    TARGET_STATUSES,
    TERMINAL,
    new_target_record,
    run_status,
)
from drhost.orchestrator._reach import NOT_TAKEN_EVENTS
from drhost.orchestrator._run import REMOVED_EVENTS
from drhost.orchestrator._timeouts import OP_LABELS
from drhost.policy import (
    CLASS_ON_FAILURES,
    DECISIONS,
    ISOLATIONS,
    RESTART_MODES,
    ROLLBACK_WHENS,
    RUN_ON_FAILURES,
    one_of,
)
from drhost.report import describe
from drhost.state import iter_journal
from drhost.status import target_next
from drhost.supervisor import CGROUPS_MODES, ENDINGS, LIMIT_ENDINGS
from drhost.transport import TRANSPORTS
from drhost.transport._ssh_connect import HostKeyPolicy
from drhost.watchdog import CATEGORIES
from drhost_hookspecs import OPERATIONS, Category, LoadedPlugin, operation_name

ROOT = Path(drhost.__file__).resolve().parent
REPO = ROOT.parent
SCHEMA = json.loads((ROOT / "config" / "schema.json").read_text(encoding="utf-8"))
#: Subjects of event names: a dotted string starting with one of these is an event name.
SUBJECTS = ("run", "state", "cgroups", "containers", "worker", "context", "rollout", "target", "stage", "step",
            "plugin", "rollback", "watchdog", "network")


def _schema_enums(key: str) -> list[list[str]]:
    """Every ``enum`` list the config schema gives a property named ``key``."""
    found: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == key and isinstance(value, dict) and "enum" in value:
                    found.append(value["enum"])
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(SCHEMA)
    return found


@pytest.mark.parametrize(("key", "words"), [
    ("isolation", ISOLATIONS), ("restart", RESTART_MODES), ("rollback_when", ROLLBACK_WHENS),
])
def test_policy_words_are_the_schema_enums(key: str, words: tuple[str, ...]) -> None:
    """Each policy vocabulary is exactly the config schema's enum for its key, wherever the key appears."""
    enums = _schema_enums(key)
    assert enums, key
    assert all(enum == list(words) for enum in enums), (key, enums)


def test_config_words_are_the_schema_enums() -> None:
    """How a target is reached, its host key policy and [process] cgroups are the schema's enums."""
    assert _schema_enums("transport") == [list(TRANSPORTS)]
    assert _schema_enums("host_key_policy") == [list(get_args(HostKeyPolicy))]
    assert _schema_enums("cgroups") == [list(CGROUPS_MODES)]


def test_failure_words_are_the_schema_enums() -> None:
    """A class's on_failure and the run's on_failure are the schema's two enums; a decision is the run's minus ask."""
    enums = _schema_enums("on_failure")
    assert {tuple(e) for e in enums} == {CLASS_ON_FAILURES, RUN_ON_FAILURES}
    assert tuple(w for w in RUN_ON_FAILURES if w != "ask") == DECISIONS


def test_one_of_narrows_and_refuses() -> None:
    """A config word outside its vocabulary is an error that names the key, never a silent default."""
    assert one_of("process", ISOLATIONS, "classes.business.isolation") == "process"
    with pytest.raises(ValueError, match=r"classes\.business\.isolation: 'proces' is not one of thread"):
        one_of("proces", ISOLATIONS, "classes.business.isolation")


def test_one_category() -> None:
    """There is one Category, the author-facing one: the watchdog's categories are its members."""
    assert tuple(Category) == CATEGORIES
    assert not hasattr(__import__("drhost.watchdog", fromlist=["x"]), "Category")


def test_endings_and_operations() -> None:
    """The limit endings are endings; every plugin operation has a label; a worker's op is checked."""
    assert set(LIMIT_ENDINGS) <= set(ENDINGS)
    assert set(OP_LABELS) == {*OPERATIONS, "lock"} - {"describe"}
    assert operation_name("run_step") == "run_step"
    with pytest.raises(ValueError, match="unknown operation 'run_stpe'"):
        operation_name("run_stpe")
    assert LoadedPlugin  # the runtime that dispatches on OperationName


def test_statuses() -> None:
    """The run's status is made from target statuses into run statuses; exit codes and the tables that word a
    status use only declared statuses."""
    for status in TARGET_STATUSES:
        assert run_status([status]) in RUN_STATUSES
    assert set(RUN_EXIT_CODES) <= set(RUN_STATUSES)
    assert set(TERMINAL) <= set(TARGET_STATUSES)
    assert {"completed", "pending"} <= set(STAGE_STATUSES) and {"done", "skipped", "started"} <= set(STEP_STATUSES)
    assert RUN_MODES == ("upgrade", "resume", "rollback")
    fresh = new_target_record()
    assert fresh["status"] in TARGET_STATUSES and fresh["phase"] in PHASES
    assert set(fresh["stages"].values()) <= set(STAGE_STATUSES)
    assert target_next("t", "up_to_date", {}) == "nothing: was already at the package's version"
    assert target_next("t", "no such status", {}) == "drhost resume RUN (if no drhost is running it)"


def _emitted_names() -> set[tuple[str, str]]:
    """(file, name) of every string literal passed first to an emit-like call in drhost's code."""
    found: set[tuple[str, str]] = set()
    for path in ROOT.rglob("*.py"):
        if "demo/product" in path.as_posix():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            # The transport's _notify names network events; the Context's (context.py) names its own notifications.
            if name not in ("emit", "_emit") and not (name == "_notify" and "transport" in path.parts):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add((path.relative_to(ROOT).as_posix(), first.value))
            elif isinstance(first, ast.JoinedStr):
                found.add((path.relative_to(ROOT).as_posix(), "<f-string>"))
    return found


def test_every_emitted_name_is_in_the_catalogue() -> None:
    """Every event name the code emits (a literal in an emit call) is declared in drhost.events, and none is built
    with an f-string (mypy could not check it)."""
    emitted = _emitted_names()
    assert len(emitted) > 50
    unknown = sorted((file, name) for file, name in emitted if name not in EVENT_NAMES)
    assert unknown == []
    assert set(NOT_TAKEN_EVENTS.values()) <= EVENT_NAMES


def test_the_catalogue_is_all_emitted() -> None:
    """No catalogued name is dead: each is emitted somewhere (a literal, or a table the emitters use)."""
    emitted = {name for _, name in _emitted_names()}
    tables = {*NOT_TAKEN_EVENTS.values(), *NETWORK_EVENTS, *REMOVED_EVENTS.values()}
    assert EVENT_NAMES - emitted - tables == set()


def test_names_are_dotted_and_renames_point_forward() -> None:
    """Every name is subject.what; an old name is no current name and maps to a catalogued one."""
    assert all(re.fullmatch(r"[a-z]+\.[a-z_]+", name) and name.split(".")[0] in SUBJECTS for name in EVENT_NAMES)
    assert not set(RENAMED) & EVENT_NAMES
    assert set(RENAMED.values()) <= EVENT_NAMES
    assert not RETIRED & EVENT_NAMES
    assert set(WATCHDOG_EVENTS) | set(NETWORK_EVENTS) <= EVENT_NAMES


def test_readers_match_only_known_names() -> None:
    """Every event name a reader (report, status, console) compares against is catalogued or retired."""
    readers = [*sorted((ROOT / "report").glob("*.py")), ROOT / "status.py"]
    pattern = re.compile(rf"(?:{'|'.join(SUBJECTS)})\.[a-z_]+")
    seen: set[tuple[str, str]] = set()
    for path in readers:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.fullmatch(node.value):
                seen.add((path.name, node.value))
    assert len(seen) > 30
    assert {(file, name) for file, name in seen if name not in EVENT_NAMES | RETIRED} == set()


def test_docs_name_the_catalogue() -> None:
    """The operator guide's event table and the watchdog events' schema name exactly the catalogue."""
    guide = (REPO / "docs" / "operator-guide.md").read_text(encoding="utf-8")
    section = guide[guide.index("### Events"):]
    end = re.search(r"^#+ ", section[len("### Events"):], re.M)
    section = section[:end.start() + len("### Events")] if end else section
    documented: set[str] = set()
    for match in re.finditer(r"^\| `([a-z_.]+)`(?: / `([a-z_.]+)`)? \|", section, re.M):
        documented |= {group for group in match.groups() if group}
    assert documented == EVENT_NAMES | RETIRED
    schema = json.loads((REPO / "docs" / "schemas" / "watchdog-events.schema.json").read_text(encoding="utf-8"))
    assert schema["properties"]["event"]["enum"] == list(WATCHDOG_EVENTS)


def test_event_schemas_name_only_catalogued_events() -> None:
    """Every event a docs/schemas/*-events schema describes is in the catalogue."""
    for path in sorted((REPO / "docs" / "schemas").glob("*-events.schema.json")):
        enum = json.loads(path.read_text(encoding="utf-8"))["properties"]["event"]["enum"]
        assert set(enum) <= EVENT_NAMES, path.name


def _old_journal(tmp_path: Path) -> Path:
    """A journal as an earlier version wrote it: the watchdog's names and ``decision``."""
    lines = [
        {"ts": 1.0, "event": "step_progress", "run_id": "r", "target": "t1", "stage": "upgrade", "step": "s",
         "plugin": "p", "data": {"elapsed_s": 10.0, "timeout_s": 60.0, "remaining_s": None}},
        {"ts": 2.0, "event": "timeout_warning", "run_id": "r", "target": "t1", "stage": "upgrade", "step": "s",
         "plugin": "p", "data": {"urgent": False, "remaining_s": 9.0, "elapsed_s": 51.0, "timeout_s": 60.0}},
        {"ts": 3.0, "event": "decision", "run_id": "r", "target": "t1", "stage": "upgrade", "message": "boom",
         "data": {"decision": "rollback"}},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _event(record: dict[str, Any]) -> Event:
    return Event(record["event"], record["run_id"], target=record.get("target"), stage=record.get("stage"),
                 step=record.get("step"), plugin=record.get("plugin"), message=record.get("message", ""),
                 data=record.get("data", {}), ts=record["ts"])


def test_old_journal_names_read_as_today_s(tmp_path: Path) -> None:
    """A journal line with an old event name is read under today's name and renders as today's event does."""
    records = list(iter_journal(_old_journal(tmp_path)))
    assert [r["event"] for r in records] == ["watchdog.progress", "watchdog.warning", "stage.decision"]
    lines = [describe(_event(r)) for r in records]
    assert lines == [
        "t1: [upgrade] s (p) [progress] running for 10 s of 1 min",
        "t1: [upgrade] s (p) [warning] operation about to time out, 9 s left (51 s of 1 min used)",
        "t1: [upgrade] decision: rollback — boom",
    ]
    # An event that still carries its old name (rebuilt from a journal by other means) renders the same.
    for record, line in zip(records, lines, strict=True):
        old_name = next(old for old, new in RENAMED.items() if new == record["event"])
        assert describe(_event({**record, "event": old_name})) == line
    assert current_event_name("step_timeout") == "watchdog.timeout"
    assert current_event_name("step.failed") == "step.failed"
