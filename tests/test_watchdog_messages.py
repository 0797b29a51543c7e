"""Timeout, progress and warning messages (design §4.2.2–4.2.4) and their zh_CN translations."""

from __future__ import annotations

import gettext
import json
import re
from importlib import resources
from typing import Any

import pytest

from drhost.i18n import catalog
from drhost.watchdog import (
    CATEGORIES,
    Environment,
    JsonTranslations,
    TimeoutReport,
    as_event_fields,
    format_elapsed,
    format_eta_extra,
    format_progress,
    format_remaining,
    format_resources,
    format_size,
    format_timeout,
    format_warning,
    human_duration,
    reason_text,
    resolve_language,
    suggestion,
    translations,
    translator,
)
from drhost_hookspecs import Category

ZH = translator("zh_CN")

ENGLISH_EXAMPLE = """\
[error] upgrade operation timed out
step:        [upgrade] database schema upgrade (dr-database)
reason:      database operation; catalog 2.1 GB, index rebuild on large tables
timeout:     1800 s (30 min)
elapsed:     2100 s (35 min)
exceeded by: 300 s (5 min)
environment: CPU 85%, memory 78%, disk IO 92%
suggestion:  check database performance or run the upgrade off-peak"""

MEASUREMENTS: dict[Category, tuple[dict[str, Any], str, str]] = {
    # category: (measurement, English reason, zh_CN reason)
    "network": ({"latency_ms": 230}, "network operation; connection latency 230 ms", "网络连接超时, 连接延迟: 230ms"),
    "database": ({"data_bytes": 2_100_000_000}, "database operation; data size 2.1 GB",
                 "数据库操作超时, 数据量: 2.1GB"),
    "file": ({"file_bytes": 640_000_000}, "file operation; file size 640 MB", "文件处理超时, 文件大小: 640MB"),
    "service": ({"port": 8080}, "service start; port 8080", "服务启动超时, 端口: 8080"),
    "plugin": ({"plugin": "dr-monitoring"}, "plugin execution: [dr-monitoring]", "插件执行超时: [dr-monitoring]"),
}

SUGGESTIONS: dict[Category, tuple[str, str]] = {
    "network": ("check the network and consider a retry", "检查网络状态，考虑重试"),
    "database": ("check database performance or run the upgrade off-peak", "请检查数据库性能或考虑在低峰期执行升级"),
    "file": ("check disk space and performance", "检查磁盘空间和性能"),
    "service": ("check system resources and dependencies", "检查系统资源和依赖"),
    "plugin": ("check the plugin's log and consider skipping it", "检查插件日志，考虑跳过"),
}


def example_report(**changes: Any) -> TimeoutReport:
    fields: dict[str, Any] = {
        "stage": "upgrade",
        "step": "database schema upgrade (dr-database)",
        "category": "database",
        "measurement": {"data_bytes": 2_100_000_000, "label": "catalog"},
        "configured_s": 1800,
        "elapsed_s": 2100,
        "environment": Environment(85, 78, 92),
        "reason_detail": "index rebuild on large tables",
    }
    fields.update(changes)
    return TimeoutReport(**fields)


class Recorder:
    """A translator that records every msgid it is asked for and answers in English."""

    def __init__(self) -> None:
        self.msgids: set[str] = set()

    def __call__(self, message: str) -> str:
        self.msgids.add(message)
        return message


def exercise_every_formatter(t: Any) -> None:
    for stage in ("precheck", "backup", "transfer", "upgrade", "postcheck", "rollback", "custom"):
        for category, (measurement, _, _) in MEASUREMENTS.items():
            for detail in (None, "extra"):
                for ctx in (None, "/var/ctx"):
                    format_timeout(example_report(stage=stage, category=category, measurement=measurement,
                                                  reason_detail=detail, context_path=ctx,
                                                  environment=Environment()), t)
    for category in ("database", "file"):
        key = "data_bytes" if category == "database" else "file_bytes"
        for value in (None, 0, 5, 5e3, 5e6, 5e9, 5e12):
            reason_text(example_report(category=category, measurement={key: value, "label": "x"}), t)
            reason_text(example_report(category=category, measurement={key: value}), t)
    for category in CATEGORIES:
        reason_text(example_report(category=category, measurement={}), t)
    for seconds in (0, 45, 60, 95, 1800):
        human_duration(seconds, t)
    for remaining in (None, 30, 720):
        format_progress(45, 9, 20, "tables", remaining, t)
        format_progress(45, 9, 20, "", remaining, t)
    for urgent in (False, True):
        format_warning(urgent, 30, 1770, 1800, t)
        format_warning(urgent, 180, 1620, 1800, t)
    format_resources(78, 65, 85, t)
    format_resources(None, None, None, t)
    for remaining in (None, 30, 720):
        format_elapsed(40, 300, remaining, t)
        format_remaining(remaining, 600, t)
    format_timeout(example_report(controller_environment=Environment(50, 40, 10)), t)
    format_timeout(example_report(cpu_throttled={"percent": 92, "cpu_percent": 20}), t)
    for retries_s, restart_s in ((None, None), (90.0, 600.0)):
        format_eta_extra(2, retries_s, True, restart_s, t)


def test_english_example_is_reproduced_exactly() -> None:
    """A report built from the design's example renders exactly the English example layout."""
    assert format_timeout(example_report(), translator("C")) == ENGLISH_EXAMPLE


def test_context_line_is_last_and_aligned_when_a_path_is_saved() -> None:
    """With a saved context path the message ends with an aligned 'context:' / '现场信息:' line."""
    report = example_report(context_path="/var/lib/drhost/ctx/host1")
    assert format_timeout(report).splitlines()[-1] == "context:     /var/lib/drhost/ctx/host1"
    assert format_timeout(report, ZH).splitlines()[-1] == "现场信息: /var/lib/drhost/ctx/host1"
    assert "context" not in format_timeout(example_report())


def test_chinese_rendering_uses_every_design_label() -> None:
    """The zh_CN message uses the design's header and every label, each at the start of its own line."""
    lines = format_timeout(example_report(context_path="/tmp/ctx"), ZH).splitlines()
    assert lines[0] == "[错误] 升级操作超时"
    labels = ["操作步骤:", "超时原因:", "超时设置:", "实际执行:", "超出时间:", "当前环境:", "建议操作:", "现场信息:"]
    assert [line.split(" ", 1)[0] for line in lines[1:]] == labels
    assert lines[1] == "操作步骤: [升级] database schema upgrade (dr-database)"
    assert lines[3] == "超时设置: 1800秒 (30分钟)"
    assert lines[4] == "实际执行: 2100秒 (35分钟)"
    assert lines[5] == "超出时间: 300秒 (5分钟)"
    assert lines[6] == "当前环境: CPU: 85%, 内存: 78%, 磁盘IO: 92%"
    assert lines[7] == "建议操作: 请检查数据库性能或考虑在低峰期执行升级"


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_reason_carries_its_measurement_and_own_suggestion(category: Category) -> None:
    """Each category's reason states its measurement, and its suggestion is its own, in both languages."""
    measurement, english, chinese = MEASUREMENTS[category]
    report = example_report(category=category, measurement=measurement, reason_detail=None)
    assert reason_text(report) == english
    assert reason_text(report, ZH) == chinese
    assert suggestion(category) == SUGGESTIONS[category][0]
    assert suggestion(category, ZH) == SUGGESTIONS[category][1]
    assert f"suggestion:  {SUGGESTIONS[category][0]}" in format_timeout(report)
    others = {s for c, (s, _) in SUGGESTIONS.items() if c != category}
    assert not any(other in format_timeout(report) for other in others)


def test_missing_measurement_and_environment_read_unknown() -> None:
    """An unmeasured figure or resource is written 'unknown' / '未知', never a made-up number."""
    report = example_report(category="network", measurement={}, environment=Environment(None, 50, None),
                            reason_detail=None)
    assert reason_text(report) == "network operation; connection latency unknown"
    assert "environment: CPU unknown, memory 50%, disk IO unknown" in format_timeout(report)
    assert "当前环境: CPU: 未知, 内存: 50%, 磁盘IO: 未知" in format_timeout(report, ZH)


@pytest.mark.parametrize(("seconds", "english", "chinese"), [
    (1800, "1800 s (30 min)", "1800秒 (30分钟)"),
    (2100, "2100 s (35 min)", "2100秒 (35分钟)"),
    (95, "95 s (1 min 35 s)", "95秒 (1分钟35秒)"),
    (45, "45 s", "45秒"),
    (4.3, "4.3 s", "4.3秒"),
    (59.96, "60 s (1 min)", "60秒 (1分钟)"),
    (0, "0 s", "0秒"),
    (-5, "0 s", "0秒"),
])
def test_human_duration(seconds: float, english: str, chinese: str) -> None:
    """Durations read as seconds plus minutes (and leftover seconds); negatives read as zero."""
    assert human_duration(seconds) == english
    assert human_duration(seconds, ZH) == chinese


def test_sizes_use_decimal_units_with_one_decimal() -> None:
    """Byte counts are shown in SI units with at most one decimal."""
    assert [format_size(n) for n in (512, 1500, 640_000_000, 2_100_000_000)] == ["512 B", "1.5 KB", "640 MB", "2.1 GB"]


def test_progress_lines_in_both_languages() -> None:
    """The progress line gives percent, done/total and the remaining estimate; no estimate, no 'left' part."""
    assert format_progress(45, 9, 20, "tables", 720) == "[progress] 45% (9/20 tables done), about 12 min left"
    assert format_progress(45, 9, 20, "tables", 720, ZH) == "[进度] 45% (9/20 完成), 预计剩余: 12分钟"
    assert format_progress(35, 7, 20, "", None) == "[progress] 35% (7/20 done)"
    assert format_progress(35, 7, 20, "tables", None, ZH) == "[进度] 35% (7/20 完成)"


def test_warning_and_urgent_lines_in_both_languages() -> None:
    """Warnings state the time left and the time used of the timeout; urgent ones say so."""
    assert format_warning(False, 180, 1620, 1800) == \
        "[warning] operation about to time out, 3 min left (27 min of 30 min used)"
    assert format_warning(True, 90, 1710, 1800) == \
        "[urgent] operation about to time out, 1.5 min left (28.5 min of 30 min used)"
    assert format_warning(False, 180, 1620, 1800, ZH) == "[警告] 操作即将超时, 剩余3分钟 (已用时: 27分钟/30分钟)"
    assert format_warning(True, 90, 1710, 1800, ZH) == "[紧急] 操作即将超时, 剩余1.5分钟 (已用时: 28.5分钟/30分钟)"


def test_resource_lines_in_both_languages() -> None:
    """The status line lists CPU, memory and disk IO usage."""
    assert format_resources(78, 65, 85) == "[status] CPU 78%, memory 65%, disk IO 85%"
    assert format_resources(78, 65, 85, ZH) == "[状态] CPU: 78%, 内存: 65%, 磁盘IO: 85%"


@pytest.mark.parametrize(("env", "expected"), [
    ({"LANG": "zh_CN.UTF-8"}, "zh_CN"),
    ({"LC_ALL": "zh_CN.utf8", "LANG": "en_US.UTF-8"}, "zh_CN"),
    ({"LC_ALL": "en_US.UTF-8", "LANG": "zh_CN.UTF-8"}, None),
    ({"LC_MESSAGES": "zh_CN", "LANG": "C"}, "zh_CN"),
    ({"LC_ALL": "", "LANG": "zh_CN.UTF-8"}, "zh_CN"),
    ({"LANG": "de_DE.UTF-8"}, None),
    ({"LANG": "zh_TW.UTF-8"}, None),
    ({}, None),
])
def test_locale_is_selected_from_the_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                 expected: str | None) -> None:
    """Without an argument the language comes from LC_ALL, then LC_MESSAGES, then LANG; non-zh_CN is English."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert resolve_language() == expected
    header = "[错误] 升级操作超时" if expected else "[error] upgrade operation timed out"
    assert format_timeout(example_report(), translator()).splitlines()[0] == header


def test_explicit_language_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit language argument wins over the environment's locale."""
    monkeypatch.setenv("LC_ALL", "zh_CN.UTF-8")
    assert translator("en_US")("step:") == "step:"
    monkeypatch.setenv("LC_ALL", "C")
    assert translator("zh-CN")("step:") == "操作步骤:"


def test_translations_follow_the_gettext_api() -> None:
    """The zh_CN catalog is a gettext NullTranslations; unknown msgids fall back to English."""
    t = translations("zh_CN")
    assert isinstance(t, gettext.NullTranslations)
    assert isinstance(t, JsonTranslations)
    assert t.gettext("reason:") == "超时原因:"
    assert t.gettext("no such msgid") == "no such msgid"
    assert type(translations("en")) is gettext.NullTranslations


def test_every_msgid_used_has_a_zh_cn_translation() -> None:
    """Every msgid any formatter passes to the translator has a zh_CN entry with the same placeholders."""
    recorder = Recorder()
    exercise_every_formatter(recorder)
    zh = catalog("zh_CN")
    assert len(recorder.msgids) > 30
    missing = sorted(recorder.msgids - zh.keys())
    assert not missing, f"msgids without a zh_CN translation: {missing}"
    placeholders = re.compile(r"\{(\w+)\}")
    for msgid in recorder.msgids:
        # zh_CN may drop a placeholder (the progress unit) but never invent one.
        assert set(placeholders.findall(zh[msgid])) <= set(placeholders.findall(msgid)), msgid


def test_catalog_holds_every_watchdog_msgid_and_is_json_of_strings() -> None:
    """The shipped catalog (shared by every operator-facing part; tests/test_message_catalogue.py checks it
    for stale entries) holds every msgid the watchdog's formatters use, and is valid JSON of strings."""
    recorder = Recorder()
    exercise_every_formatter(recorder)
    text = resources.files("drhost.i18n").joinpath("locale").joinpath("zh_CN.json").read_text(encoding="utf-8")
    shipped = json.loads(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in shipped.items())
    assert recorder.msgids <= set(shipped)


@pytest.mark.parametrize(("configured", "elapsed", "exceeded"), [(1800, 2100, 300), (60, 95.5, 35.5), (1800, 1700, 0)])
def test_exceeded_is_elapsed_minus_configured_never_negative(configured: float, elapsed: float,
                                                             exceeded: float) -> None:
    """Exceeded time is elapsed minus configured, clamped at zero in the fields and the text."""
    report = example_report(configured_s=configured, elapsed_s=elapsed)
    assert report.exceeded_s == exceeded
    assert as_event_fields(report)["exceeded_s"] == exceeded
    line = next(x for x in format_timeout(report).splitlines() if x.startswith("exceeded by:"))
    assert "-" not in line
    assert line == f"exceeded by: {human_duration(exceeded)}"


def test_event_fields_are_structured_and_english() -> None:
    """The watchdog.timeout event fields carry numbers as numbers and English reason and suggestion."""
    fields = as_event_fields(example_report(context_path="/tmp/ctx", environment=Environment(85, None, 92)))
    assert fields == {
        "category": "database",
        "reason": "database operation; catalog 2.1 GB, index rebuild on large tables",
        "configured_s": 1800,
        "elapsed_s": 2100,
        "exceeded_s": 300,
        "environment": {"cpu_percent": 85, "memory_percent": None, "disk_io_percent": 92},
        "suggestion": "check database performance or run the upgrade off-peak",
        "context_path": "/tmp/ctx",
        "controller_environment": None,
    }
    json.dumps(fields)


def test_report_is_frozen() -> None:
    """A timeout report cannot be changed after it is built."""
    report = example_report()
    with pytest.raises(AttributeError):
        report.elapsed_s = 1  # type: ignore[misc]


def test_time_based_progress_and_remaining_lines_in_both_languages() -> None:
    """A step without progress reports shows time used of its budget and the ETA; zh_CN uses the design's 预计剩余."""
    assert format_elapsed(40, 300, 90) == "[progress] running for 40 s of 5 min, about 1.5 min left"
    assert format_elapsed(40, 300, None) == "[progress] running for 40 s of 5 min"
    assert format_remaining(900, 1200) == "remaining: about 15 min (timeout in 20 min)"
    assert format_remaining(None, 30).startswith("remaining: unknown")
    assert format_remaining(900, 1200, ZH) == "预计剩余: 15分钟 (距超时: 20分钟)"
    assert format_elapsed(40, 300, 90, ZH) == "[进度] 已运行40秒/5分钟, 预计剩余: 1.5分钟"


def test_controller_row_only_when_the_controller_was_measured() -> None:
    """The controller's usage gets its own row (plugin timeouts), and none when it was not measured."""
    with_controller = format_timeout(example_report(controller_environment=Environment(50, 40, 10)))
    assert "controller:  CPU 50%, memory 40%, disk IO 10%" in with_controller.splitlines()
    assert "controller:" not in format_timeout(example_report())
    assert "控制端环境:" in format_timeout(example_report(controller_environment=Environment(50, 40, 10)), ZH)
