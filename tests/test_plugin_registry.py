"""Discovery: every plugin is described in its own worker; a broken one is listed, never fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from drhost.config import load_config
from drhost.errors import RefusedError
from drhost.plan import build_plan
from drhost.plugins import discover
from drhost_hookspecs import Stage
from plugin_factory import make_plugin, simple_plugin
from worker_helpers import make_context, process_runner


def test_import_error_is_listed_as_broken_and_others_stay_ok(site: Path) -> None:
    """A plugin that fails at import is 'broken' with its error; the department plugins are still 'ok'."""
    make_plugin(site, "zz-broken", "raise ImportError('needs libfoo 2.0')\n")
    registry = discover()
    broken = registry.get("zz-broken")
    assert broken.status == "broken" and "needs libfoo 2.0" in broken.error
    assert registry.get("dr-core").status == "ok"


def test_plugin_crashing_at_import_does_not_take_the_host_down(site: Path) -> None:
    """A plugin that kills its own interpreter at import is broken; discovery goes on."""
    make_plugin(site, "zz-suicide", "import os\nos._exit(3)\n")
    registry = discover()
    assert registry.get("zz-suicide").status == "broken"
    assert "exit code 3" in registry.get("zz-suicide").error


def test_hookimpl_without_hookspec_is_broken(site: Path) -> None:
    """A hook implementation that matches no hookspec names the hook in the error."""
    make_plugin(site, "zz-typo", simple_plugin("zz-typo") + "\n@hookimpl\ndef drhost_stage_stepz(stage):\n    pass\n")
    record = discover().get("zz-typo")
    assert record.status == "broken" and "drhost_stage_stepz" in record.error


def test_wrong_api_version_is_broken(site: Path) -> None:
    """A plugin written for another hook API version is refused before use."""
    make_plugin(site, "zz-future", simple_plugin("zz-future").replace(
        'department="test",', 'department="test", api_version=99,'))
    record = discover().get("zz-future")
    assert record.status == "broken" and "hook API 99" in record.error


def test_name_mismatch_is_broken(site: Path) -> None:
    """The name a plugin gives itself must be its entry-point name."""
    make_plugin(site, "zz-alias", simple_plugin("zz-other"))
    record = discover().get("zz-alias")
    assert record.status == "broken" and "must match" in record.error


def test_broken_plugin_needed_by_a_run_refuses_the_plan(site: Path) -> None:
    """A run refuses to start while a plugin it would load is broken, and says how to leave it out."""
    make_plugin(site, "zz-broken", "raise ImportError('nope')\n")
    with pytest.raises(RefusedError) as info:
        build_plan(discover(), load_config().data)
    assert "zz-broken" in str(info.value) and "-p no:NAME" in str(info.value)
    plan = build_plan(discover(blocked=["zz-broken"]), load_config().data)
    assert "zz-broken" not in {p.name for p in plan.plugins}


def test_allow_list_limits_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """DRHOST_LOAD_PLUGINS loads only the named plugins; empty means none."""
    monkeypatch.setenv("DRHOST_LOAD_PLUGINS", "dr-core")
    registry = discover()
    assert [r.name for r in registry.usable()] == ["dr-core"]
    assert registry.get("dr-database").status == "not_allowed"
    monkeypatch.setenv("DRHOST_LOAD_PLUGINS", "")
    assert discover().usable() == []


def test_plugin_prints_go_to_stderr_not_the_protocol(site: Path, tmp_path: Path) -> None:
    """A plugin that prints to stdout in a worker does not corrupt the JSON channel."""
    make_plugin(site, "zz-chatty", simple_plugin("zz-chatty", step_body="print('{not json'); ctx.state['ran'] = 1"))
    runner = process_runner("zz-chatty")
    try:
        outcome = runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=30)
    finally:
        runner.close()
    assert outcome.ok and outcome.state == {"ran": 1}


def test_plan_orders_steps_by_stage_order_plugin_and_name() -> None:
    """Steps are ordered by stage, then declared order, then plugin name, then step name."""
    plan = build_plan(discover(), load_config().data)
    keys = [(Stage.ordered().index(s.stage), s.order, s.plugin, s.name) for s in plan.steps]
    assert keys == sorted(keys)
    upgrade = [s.name for s in plan.stage_steps(Stage.UPGRADE)]
    assert upgrade.index("install_program_files") < upgrade.index("upgrade_db_schema") < upgrade.index(
        "start_services")


def test_configured_timeout_replaces_the_declared_one() -> None:
    """A [timeouts] entry sets the step's timeout; the plan keeps the declared one beside it."""
    plan = build_plan(discover(), load_config(overrides=["timeouts.upgrade.upgrade_db_schema=42"]).data)
    step = next(s for s in plan.steps if s.name == "upgrade_db_schema")
    assert step.timeout_s == 42 and step.declared_timeout_s != 42


def test_isolation_follows_the_class_policy() -> None:
    """Each step's isolation comes from its plugin's class in the config."""
    plan = build_plan(discover(), load_config().data)
    by_plugin = {s.plugin: s.isolation for s in plan.steps}
    assert by_plugin == {"dr-core": "thread", "dr-database": "process", "dr-catalog": "process",
                         "dr-monitoring": "container"}
