"""Timeout, warning, progress and resource messages (design §4.2.2–4.2.4), as pure functions.

Every function takes ``t``, a ``gettext``-style function from :func:`drhost.watchdog.translator`;
every msgid passed to ``t`` is a literal in this module and has an entry in each shipped catalog.
Numbers are formatted here and substituted with :meth:`str.format` after translation, so a
catalog may reorder or drop placeholders (the zh_CN progress line drops the unit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drhost.i18n import Translate
from drhost_hookspecs import Category

__all__ = [
    "CATEGORIES",
    "Environment",
    "TimeoutReport",
    "as_event_fields",
    "exceeded_s",
    "format_elapsed",
    "format_environment",
    "format_eta_extra",
    "format_progress",
    "format_remaining",
    "format_resources",
    "format_size",
    "format_timeout",
    "format_warning",
    "human_duration",
    "reason_text",
    "short_duration",
    "suggestion",
]

#: Every category, in declaration order; the vocabulary itself is the author-facing :class:`Category`.
CATEGORIES: tuple[Category, ...] = tuple(Category)


def _identity(message: str) -> str:
    return message


def _num(value: float) -> str:
    """``12`` for 12.0, ``1.5`` for 1.5: at most one decimal, no trailing ``.0``."""
    text = f"{round(value, 1):.1f}"
    return text[:-2] if text.endswith(".0") else text


# ---------------------------------------------------------------------------- durations, sizes


def human_duration(seconds: float, t: Translate = _identity) -> str:
    """``1800 s (30 min)``, ``95 s (1 min 35 s)``, ``45 s``, ``4.3 s``; zh_CN ``1800秒 (30分钟)``. Negative is 0.

    Under a minute the tenth is kept: a 4 s drill stopped after 4.3 s reads ``exceeded by: 0.3 s``, not 0.
    """
    if seconds < 59.95:
        return t("{s} s").format(s=_num(max(0.0, seconds)))
    total = round(seconds)
    minutes, secs = divmod(total, 60)
    plain = t("{s} s").format(s=total)
    spelled = t("{m} min").format(m=minutes) if secs == 0 else t("{m} min {s} s").format(m=minutes, s=secs)
    return t("{seconds} ({spelled})").format(seconds=plain, spelled=spelled)


def short_duration(seconds: float, t: Translate = _identity) -> str:
    """Minutes with at most one decimal (``12 min``, ``1.5 min``); under a minute, seconds (``30 s``, ``0.3 s``)."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        # Short budgets (drills, tests) need the tenth: "0.3 s left (5.7 s of 6 s used)", not "0 s left".
        return t("{s} s").format(s=_num(seconds))
    if seconds < 60:
        return t("{s} s").format(s=round(seconds))
    return t("{m} min").format(m=_num(seconds / 60))


def format_size(n_bytes: float, t: Translate = _identity) -> str:
    """Decimal (SI) units with at most one decimal: ``2.1 GB``, ``640 MB``, ``512 B``."""
    for unit, scale in (("{n} TB", 1e12), ("{n} GB", 1e9), ("{n} MB", 1e6), ("{n} KB", 1e3)):
        if n_bytes >= scale:
            return t(unit).format(n=_num(n_bytes / scale))
    return t("{n} B").format(n=_num(max(0.0, n_bytes)))


def exceeded_s(configured_s: float, elapsed_s: float) -> float:
    """How far past its timeout an operation ran: ``elapsed - configured``, never negative."""
    return max(0.0, elapsed_s - configured_s)


# ---------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Environment:
    """Resource usage when a message is produced; None means it could not be measured."""

    cpu_percent: float | None = None
    memory_percent: float | None = None
    disk_io_percent: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"cpu_percent": self.cpu_percent, "memory_percent": self.memory_percent,
                "disk_io_percent": self.disk_io_percent}


def _percent(value: float | None, t: Translate) -> str:
    return t("unknown") if value is None else f"{_num(value)}%"


def format_environment(cpu: float | None, mem: float | None, io: float | None, t: Translate = _identity) -> str:
    """``CPU 85%, memory 78%, disk IO 92%``; zh_CN ``CPU: 85%, 内存: 78%, 磁盘IO: 92%``; None → unknown."""
    return t("CPU {cpu}, memory {memory}, disk IO {io}").format(
        cpu=_percent(cpu, t), memory=_percent(mem, t), io=_percent(io, t))


def format_resources(cpu: float | None, mem: float | None, io: float | None, t: Translate = _identity) -> str:
    """The periodic status line: ``[status] CPU 78%, memory 65%, disk IO 85%``."""
    return t("[status] {resources}").format(resources=format_environment(cpu, mem, io, t))


# ---------------------------------------------------------------------------- progress, warnings


def format_progress(percent: float, done: int, total: int, unit: str, remaining_s: float | None,
                    t: Translate = _identity) -> str:
    """``[progress] 45% (9/20 tables done), about 12 min left``; without an estimate, no ``left`` part.

    ``unit`` is the caller's noun (``tables``), shown in English only: zh_CN reads ``(9/20 完成)``.
    """
    values: dict[str, Any] = {"percent": _num(percent), "done": done, "total": total,
                              "unit": f" {unit}" if unit else ""}
    if remaining_s is None:
        return t("[progress] {percent}% ({done}/{total}{unit} done)").format(**values)
    values["remaining"] = short_duration(remaining_s, t)
    return t("[progress] {percent}% ({done}/{total}{unit} done), about {remaining} left").format(**values)


def format_elapsed(elapsed_s: float, configured_s: float, remaining_s: float | None,
                   t: Translate = _identity) -> str:
    """The progress line of a step that reports no progress of its own: time used of its budget, and the ETA.

    ``[progress] running for 40 s of 5 min, about 1.5 min left``.
    """
    values = {"elapsed": short_duration(elapsed_s, t), "configured": short_duration(configured_s, t)}
    if remaining_s is None:
        return t("[progress] running for {elapsed} of {configured}").format(**values)
    return t("[progress] running for {elapsed} of {configured}, about {remaining} left").format(
        remaining=short_duration(remaining_s, t), **values)


def format_eta_extra(retries_left: int, retries_s: float | None, stage_restart: bool, restart_s: float | None,
                     t: Translate = _identity) -> str:
    """What the ETA also foresees, appended to a progress or remaining line; empty when nothing is left.

    ``; with retries up to 3 min more (2 retries), a stage restart up to 1 min more``. A cost that is not
    known (a step never timed) reads ``unknown``: the line says the estimate cannot include it.
    """
    parts = []
    if retries_left > 0:
        cost = t("unknown") if retries_s is None else short_duration(retries_s, t)
        parts.append(t("retries up to {cost} more ({n} retries)").format(cost=cost, n=retries_left))
    if stage_restart:
        cost = t("unknown") if restart_s is None else short_duration(restart_s, t)
        parts.append(t("a stage restart up to {cost} more").format(cost=cost))
    if not parts:
        return ""
    return t("; with {parts}").format(parts=", ".join(parts))


def format_remaining(remaining_s: float | None, budget_left_s: float, t: Translate = _identity) -> str:
    """The remaining-time line: ``remaining: about 15 min (timeout in 20 min)``; unknown without history."""
    budget = short_duration(budget_left_s, t)
    if remaining_s is None:
        return t("remaining: unknown, no history or progress yet (timeout in {budget})").format(budget=budget)
    return t("remaining: about {remaining} (timeout in {budget})").format(
        remaining=short_duration(remaining_s, t), budget=budget)


def format_warning(urgent: bool, remaining_s: float, elapsed_s: float, configured_s: float,
                   t: Translate = _identity) -> str:
    """``[warning] operation about to time out, 3 min left (27 min of 30 min used)``; ``[urgent]`` at 95%."""
    msgid = ("[urgent] operation about to time out, {remaining} left ({elapsed} of {configured} used)" if urgent
             else "[warning] operation about to time out, {remaining} left ({elapsed} of {configured} used)")
    return t(msgid).format(remaining=short_duration(remaining_s, t), elapsed=short_duration(elapsed_s, t),
                           configured=short_duration(configured_s, t))


# ---------------------------------------------------------------------------- the timeout report


@dataclass(frozen=True)
class TimeoutReport:
    """Everything the timeout message says about one step that ran past its timeout.

    ``measurement`` holds the category's figure: network ``latency_ms``, database ``data_bytes``,
    file ``file_bytes``, service ``port``, plugin ``plugin``.  For database and file an optional
    ``label`` renames the figure (``catalog 2.1 GB`` instead of ``data size 2.1 GB``).
    ``reason_detail`` is appended to the reason after a comma.
    """

    stage: str
    step: str
    category: Category
    measurement: Mapping[str, Any]
    configured_s: float
    elapsed_s: float
    environment: Environment = field(default_factory=Environment)
    context_path: str | None = None
    reason_detail: str | None = None
    #: The controller's usage, shown for plugin-execution timeouts (the plugin's code runs there).
    controller_environment: Environment | None = None
    #: How much the class's CPU share throttled the step (cgroup ``cpu.stat`` of its worker): ``percent`` of its
    #: CPU periods throttled, ``cpu_percent`` the class's share; None when it was not throttled or not measured.
    cpu_throttled: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # A report rebuilt from a journal carries the category as its string.
        object.__setattr__(self, "category", Category(self.category))

    @property
    def exceeded_s(self) -> float:
        return exceeded_s(self.configured_s, self.elapsed_s)


def _stage_label(stage: str, t: Translate) -> str:
    # Literal msgids so every one is visible to the catalog-coverage test; unknown stages stay as given.
    labels: dict[str, Callable[[], str]] = {
        "precheck": lambda: t("precheck"),
        "backup": lambda: t("backup"),
        "transfer": lambda: t("transfer"),
        "upgrade": lambda: t("upgrade"),
        "postcheck": lambda: t("postcheck"),
        "rollback": lambda: t("rollback"),
    }
    label = labels.get(stage)
    return label() if label is not None else stage


def reason_text(report: TimeoutReport, t: Translate = _identity) -> str:
    """Why the step timed out, per category, carrying the category's measurement (design §4.2.4)."""
    m = report.measurement
    unknown = t("unknown")
    category = report.category
    if category is Category.NETWORK:
        latency = m.get("latency_ms")
        text = t("network operation; connection latency {latency}").format(
            latency=unknown if latency is None else t("{n} ms").format(n=_num(latency)))
    elif category in (Category.DATABASE, Category.FILE):
        key = "data_bytes" if category is Category.DATABASE else "file_bytes"
        size = unknown if m.get(key) is None else format_size(m[key], t)
        label = m.get("label")
        if label:
            msgid = ("database operation; {label} {size}" if category is Category.DATABASE
                     else "file operation; {label} {size}")
            text = t(msgid).format(label=label, size=size)
        else:
            msgid = ("database operation; data size {size}" if category is Category.DATABASE
                     else "file operation; file size {size}")
            text = t(msgid).format(size=size)
    elif category is Category.SERVICE:
        port = m.get("port")
        text = t("service start; port {port}").format(port=unknown if port is None else port)
    elif category is Category.PLUGIN:
        plugin = m.get("plugin")
        text = t("plugin execution: [{plugin}]").format(plugin=unknown if plugin is None else plugin)
    else:
        raise ValueError(f"unknown timeout category {category!r}")
    if report.reason_detail:
        text = t("{reason}, {detail}").format(reason=text, detail=report.reason_detail)
    throttled = report.cpu_throttled
    if throttled:
        detail = t("throttled {percent}% of the time by cpu_percent = {limit}").format(
            percent=throttled.get("percent"), limit=throttled.get("cpu_percent"))
        text = t("{reason}, {detail}").format(reason=text, detail=detail)
    return text


def suggestion(category: Category, t: Translate = _identity) -> str:
    """What the operator should do about a timeout of ``category`` (design §4.2.4)."""
    if category is Category.NETWORK:
        return t("check the network and consider a retry")
    if category is Category.DATABASE:
        return t("check database performance or run the upgrade off-peak")
    if category is Category.FILE:
        return t("check disk space and performance")
    if category is Category.SERVICE:
        return t("check system resources and dependencies")
    if category is Category.PLUGIN:
        return t("check the plugin's log and consider skipping it")
    raise ValueError(f"unknown timeout category {category!r}")


def format_timeout(report: TimeoutReport, t: Translate = _identity) -> str:
    """The multi-line timeout message (design §4.2.2), labels padded to one column, no trailing newline."""
    env = report.environment
    rows = [
        # An operation outside the stages (a version probe, a lock) has no stage to name.
        (t("step:"), t("[{stage}] {step}").format(stage=_stage_label(report.stage, t), step=report.step)
         if report.stage else report.step),
        (t("reason:"), reason_text(report, t)),
        (t("timeout:"), human_duration(report.configured_s, t)),
        (t("elapsed:"), human_duration(report.elapsed_s, t)),
        (t("exceeded by:"), human_duration(report.exceeded_s, t)),
        (t("environment:"), format_environment(env.cpu_percent, env.memory_percent, env.disk_io_percent, t)),
    ]
    controller = report.controller_environment
    if controller is not None:
        rows.append((t("controller:"), format_environment(controller.cpu_percent, controller.memory_percent,
                                                          controller.disk_io_percent, t)))
    rows.append((t("suggestion:"), suggestion(report.category, t)))
    if report.context_path:
        rows.append((t("context:"), report.context_path))
    width = max(len(label) for label, _ in rows) + 1
    lines = [t("[error] upgrade operation timed out")]
    lines.extend(f"{label.ljust(width)}{value}" for label, value in rows)
    return "\n".join(lines)


def as_event_fields(report: TimeoutReport) -> dict[str, Any]:
    """The structured fields of a ``watchdog.timeout`` event (English text, numbers as numbers)."""
    return {
        "category": report.category.value,
        "reason": reason_text(report),
        "configured_s": report.configured_s,
        "elapsed_s": report.elapsed_s,
        "exceeded_s": report.exceeded_s,
        "environment": report.environment.as_dict(),
        "suggestion": suggestion(report.category),
        "context_path": report.context_path,
        "controller_environment": (None if report.controller_environment is None
                                   else report.controller_environment.as_dict()),
        **({"cpu_throttled": dict(report.cpu_throttled)} if report.cpu_throttled else {}),
    }
