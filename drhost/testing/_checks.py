"""What ``drhost plugin-test`` checks, how a result reads, and the checks that need no target."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from drhost_hookspecs import HOOK_API_VERSION, PluginClass

from ..config import schema as config_schema
from ..plugins import PluginRecord
from ._install import Subject

#: Every check, in the order a report lists them, with the rule it holds the plugin to.
#: docs/plugin-authoring.md explains each; tests/test_plugin_test_docs.py keeps the two in step.
CHECKS: dict[str, str] = {
    "install": "the source tree builds and installs with pip",
    "requirements": "every dependency the distribution declares is installed next to drhost",
    "loads": "the plugin imports and registers in a discovery worker, exactly as drhost loads it",
    "hooks_match_specs": "every @hookimpl names a drhost hook and matches its signature",
    "metadata": "drhost_plugin_info names the entry point, a department, a class and this hook API version; "
                "the distribution requires drhost-hookspecs",
    "config_schema": "the config schema is valid JSON Schema (2020-12) and accepts the settings of this test",
    "steps_declared": "every step declares retryable, a timeout and a category, with a timeout key an operator "
                      "can set, and a description",
    "compensations": "every non-retryable step has a cleanup and a rollback",
    "companions": "the other installed plugins take the disposable target through the stages with this one",
    "runs": "each step succeeds on a fresh drproduct target, in the plugin's own isolation",
    "within_limits": "each step stays within its class's memory limit and its timeout",
    "idempotent": "a retryable step run a second time leaves the target exactly as one run did",
    "timeout_behaviour": "a step cut short by its deadline stops, and the target recovers: a retry (retryable) "
                         "or the stage's cleanup and a restart (non-retryable) reach the same state",
    "verify_completed": "drhost_verify reports no problem after the stage completed",
    "cleanup_no_residue": "the stage's cleanup undoes everything the plugin's steps with a cleanup changed, "
                          "and the stage then runs again",
    "rollback_restores": "the stage's rollback restores everything the plugin's steps changed",
    "verify_rolled_back": "drhost_verify reports no problem after the stage was rolled back",
    "declares_effects": "the Context refused none of the plugin's calls: every path outside the product root it "
                        "touches is in PluginInfo.paths and, for a third_party plugin, every command it runs is in "
                        "PluginInfo.commands",
}

STATUSES = ("pass", "fail", "skip")

#: A timeout key the operator can set in [timeouts] (the config schema's own pattern).
TIMEOUT_KEY = re.compile(config_schema()["properties"]["timeouts"]["propertyNames"]["pattern"])


@dataclass(frozen=True)
class CheckResult:
    """One check on one subject: the plugin, a stage, or a step (``stage/step``)."""

    check: str
    status: str
    subject: str
    reason: str
    fix: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f"unknown check {self.check!r}")
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "subject": self.subject, "reason": self.reason,
                "fix": self.fix or None, "detail": dict(self.detail)}


def passed(check: str, subject: str, reason: str, **detail: Any) -> CheckResult:
    return CheckResult(check, "pass", subject, reason, detail=detail)


def failed(check: str, subject: str, reason: str, fix: str, **detail: Any) -> CheckResult:
    return CheckResult(check, "fail", subject, reason, fix, detail=detail)


def skipped(check: str, subject: str, reason: str) -> CheckResult:
    return CheckResult(check, "skip", subject, reason)


@dataclass(frozen=True)
class PluginTestReport:
    """Everything ``drhost plugin-test`` found about one plugin."""

    plugin: str
    distribution: str
    version: str
    plugin_class: str | None
    isolation: str | None
    companions: tuple[str, ...]
    checks: tuple[CheckResult, ...]
    #: Where the target, the run's state and reports were kept (on failure or ``--keep``), else None.
    kept: str | None = None

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for c in self.checks if c.status == status) for status in STATUSES}

    def to_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "distribution": self.distribution, "version": self.version,
                "class": self.plugin_class, "isolation": self.isolation, "companions": list(self.companions),
                "ok": self.ok, "counts": self.counts(), "kept": self.kept,
                "checks": [c.to_json() for c in self.checks]}


# -- load errors: which rule a plugin that cannot be described broke ------------------------------
_LOAD_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"unknown hook '?(\w+)'?"), "hooks_match_specs",
     "rename the function to a hook of docs/plugin-hooks.md (drhost_stage_steps, drhost_verify, ...) or remove "
     "its @hookimpl marker"),
    (re.compile(r"hookimpl definition|can not be found in the hookspec|Argument\(s\)"), "hooks_match_specs",
     "give the hookimpl the hookspec's argument names (a subset of them, in any order); see docs/plugin-hooks.md"),
    (re.compile(r"Step\.__init__\(\) missing|timeout_s must be|'<=' not supported|step name"), "steps_declared",
     "construct every Step with name, run, retryable=..., timeout_s=... (seconds, > 0) and category=..."),
    (re.compile(r"is not a valid Category|Category\("), "steps_declared",
     "category must be one of network, database, file, service, plugin"),
    (re.compile(r"hook API|api_version|drhost_plugin_info|entry point is"), "metadata",
     f"return PluginInfo(name=<the entry point's name>, department=..., plugin_class=..., "
     f"api_version={HOOK_API_VERSION}) from drhost_plugin_info"),
)


def classify_load_error(message: str) -> tuple[str, str]:
    """(check, fix) for the error of a plugin that could not be described."""
    for pattern, check, fix in _LOAD_RULES:
        if pattern.search(message):
            return check, fix
    if "ModuleNotFoundError" in message or "ImportError" in message:
        return "loads", ("the module (or one it imports) is missing: fix the import, or declare the dependency in "
                         "pyproject.toml and install it next to drhost")
    return "loads", "run `python -c 'import <your module>'` to see the error, and fix it"


def static_checks(subject: Subject, record: PluginRecord, config: Mapping[str, Any]) -> list[CheckResult]:
    """The checks that read the plugin's declaration only."""
    name = subject.plugin
    results = [passed("loads", name, f"described by a discovery worker in {record.distribution} {record.version}",
                      hooks=list(record.hooks)),
               passed("hooks_match_specs", name, f"{len(record.hooks)} hooks, each a drhost hook: "
                                                  f"{', '.join(record.hooks)}")]
    results.append(_metadata(subject, record))
    results.append(_config_schema(name, record, config))
    results.extend(_steps_declared(name, record))
    return results


def _metadata(subject: Subject, record: PluginRecord) -> CheckResult:
    name = subject.plugin
    problems = []
    if not record.department:
        problems.append("PluginInfo.department is empty")
    if record.plugin_class not in tuple(PluginClass):
        problems.append(f"class {record.plugin_class!r} is not one of {', '.join(c.value for c in PluginClass)}")
    if record.api_version != HOOK_API_VERSION:
        problems.append(f"hook API {record.api_version}, this drhost serves {HOOK_API_VERSION}")
    if not subject.requires_hookspecs:
        problems.append(f"distribution {subject.distribution} does not declare its dependency on drhost-hookspecs")
    if problems:
        return failed("metadata", name, "; ".join(problems),
                      "fill PluginInfo(name, department, plugin_class, api_version) and add \"drhost-hookspecs\" "
                      "to [project] dependencies")
    assert record.plugin_class is not None
    return passed("metadata", name, f"{name}: department {record.department}, class {record.plugin_class.value}, "
                                    f"hook API {record.api_version}")


def _config_schema(name: str, record: PluginRecord, config: Mapping[str, Any]) -> CheckResult:
    schema = record.config_schema
    if schema is None:
        return passed("config_schema", name, "no settings (drhost_config_schema not implemented)")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return failed("config_schema", name, f"not a valid JSON Schema: {exc.message}",
                      "return a JSON Schema (draft 2020-12) object from drhost_config_schema")
    settings = dict((config.get("plugins") or {}).get(name, {}))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(settings), key=lambda e: list(e.path))
    if errors:
        return failed("config_schema", name, f"the settings of this test {settings} are refused: {errors[0].message}",
                      "give required settings defaults, or pass them with --set plugin." + name + ".KEY=VALUE")
    if schema.get("additionalProperties", True) is not False:
        return passed("config_schema", name, "valid; note: unknown keys are accepted (a typo in an operator's "
                                             "setting will go unnoticed; set additionalProperties to false)")
    return passed("config_schema", name, f"valid, {len(schema.get('properties', {}))} settings, unknown keys refused")


def _steps_declared(name: str, record: PluginRecord) -> list[CheckResult]:
    problems: list[str] = []
    missing_compensation: list[str] = []
    count = 0
    for stage, steps in record.steps.items():
        for step in steps:
            count += 1
            where = f"{stage.value}/{step.name}"
            if not TIMEOUT_KEY.match(step.timeout_key):
                problems.append(f"{where}: timeout key {step.timeout_key!r} cannot be set in [timeouts] "
                                f"(expected STAGE.NAME with the step's stage)")
            elif not step.timeout_key.startswith(stage.value + "."):
                problems.append(f"{where}: timeout key {step.timeout_key!r} names another stage")
            if not step.description:
                problems.append(f"{where}: no description (the plan and the timeout report show it)")
            if not step.retryable and not (step.has_cleanup and step.has_rollback):
                lacking = [kind for kind, has in (("cleanup", step.has_cleanup), ("rollback", step.has_rollback))
                           if not has]
                missing_compensation.append(f"{where} is not retryable and has no {' and no '.join(lacking)}")
    results = []
    if problems:
        results.append(failed("steps_declared", name, "; ".join(problems),
                              "leave timeout_key empty (it becomes STAGE.NAME) or set it to STAGE.SOMETHING; "
                              "give every Step a description"))
    else:
        results.append(passed("steps_declared", name, f"{count} steps, each with retryable, timeout, category, "
                                                       f"an operator-settable timeout key and a description"))
    if missing_compensation:
        results.append(failed("compensations", name, "; ".join(missing_compensation),
                              "give the step cleanup= (undo a partial run) and rollback= (undo a run), or make it "
                              "idempotent and declare retryable=True"))
    else:
        non_retryable = sum(1 for steps in record.steps.values() for s in steps if not s.retryable)
        results.append(passed("compensations", name, f"{non_retryable} non-retryable steps, each with a cleanup "
                                                     f"and a rollback"))
    return results


__all__ = ["CHECKS", "CheckResult", "PluginTestReport", "classify_load_error", "failed", "passed", "skipped",
           "static_checks"]
