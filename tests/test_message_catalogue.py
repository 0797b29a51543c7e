"""The operator's language: every message id in the code has its zh_CN translation, and every translation
belongs to a message the code still has."""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest

import drhost
from drhost.i18n import LANGUAGES, catalog, translator

SOURCE = Path(drhost.__file__).parent
#: The callables whose first argument is a message id: ``t(...)``/``self._t(...)`` translate, ``N_`` marks,
#: ``SomeError.worded(...)`` raises an error the CLI says in the operator's language, ``phrase(...)`` is a part of
#: one (what a setting expected).
_MARKERS = {"t", "_t", "N_", "worded", "phrase"}
#: A message id of the report page's script (drhost/report/_html_assets.py): ``L("...")``.
_SCRIPT_ID = re.compile(r'\bL\("([^"\\]*)"')


def _called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def message_ids() -> Iterator[tuple[str, str]]:
    """(message id, where) for every literal message id in drhost's modules."""
    for path in sorted(SOURCE.rglob("*.py")):
        if "templates" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) in _MARKERS and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.args[0].value, f"{path.relative_to(SOURCE.parent)}:{node.lineno}"
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and 'L("' in node.value:
                # The report page's script: its words are ``L("...")`` calls inside a Python string.
                for found in _SCRIPT_ID.finditer(node.value):
                    line = node.lineno + node.value.count("\n", 0, found.start())
                    yield found.group(1), f"{path.relative_to(SOURCE.parent)}:{line}"


def string_literals() -> set[str]:
    found: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_id_has_a_translation(language: str) -> None:
    """A message id in the code without a translation in the shipped catalogue fails, naming where it is."""
    translated = catalog(language)
    missing = sorted({f"{where}: {msgid!r}" for msgid, where in message_ids() if msgid not in translated})
    assert missing == [], f"{len(missing)} message(s) without a {language} translation:\n" + "\n".join(missing)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_translation_keeps_the_fields_of_its_message(language: str) -> None:
    """A translation fills only {fields} its English id has (an invented one would fail at format time); it may
    leave one out where the language says it otherwise."""
    wrong = [f"{msgid!r}: {fields(msgid)} vs {fields(text)}" for msgid, text in catalog(language).items()
             if not fields(text) <= fields(msgid)]
    assert wrong == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_translation_outlives_its_message(language: str) -> None:
    """Every catalogue entry is a string the code still has (a renamed message leaves no stale entry)."""
    literals = string_literals() | {msgid for msgid, _ in message_ids()}
    stale = sorted(msgid for msgid in catalog(language) if msgid not in literals)
    assert stale == []


def test_the_walk_finds_the_messages_of_every_operator_facing_part() -> None:
    """The walk itself works: it finds message ids in the console, the status, the watchdog and the CLI."""
    where = {place.split(":")[0] for _, place in message_ids()}
    for part in ("drhost/report/_console.py", "drhost/watchdog/_messages.py", "drhost/cli/_runs.py",
                 "drhost/report/_html_assets.py", "drhost/report/_fleet.py", "drhost/status.py"):
        assert part in where, part


def test_chinese_step_lines_and_status_are_chinese_and_english_stays_english() -> None:
    """With zh_CN the console's step lines read in Chinese; without a catalogue language they stay English."""
    from drhost.events import Event
    from drhost.report._console import describe

    event = Event(ts=0.0, event="step.completed", run_id="r", target="dr-1", stage="upgrade",
                  step="upgrade_db_schema", plugin="dr-database", data={"duration_s": 1.25})
    chinese = describe(event, translator("zh_CN"))
    english = describe(event, translator("C"))
    assert english == "dr-1: [upgrade] upgrade_db_schema (dr-database) done in 1.2 s"
    assert re.search(r"[\u4e00-\u9fff]", chinese) and "upgrade_db_schema" in chinese and "1.2" in chinese


def test_the_plan_table_in_chinese_keeps_its_columns_aligned_on_a_terminal() -> None:
    """Chinese headers take two columns a character: every row's step starts in the header's step column."""
    import unicodedata

    from drhost.plan import Plan, PlannedStep, format_plan
    from drhost_hookspecs import Category, PluginClass, Stage

    step = PlannedStep(stage=Stage.UPGRADE, order=10, name="upgrade_db_schema", plugin="dr-database",
                       plugin_class=PluginClass.DATABASE, isolation="process", retryable=False,
                       timeout_key="upgrade.upgrade_db_schema", timeout_s=1800, declared_timeout_s=1800,
                       category=Category.DATABASE, has_cleanup=True, has_rollback=True)
    header, row = list(format_plan(Plan(steps=(step,), plugins=()), translator("zh_CN")))

    def column(line: str, text: str) -> int:
        before = line[: line.index(text)]
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in before)

    assert header.startswith("阶段") and "否" in row
    assert column(header, "步骤") == column(row, "upgrade_db_schema")


@pytest.mark.parametrize(("event", "data", "message"), [
    ("rollout.batch_started", {"batch": 1, "batches": 3, "group": "site-b", "targets": ["a", "b"]},
     "batch 2 of 3 (group site-b): 2 targets"),
    ("rollout.batch_finished", {"batch": 0, "batches": 1, "seconds": 3.0,
                                "counts": {"succeeded": 2, "failed": 0, "unreachable": 1, "not_started": 0}},
     "batch 1 of 1 finished: 2 succeeded, 1 unreachable"),
    ("rollout.paused", {"batch": 1, "seconds": 30.0}, "waiting 30 s before batch 2"),
    ("rollout.stopped", {"batch": 0, "reason": "2 of 3 failed", "not_started": ["c"]},
     "rollout stopped: 2 of 3 failed; 1 targets not started"),
])
def test_rollout_lines_are_rendered_from_the_data_as_the_journal_words_them(
        event: str, data: dict[str, object], message: str) -> None:
    """In English a rollout line is exactly the journal's message; in zh_CN it is made from the same data."""
    from drhost.events import Event
    from drhost.report._console import describe

    seen = Event(event=event, run_id="r", message=message, data=data)
    assert describe(seen, translator("C")) == message
    chinese = describe(seen, translator("zh_CN"))
    assert chinese != message and re.search(r"[\u4e00-\u9fff]", chinese)


def test_status_words_are_translated_for_the_text_and_stay_english_for_the_json() -> None:
    """What `drhost status` says of a target (consistent, next, rollout lines) reads in Chinese with zh_CN,
    keeps the run id and the commands to type, and is the English of the JSON without a language."""
    from drhost.plan import Plan
    from drhost.status import rollout_summary, status_word, target_status

    record = {"status": "rolled_back", "steps": {}}
    english = target_status(Plan(steps=(), plugins=()), "dr-1", record)
    chinese = target_status(Plan(steps=(), plugins=()), "dr-1", record, translator("zh_CN"))
    assert english["consistent"] == "yes: old version"
    assert english["next"] == "nothing: back at the old version, verified"
    assert chinese["consistent"] == "是: 旧版本" and re.search(r"[\u4e00-\u9fff]", chinese["next"])
    stop = {"batch": 0, "reason": "1 of 1 failed", "not_started": ["b"]}
    body = {"run_id": "20261207-1", "rollout": {"batches": [{"targets": ["a"]}, {"targets": ["b"]}], "stopped": stop}}
    (_, stopped) = rollout_summary(body, translator("zh_CN"))["lines"]
    assert "drhost resume 20261207-1" in stopped and "1 of 1 failed" in stopped and "分批发布" in stopped
    assert status_word("rolled_back", translator("C")) == "rolled_back"
    assert status_word("rolled_back", translator("zh_CN")) == "已回滚"


def test_a_setting_error_in_chinese_keeps_what_it_quotes(tmp_path: Path) -> None:
    """With zh_CN a bad setting is refused in Chinese words, quoting the key, the value and what was expected
    exactly as in English (an operator can search for them); the --json object stays English."""
    import json
    import os
    import subprocess
    import sys

    def refused(lang: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LANG": lang, "LC_ALL": "", "LC_MESSAGES": "", "DRHOST_STATE_DIR": str(tmp_path)}
        return subprocess.run([sys.executable, "-m", "drhost", "plan", "--demo", "--set", "run.forks=lots",
                               "--json"], capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)

    english, chinese = refused("C"), refused("zh_CN.UTF-8")
    assert english.returncode == chinese.returncode == 2
    assert english.stderr.startswith("drhost: error: ") and ": expected " in english.stderr
    assert chinese.stderr.startswith("drhost: 错误: ") and ": 期望 " in chinese.stderr
    assert "实际为 'lots'" in chinese.stderr
    assert "forks" in chinese.stderr
    assert json.loads(chinese.stdout) == json.loads(english.stdout)
    env = {**os.environ, "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "DRHOST_STATE_DIR": str(tmp_path)}
    alone = subprocess.run([sys.executable, "-m", "drhost", "plan", "--ssh"], capture_output=True, text=True, env=env,
                           timeout=60, stdin=subprocess.DEVNULL)
    expected = "drhost: 错误: 命令行: --ssh: 期望 --ssh 与 --demo 一起使用, 实际为 '--ssh alone'"
    assert alone.stderr.startswith(expected), alone.stderr


def test_doctor_lines_in_chinese() -> None:
    """The isolation kinds' doctor lines read in Chinese with zh_CN (what podman said stays as it said it)."""
    from drhost.supervisor import ISOLATION_KINDS

    report = {"podman": {"present": False}, "container": {"available": False, "detail": "podman not found"}}
    lines = ISOLATION_KINDS["container"].doctor_lines(report, translator("zh_CN"))
    assert lines == ["podman: 在 PATH 中未找到", "容器沙箱: 不可用: podman not found"]


def test_a_refusal_raised_worded_is_said_in_chinese(tmp_path: Path) -> None:
    """An error raised with .worded() (here: an unknown run) reads in Chinese with zh_CN, quoting the run id and
    the directory as they are; the English is the same text the error had before it was worded."""
    import os
    import subprocess
    import sys

    def status(lang: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LANG": lang, "LC_ALL": "", "LC_MESSAGES": "", "DRHOST_STATE_DIR": str(tmp_path)}
        return subprocess.run([sys.executable, "-m", "drhost", "status", "20000101-000000-000000"],
                              capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)

    english, chinese = status("C"), status("zh_CN.UTF-8")
    assert english.returncode == chinese.returncode == 7
    assert english.stderr.startswith("drhost: error: no run '20000101-000000-000000' under ")
    assert chinese.stderr.startswith(f"drhost: 错误: {tmp_path / 'runs'} 下没有运行 '20000101-000000-000000'"), \
        chinese.stderr


def test_phrases_inside_an_error_are_said_in_chinese_too(tmp_path: Path) -> None:
    """What an environment variable or --out expected, built from phrases, reads in Chinese with zh_CN (the
    nested phrase "a directory" too); the path it names stays as it is."""
    import os
    import subprocess
    import sys

    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    env = {**os.environ, "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "DRHOST_STATE_DIR": str(a_file)}
    state = subprocess.run([sys.executable, "-m", "drhost", "status"], capture_output=True, text=True, env=env,
                           timeout=60, stdin=subprocess.DEVNULL)
    assert state.returncode == 2
    assert state.stderr.startswith(f"drhost: 错误: 环境变量 DRHOST_STATE_DIR='{a_file}': 期望 目录 (drhost 的状态或缓存"
                                   f"存放于此); {a_file} 不是目录"), state.stderr
    env["DRHOST_STATE_DIR"] = str(tmp_path / "state")
    out = subprocess.run([sys.executable, "-m", "drhost", "report", "20000101-000000-000000", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    expected = f"drhost: 错误: --out '{tmp_path}': 期望已存在目录中的文件; 它是一个目录 (请指定其中的文件)"
    assert out.stderr.startswith(expected), out.stderr


def test_an_event_message_worded_as_a_phrase_is_said_in_chinese_from_the_journal_too() -> None:
    """An event whose message is a phrase keeps its English in the journal record and its wording beside it; read
    back, the console says it in Chinese (the error it quotes too); a wording that no longer gives the recorded
    text is ignored, so an edited record is never said as something it does not say."""
    import json

    from drhost.errors import StateError, message_phrase, phrase, phrase_from_json
    from drhost.events import Event
    from drhost.report._console import describe

    error = StateError.worded("no run {run} under {path}", run="'r-1'", path="/var/lib/drhost/runs")
    message = phrase("cannot reach target {target}: {error}", target="dr-1", error=message_phrase(error))
    record = json.loads(json.dumps(Event("stage.failed", "r", target="dr-1", stage="precheck",
                                         message=message).to_json()))
    assert record["message"] == "cannot reach target dr-1: no run 'r-1' under /var/lib/drhost/runs"
    read = Event(record["event"], "r", target="dr-1", stage="precheck",
                 message=phrase_from_json(record["message"], record["wording"]))
    chinese = describe(read, translator("zh_CN"))
    assert chinese == "dr-1: [预检查] 失败: 无法连接目标 dr-1: /var/lib/drhost/runs 下没有运行 'r-1'", chinese
    assert describe(read, translator("C")) == f"dr-1: [precheck] failed: {record['message']}"
    edited = phrase_from_json("cannot reach target dr-2: gone", record["wording"])
    assert describe(Event("stage.failed", "r", stage="precheck", message=edited), translator("zh_CN")) \
        .endswith("cannot reach target dr-2: gone")


def test_a_failed_run_in_chinese_says_why_in_chinese_and_its_journal_stays_english(tmp_path: Path) -> None:
    """A real demo run whose database step crashes, with LANG=zh_CN: the failure, decision and rollback lines
    say the ending, the stage and drhost's own reason in Chinese (the signal's name as it is); the journal keeps
    the English message and, beside it, the wording it was said from."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "DRHOST_STATE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--set",
                          "plugin.dr-database.fault=upgrade_db_schema:crash"], capture_output=True, text=True,
                         env=env, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    said = run.stdout + run.stderr
    decision = "[升级] 决定: 回滚 — [升级] upgrade_db_schema (dr-database) 崩溃: 工作进程已退出: 被 SIGSEGV 终止"
    assert decision in said, said
    assert "回滚已验证 目标已恢复并已验证" in said
    journal = next((tmp_path / "runs").glob("*/events.jsonl"))
    decided = [json.loads(line) for line in journal.read_text().splitlines() if '"stage.decision"' in line]
    assert decided[0]["message"] == "[upgrade] upgrade_db_schema (dr-database) crashed: worker died: killed by SIGSEGV"
    assert decided[0]["wording"]["template"] == "{step} {ended}: {message}"
