"""The rules behind plugin-test's verdicts that need no target: load errors, declarations, results."""

from __future__ import annotations

import pytest

from drhost.plugins import PluginRecord
from drhost.testing import CHECKS, CheckResult, PluginTestReport
from drhost.testing._checks import TIMEOUT_KEY, classify_load_error, static_checks
from drhost.testing._install import Requirement, Subject
from drhost_hookspecs import Category, PluginClass, Stage, StepDescription


@pytest.mark.parametrize(("message", "check"), [
    ("PluginDefinitionError: plugin 'x', register: unknown hook 'drhost_stage_step' in plugin <module 'x'>",
     "hooks_match_specs"),
    ("Plugin 'x' for hook 'drhost_verify'\nhookimpl definition: drhost_verify(stage, bogus)\nArgument(s) {'bogus'} "
     "are declared in the hookimpl but can not be found in the hookspec", "hooks_match_specs"),
    ("TypeError: Step.__init__() missing 1 required positional argument: 'timeout_s'", "steps_declared"),
    ("ValueError: step 'x': timeout_s must be > 0, got 0", "steps_declared"),
    ("ValueError: 'slow' is not a valid Category", "steps_declared"),
    ("PluginDefinitionError: plugin 'x', drhost_plugin_info: written for hook API 2, this drhost serves 1",
     "metadata"),
    ("worker could not start: ModuleNotFoundError: No module named 'acme'", "loads"),
    ("worker died: killed by signal 9", "loads"),
])
def test_load_error_is_attributed_to_the_rule_it_breaks(message: str, check: str) -> None:
    """A plugin that cannot be described fails the check its error belongs to, with a fix."""
    found, fix = classify_load_error(message)
    assert found == check
    assert fix


def test_check_result_refuses_unknown_checks_and_statuses() -> None:
    """A result names a known check and one of pass/fail/skip (a typo cannot slip into a report)."""
    with pytest.raises(ValueError, match="unknown check"):
        CheckResult("idempotence", "pass", "x", "")
    with pytest.raises(ValueError, match="unknown status"):
        CheckResult("idempotent", "ok", "x", "")


def test_report_fails_when_any_check_failed() -> None:
    """A report is ok only without a failed check; skipped checks do not fail it."""
    passing = CheckResult("runs", "pass", "upgrade/x", "ok")
    skipping = CheckResult("cleanup_no_residue", "skip", "upgrade", "no cleanup")
    failing = CheckResult("idempotent", "fail", "upgrade/x", "changed", "fix it")
    base = dict(plugin="p", distribution="d", version="1", plugin_class="core", isolation="thread", companions=())
    assert PluginTestReport(**base, checks=(passing, skipping)).ok  # type: ignore[arg-type]
    report = PluginTestReport(**base, checks=(passing, failing))  # type: ignore[arg-type]
    assert not report.ok
    assert report.counts() == {"pass": 1, "fail": 1, "skip": 0}
    assert report.to_json()["checks"][1]["fix"] == "fix it"


@pytest.mark.parametrize(("key", "settable"), [
    ("upgrade.install", True), ("backup.db.full", True), ("install", False), ("upgrade", False),
    ("cleanup.x", False), ("upgrade.bad key", False),
])
def test_timeout_key_follows_the_config_schema(key: str, settable: bool) -> None:
    """A step's timeout key must be one an operator can set in [timeouts] (the config schema's pattern)."""
    assert bool(TIMEOUT_KEY.match(key)) is settable


def _record(steps: dict[Stage, tuple[StepDescription, ...]], *, department: str = "ops",
            schema: dict[str, object] | None = None) -> PluginRecord:
    return PluginRecord(name="acme", value="acme", distribution="drhost-plugin-acme", version="1", status="ok",
                        department=department, plugin_class=PluginClass.BUSINESS, api_version=1,
                        hooks=("drhost_plugin_info", "drhost_stage_steps"), config_schema=schema, steps=steps)


def _step(name: str, *, retryable: bool = True, key: str | None = None, description: str = "does a thing",
          cleanup: bool = False, rollback: bool = False) -> StepDescription:
    return StepDescription(name=name, retryable=retryable, timeout_s=30, category=Category.FILE,
                           timeout_key=key or f"upgrade.{name}", order=50, description=description,
                           has_cleanup=cleanup, has_rollback=rollback)


SUBJECT = Subject("drhost-plugin-acme", "1", "acme", "acme", None,
                  (Requirement("drhost-hookspecs", "drhost-hookspecs", "1.0.0"),))


def _verdicts(record: PluginRecord, subject: Subject = SUBJECT, config: dict[str, object] | None = None,
              ) -> dict[str, CheckResult]:
    return {r.check: r for r in static_checks(subject, record, config or {"plugins": {}})}


def test_declaration_problems_are_named_per_step() -> None:
    """A timeout key of another stage, a missing description and a bare non-retryable step are each named."""
    record = _record({Stage.UPGRADE: (_step("a", key="backup.a"), _step("b", description=""),
                                      _step("c", retryable=False, cleanup=True))})
    verdicts = _verdicts(record)
    declared = verdicts["steps_declared"]
    assert declared.status == "fail"
    assert "upgrade/a: timeout key 'backup.a' names another stage" in declared.reason
    assert "upgrade/b: no description" in declared.reason
    assert verdicts["compensations"].status == "fail"
    assert "upgrade/c is not retryable and has no rollback" in verdicts["compensations"].reason


def test_clean_declaration_passes() -> None:
    """Retryable steps and a non-retryable one with both compensations pass the declaration checks."""
    record = _record({Stage.UPGRADE: (_step("a"), _step("c", retryable=False, cleanup=True, rollback=True))})
    verdicts = _verdicts(record)
    assert {c: v.status for c, v in verdicts.items()} == {
        "loads": "pass", "hooks_match_specs": "pass", "metadata": "pass", "config_schema": "pass",
        "steps_declared": "pass", "compensations": "pass"}


def test_metadata_needs_a_department_and_the_hookspecs_dependency() -> None:
    """No department and no drhost-hookspecs requirement fail `metadata`, both named."""
    subject = Subject("drhost-plugin-acme", "1", "acme", "acme", None, ())
    verdict = _verdicts(_record({}, department=""), subject)["metadata"]
    assert verdict.status == "fail"
    assert "department is empty" in verdict.reason and "drhost-hookspecs" in verdict.reason


def test_config_schema_must_be_valid_and_accept_the_test_settings() -> None:
    """An invalid schema, and a schema refusing the settings the test runs with, fail `config_schema`."""
    invalid = _verdicts(_record({}, schema={"type": "no-such-type"}))["config_schema"]
    assert invalid.status == "fail" and "not a valid JSON Schema" in invalid.reason
    required = {"type": "object", "required": ["endpoint"], "properties": {"endpoint": {"type": "string"}},
                "additionalProperties": False}
    refused = _verdicts(_record({}, schema=required))["config_schema"]
    assert refused.status == "fail" and "'endpoint' is a required property" in refused.reason
    given = _verdicts(_record({}, schema=required), config={"plugins": {"acme": {"endpoint": "x"}}})
    assert given["config_schema"].status == "pass"


def test_every_check_has_a_rule() -> None:
    """Each check states its rule in one sentence (the docs and the report use it)."""
    assert all(rule and not rule.endswith(".") for rule in CHECKS.values())
    assert list(CHECKS)[:2] == ["install", "requirements"]
