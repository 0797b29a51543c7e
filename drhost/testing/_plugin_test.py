"""``drhost plugin-test``: is this plugin safe to upgrade with? Every check, in order, on a disposable target."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError, RefusedError, phrase
from ..plugins import PluginRecord, Registry, discover
from ._checks import (
    CHECKS,
    CheckResult,
    PluginTestReport,
    classify_load_error,
    failed,
    passed,
    skipped,
    static_checks,
)
from ._drive import Driver
from ._install import InstallFailed, Subject, SubjectError, missing_requirements, resolve
from ._session import PluginSession, session_config, session_plan
from ._target import DisposableTarget

#: Checks that need the plugin to run; reported skipped when it never gets that far.
_DYNAMIC = ("companions", "runs", "within_limits", "idempotent", "timeout_behaviour", "verify_completed",
            "cleanup_no_residue", "rollback_restores", "verify_rolled_back", "declares_effects")
_PIP_TAIL = 1500


@contextlib.contextmanager
def _private_state(workdir: Path) -> Iterator[None]:
    """Runs, history and packages of the test live in ``workdir``, never in the operator's state directory.

    ``sys.path`` and ``PYTHONPATH`` are put back too: an installed source tree must not leak into the caller.
    """
    saved_env = {key: os.environ.get(key) for key in ("DRHOST_STATE_DIR", "PYTHONPATH")}
    saved_path = list(sys.path)
    os.environ["DRHOST_STATE_DIR"] = str(workdir / "state")
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.path[:] = saved_path


class _Collector:
    def __init__(self, on_result: Callable[[CheckResult], None] | None) -> None:
        self.results: list[CheckResult] = []
        self._on_result = on_result

    def __call__(self, result: CheckResult) -> None:
        self.results.append(result)
        if self._on_result is not None:
            self._on_result(result)

    def skip_rest(self, subject: str, why: str, checks: Sequence[str]) -> None:
        done = {r.check for r in self.results}
        for check in checks:
            if check not in done:
                self(skipped(check, subject, why))

    @property
    def ok(self) -> bool:
        return not any(r.status == "fail" for r in self.results)


def _companions(registry: Registry, record: PluginRecord, alone: bool,
                report: _Collector) -> tuple[list[PluginRecord], list[str]]:
    others = [r for r in registry.records.values() if r.name != record.name]
    if alone:
        return [], []
    chosen = [r for r in others if r.usable]
    for broken in (r for r in others if r.status == "broken"):
        report(skipped("companions", broken.name, f"left out: the installed plugin {broken.name} is broken "
                                                  f"({broken.error})"))
    return chosen, [r.name for r in chosen]


def plugin_test(argument: str, *, plugin: str | None = None, alone: bool = False, blocked: Sequence[str] = (),
                config_files: Sequence[Path] = (), overrides: Sequence[str] = (), keep: bool = False,
                on_result: Callable[[CheckResult], None] | None = None) -> PluginTestReport:
    """Test the plugin in ``argument`` (a source tree, a wheel, or an installed distribution or plugin name)."""
    workdir = Path(tempfile.mkdtemp(prefix="drhost-plugin-test-"))
    report = _Collector(on_result)
    subject: Subject | None = None
    record: PluginRecord | None = None
    isolation: str | None = None
    companion_names: list[str] = []
    try:
        with _private_state(workdir):
            try:
                subject = resolve(argument, workdir / "site", plugin=plugin)
            except InstallFailed as exc:
                report(failed("install", argument, exc.output[-_PIP_TAIL:],
                              f"run `python -m pip install {exc.source}` to see the whole error and fix the project "
                              f"(pyproject.toml, the src layout)"))
                report.skip_rest(argument, "not installed", list(CHECKS))
                return _finish(report, argument, None, None, None, [], workdir, keep)
            if subject.site_dir is not None:
                report(passed("install", subject.plugin, f"{subject.distribution} {subject.version} built and "
                                                         f"installed into {subject.site_dir}"))
            else:
                report(skipped("install", subject.plugin, f"testing the installed {subject.distribution} "
                                                          f"{subject.version}"))
            missing = missing_requirements(subject)
            if missing:
                report(failed("requirements", subject.plugin,
                              "not installed: " + ", ".join(r.line for r in missing) +
                              " (drhost and its workers would not find them either)",
                              "install them next to drhost: python -m pip install " +
                              " ".join(f"'{r.line.split(';')[0].strip()}'" for r in missing)))
            else:
                report(passed("requirements", subject.plugin,
                              f"{len(subject.requirements)} declared, all installed: " +
                              ", ".join(f"{r.name} {r.installed}" for r in subject.requirements)))
            registry = discover(blocked, config=load_config(config_files, overrides).data)
            record = registry.records.get(subject.plugin)
            if record is None or record.status in ("blocked", "not_allowed"):
                why = record.error if record else phrase("not discovered")
                raise SubjectError.worded("plugin {plugin} cannot be tested: {why}", plugin=subject.plugin, why=why)
            if record.status == "broken":
                check, fix = classify_load_error(record.error)
                if check != "loads":
                    report(passed("loads", subject.plugin, "the module imports"))
                report(failed(check, subject.plugin, record.error, fix))
                report.skip_rest(subject.plugin, "the plugin could not be loaded", list(CHECKS))
                return _finish(report, subject.plugin, subject, record, None, [], workdir, keep)
            config = load_config(config_files, overrides)
            for result in static_checks(subject, record, config.data):
                report(result)
            companions, companion_names = _companions(registry, record, alone, report)
            isolation = _dynamic(subject, Registry([record, *companions]), config_files, overrides, workdir, report)
            if isolation is not None and not any(r.check == "companions" and r.status == "fail"
                                                 for r in report.results):
                report(passed("companions", subject.plugin,
                              "ran with " + ", ".join(companion_names) if companion_names else "ran alone"))
            report.skip_rest(subject.plugin, "not reached", _DYNAMIC)
            return _finish(report, subject.plugin, subject, record, isolation, companion_names, workdir, keep)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _dynamic(subject: Subject, registry: Registry, config_files: Sequence[Path], overrides: Sequence[str],
             workdir: Path, report: _Collector) -> str | None:
    """Take a disposable target through the stages with the plugin; returns the plugin's isolation."""
    with DisposableTarget(workdir / "target", workdir / "state") as target:
        config = session_config(target, config_files, overrides)
        try:
            plan = session_plan(config, registry)
        except (RefusedError, ConfigError) as exc:
            report(failed("runs", subject.plugin, f"a run would refuse to start: {exc}",
                          "fix what the message names (for a container plugin: podman with a working runtime)"))
            return None
        with PluginSession(target, config, plan) as session:
            Driver(session, subject.plugin, report).run()
        return plan.plugin(subject.plugin).isolation


def _finish(report: _Collector, name: str, subject: Subject | None, record: PluginRecord | None,
            isolation: str | None, companions: list[str], workdir: Path, keep: bool) -> PluginTestReport:
    kept: str | None = str(workdir) if keep or not report.ok else None
    if kept is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return PluginTestReport(
        plugin=name, distribution=subject.distribution if subject else "?",
        version=subject.version if subject else "?",
        plugin_class=record.plugin_class.value if record and record.plugin_class else None,
        isolation=isolation, companions=tuple(companions), checks=tuple(report.results), kept=kept)


__all__ = ["plugin_test"]
