"""``drhost plugin-test`` fails a bad plugin for the right reason, names it, and says how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_factory import make_source_tree
from plugin_test_helpers import failures, only_failed, plugin_test, results

pytestmark = [pytest.mark.slow]


def _info(name: str, plugin_class: str = "business", extra: str = "") -> str:
    return f"""
import time

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name={name!r}, department="test", plugin_class=PluginClass({plugin_class!r}){extra})

def _path(ctx, relative):
    return ctx.target.install_root + "/" + relative
"""


def _steps(*registrations: str) -> str:
    body = "\n".join(f"        register({r})" for r in registrations) or "        pass"
    return f"""
@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
{body}
"""


def _test(tmp_path: Path, name: str, source: str, *args: str, **tree: object) -> tuple[int, dict[str, object]]:
    make_source_tree(tmp_path / name, name, source, **tree)  # type: ignore[arg-type]
    return plugin_test(tmp_path / name, "--alone", *args, tmp=tmp_path / "work")


def test_retryable_step_that_is_not_idempotent_fails_idempotence(tmp_path: Path) -> None:
    """A retryable step whose second run changes the target fails `idempotent`, naming what changed."""
    source = _info("bad-counter") + """
def count(ctx):
    path = _path(ctx, "data/counter.txt")
    text = ctx.read_text(path) if ctx.exists(path) else ""
    ctx.write_text(path, text + "one more run\\n")

def uncount(ctx):
    ctx.remove(_path(ctx, "data/counter.txt"))
""" + _steps('Step("count_runs", count, retryable=True, timeout_s=30, category=Category.FILE, order=99, '
             'description="append a line", rollback=uncount)')
    code, report = _test(tmp_path, "bad-counter", source)
    assert code == 1
    assert "idempotent" in failures(report)
    assert set(failures(report)) <= {"idempotent", "timeout_behaviour"}
    (reason,) = failures(report)["idempotent"]
    assert "file data/counter.txt" in reason and "a second run changed the target" in reason
    assert results(report, "runs", "pass"), "its first run is fine"
    assert results(report, "rollback_restores", "pass"), "its rollback does restore"


def test_rollback_that_does_not_restore_fails_rollback_restores(tmp_path: Path) -> None:
    """A rollback that leaves the step's file behind fails `rollback_restores`, naming the file."""
    source = _info("bad-rollback") + """
def write(ctx):
    ctx.write_text(_path(ctx, "etc/acme.conf"), "level = 2\\n")

def remove(ctx):
    ctx.remove(_path(ctx, "etc/acme.conf"))

def forget(ctx):
    ctx.log("nothing to roll back, or so it thinks")
""" + _steps('Step("write_conf", write, retryable=False, timeout_s=30, category=Category.FILE, order=99, '
             'description="write etc/acme.conf", cleanup=remove, rollback=forget)')
    code, report = _test(tmp_path, "bad-rollback", source)
    assert code == 1
    only_failed(report, ["rollback_restores"])
    (reason,) = failures(report)["rollback_restores"]
    assert "left behind file etc/acme.conf" in reason
    assert results(report, "cleanup_no_residue", "pass"), "its cleanup is right"


def test_cleanup_that_leaves_a_directory_fails_cleanup_no_residue(tmp_path: Path) -> None:
    """A cleanup that removes the file but not the directory the step made fails `cleanup_no_residue`."""
    source = _info("bad-residue") + """
def write(ctx):
    ctx.write_text(_path(ctx, "etc/acme/acme.conf"), "level = 2\\n")

def remove_file(ctx):
    ctx.remove(_path(ctx, "etc/acme/acme.conf"))

def remove_all(ctx):
    ctx.remove(_path(ctx, "etc/acme"), recursive=True)
""" + _steps('Step("write_conf", write, retryable=False, timeout_s=30, category=Category.FILE, order=99, '
             'description="write etc/acme/acme.conf", cleanup=remove_file, rollback=remove_all)')
    code, report = _test(tmp_path, "bad-residue", source)
    assert code == 1
    only_failed(report, ["cleanup_no_residue"])
    assert "left behind dir etc/acme" in failures(report)["cleanup_no_residue"][0]
    assert results(report, "rollback_restores", "pass")


def test_step_without_timeout_fails_steps_declared(tmp_path: Path) -> None:
    """A Step constructed without timeout_s makes the plugin unloadable, reported as `steps_declared`."""
    source = _info("bad-no-timeout") + """
def work(ctx):
    pass
""" + _steps('Step("work", work, retryable=True, category=Category.FILE, description="no timeout")')
    code, report = _test(tmp_path, "bad-no-timeout", source)
    assert code == 1
    only_failed(report, ["steps_declared"])
    assert "timeout_s" in failures(report)["steps_declared"][0]
    assert results(report, "loads", "pass"), "the module itself imports"
    assert results(report, "runs", "skip")


def test_hookimpl_without_hookspec_fails_hooks_match_specs(tmp_path: Path) -> None:
    """A misspelt hook (drhost_stage_step) fails `hooks_match_specs` and names the hook."""
    source = _info("bad-hook-name") + """
def work(ctx):
    pass

@hookimpl
def drhost_stage_step(stage, register):
    register(Step("work", work, retryable=True, timeout_s=5, category=Category.FILE))
"""
    code, report = _test(tmp_path, "bad-hook-name", source)
    assert code == 1
    only_failed(report, ["hooks_match_specs"])
    reason = failures(report)["hooks_match_specs"][0]
    assert "drhost_stage_step" in reason and "unknown hook" in reason


def test_import_error_fails_loads_with_the_missing_module(tmp_path: Path) -> None:
    """A plugin whose import fails is reported under `loads` with the missing module's name."""
    source = "import acme_module_that_is_not_there\n" + _info("bad-import")
    code, report = _test(tmp_path, "bad-import", source)
    assert code == 1
    only_failed(report, ["loads"])
    assert "acme_module_that_is_not_there" in failures(report)["loads"][0]
    assert all(c["status"] == "skip" for c in report["checks"] if c["check"] in ("runs", "idempotent"))


def test_step_over_its_memory_limit_fails_within_limits(tmp_path: Path) -> None:
    """A business step that takes 600 MiB (class limit 256 MiB) is stopped and fails `within_limits`."""
    source = _info("bad-memory") + """
def hog(ctx):
    blob = b"x" * (600 * 1024 * 1024)
    ctx.log(f"holding {len(blob)} bytes")
""" + _steps('Step("hog_memory", hog, retryable=True, timeout_s=60, category=Category.PLUGIN, order=99, '
             'description="allocate 600 MiB")')
    code, report = _test(tmp_path, "bad-memory", source)
    assert code == 1
    only_failed(report, ["runs", "within_limits"])
    limits = results(report, "within_limits", "fail")[0]
    assert "256 MiB" in limits["fix"] and "memory" in limits["reason"]
    assert report["isolation"] == "process"


def test_step_that_ignores_its_deadline_fails_within_limits(tmp_path: Path) -> None:
    """A core step that loops past its 2 s timeout without looking at ctx fails `runs` and `within_limits`."""
    source = _info("bad-hang", "core") + """
def spin(ctx):
    end = time.monotonic() + 8
    while time.monotonic() < end:
        time.sleep(0.1)
""" + _steps('Step("spin", spin, retryable=True, timeout_s=2, category=Category.PLUGIN, order=99, '
             'description="ignore the deadline")')
    code, report = _test(tmp_path, "bad-hang", source)
    assert code == 1
    only_failed(report, ["runs", "within_limits"])
    assert "timeout" in failures(report)["runs"][0]
    assert "longer than its timeout of 2 s" in failures(report)["within_limits"][0]


def test_undeclared_dependency_fails_requirements(tmp_path: Path) -> None:
    """A declared dependency that is not installed fails `requirements` with the pip command to fix it."""
    source = _info("bad-deps") + _steps()
    code, report = _test(tmp_path, "bad-deps", source,
                         requires=("drhost-hookspecs", "acme-lib-nobody-installed>=1"))
    assert code == 1
    only_failed(report, ["requirements"])
    requirement = results(report, "requirements", "fail")[0]
    assert "acme-lib-nobody-installed>=1" in requirement["reason"]
    assert "pip install 'acme-lib-nobody-installed>=1'" in requirement["fix"]


def test_wrong_hook_api_version_fails_metadata(tmp_path: Path) -> None:
    """A plugin written for another hook API version fails `metadata`, naming both versions."""
    source = _info("bad-api", extra=", api_version=2") + _steps()
    code, report = _test(tmp_path, "bad-api", source)
    assert code == 1
    only_failed(report, ["metadata"])
    assert "hook API 2" in failures(report)["metadata"][0]


@pytest.mark.parametrize("subject", ["does/not/exist", "no-such-plugin-or-distribution"])
def test_unknown_subject_is_a_usage_error(tmp_path: Path, subject: str) -> None:
    """A path that does not exist or a name nothing provides exits 2 with one line, no traceback."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "drhost", "plugin-test", subject], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert subject in proc.stderr


def test_directory_that_is_not_a_project_is_a_usage_error(tmp_path: Path) -> None:
    """A directory without pyproject.toml or setup.py exits 2 and says what was expected."""
    import subprocess
    import sys

    (tmp_path / "notes").mkdir()
    proc = subprocess.run([sys.executable, "-m", "drhost", "plugin-test", str(tmp_path / "notes")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not a Python project" in proc.stderr and "Traceback" not in proc.stderr
