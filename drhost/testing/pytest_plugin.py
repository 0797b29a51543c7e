"""pytest fixtures for plugin authors: the plugin under test, run by drhost's own machinery on a disposable target.

Loaded automatically (entry point ``pytest11``) wherever drhost is installed, so
it stays out of the way: every fixture is named ``drhost_*``, nothing happens at
import or collection time beyond registering the ini options and markers, and
drhost itself is imported only when a test asks for one of the fixtures.

Which plugin is under test: the marker ``@pytest.mark.drhost_plugin("NAME")`` on
the test, else the ini option ``drhost_plugin``, else the only installed plugin
that is not one of drhost's department plugins.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from drhost_hookspecs import Stage, VerifyPhase

    from ..context import HostContext, NotifyMethod
    from ..plan import PlannedStep
    from ..plugins import PluginRecord, Registry
    from ..supervisor import CallOutcome
    from ._fake import FakeContext
    from ._session import PluginSession
    from ._target import DisposableTarget

__all__ = ["DEPARTMENT_PLUGINS", "PluginRunner"]

#: drhost's own plugins: installed next to an author's plugin, they are never the one under test by default.
DEPARTMENT_PLUGINS = ("dr-core", "dr-database", "dr-catalog", "dr-monitoring")

# Spelled out rather than imported from drhost_hookspecs: importing this module must stay cheap for every
# pytest run in an environment that has drhost, also the runs that never use a fixture of it.
_ENTRY_POINT_GROUP = "drhost.plugins"
_PLUGIN_INI = "drhost_plugin"
_COMPANIONS_INI = "drhost_companions"
_HOW_TO_NAME = (f'set {_PLUGIN_INI} = "NAME" under [tool.pytest.ini_options] in pyproject.toml, or mark the test '
                f'@pytest.mark.{_PLUGIN_INI}("NAME")')
_RECORDS = pytest.StashKey["Registry"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(_PLUGIN_INI, "drhost: the plugin under test (its entry-point name in group drhost.plugins)",
                  default="")
    parser.addini(_COMPANIONS_INI, "drhost: plugins planned with the one under test (names, space or comma "
                                   "separated)", type="args", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{_PLUGIN_INI}(name): the drhost plugin under test for this test (before "
                                       f"the {_PLUGIN_INI} ini option)")
    config.addinivalue_line("markers", f"{_COMPANIONS_INI}(*names): drhost plugins planned with the one under "
                                       f"test for this test (instead of the {_COMPANIONS_INI} ini option)")


def _installed_plugins() -> list[str]:
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=_ENTRY_POINT_GROUP)})


def _names(values: list[Any] | tuple[Any, ...]) -> list[str]:
    """Plugin names out of marker arguments or an ini value: strings holding names separated by spaces or commas."""
    found: list[str] = []
    for value in values:
        if not isinstance(value, str):
            pytest.fail(f"drhost: plugin names must be strings, got {value!r}", pytrace=False)
        found.extend(name for name in re.split(r"[\s,]+", value) if name)
    return list(dict.fromkeys(found))


def _marker_name(request: pytest.FixtureRequest) -> str | None:
    marker = request.node.get_closest_marker(_PLUGIN_INI)
    if marker is None:
        return None
    if len(marker.args) != 1 or not isinstance(marker.args[0], str) or not marker.args[0].strip():
        pytest.fail(f'drhost: @pytest.mark.{_PLUGIN_INI} takes one plugin name, as in '
                    f'@pytest.mark.{_PLUGIN_INI}("acme-audit"); got {marker.args!r}', pytrace=False)
    return marker.args[0].strip()


@pytest.fixture
def drhost_plugin_name(request: pytest.FixtureRequest) -> str:
    """The name of the plugin under test (its entry-point name in group ``drhost.plugins``).

    Taken from the test's ``@pytest.mark.drhost_plugin("NAME")``, else the ini option
    ``drhost_plugin`` (``[tool.pytest.ini_options] drhost_plugin = "NAME"``), else the only
    installed plugin that is not one of drhost's department plugins (dr-core, dr-database,
    dr-catalog, dr-monitoring). When none of these gives exactly one name the test errors in
    setup with a message that says what to set. Whether the plugin is installed and loads is
    checked by ``drhost_session``.
    """
    chosen = _marker_name(request) or str(request.config.getini(_PLUGIN_INI) or "").strip()
    if chosen:
        return chosen
    installed = _installed_plugins()
    candidates = [name for name in installed if name not in DEPARTMENT_PLUGINS]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        why = f"several installed plugins could be the one under test ({', '.join(candidates)})"
    else:
        why = (f"none is installed besides drhost's own ({', '.join(installed) or 'none'}); install yours in "
               f"this environment (pip install -e .)")
    pytest.fail(f"drhost: which plugin is under test? {why}. To name it, {_HOW_TO_NAME}", pytrace=False)


def _companion_names(request: pytest.FixtureRequest, subject: str) -> list[str]:
    marker = request.node.get_closest_marker(_COMPANIONS_INI)
    names = _names(marker.args) if marker is not None else _names(list(request.config.getini(_COMPANIONS_INI)))
    return [name for name in names if name != subject]


@pytest.fixture
def drhost_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private drhost state directory (``tmp_path/drhost-state``), set as ``DRHOST_STATE_DIR`` for the test.

    Runs, their history and the demo packages built for the target go there, never into the
    user's state directory. Processes the test starts inherit it.
    """
    path = tmp_path / "drhost-state"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("DRHOST_STATE_DIR", str(path))
    return path


@pytest.fixture
def drhost_fake_context(tmp_path: Path) -> FakeContext:
    """A :class:`drhost.testing.FakeContext` whose install root is ``tmp_path/drhost-fake-target``.

    For unit tests that call a step function directly, with no target install and no run: its
    files and commands are this machine's, and it records the plugin's calls, commands, logs,
    progress and checkpoints. Pass ``config``/``package`` by building your own ``FakeContext``.
    """
    from ._fake import FakeContext

    return FakeContext(tmp_path / "drhost-fake-target")


@pytest.fixture
def drhost_target(tmp_path: Path, drhost_state_dir: Path) -> Iterator[DisposableTarget]:
    """A disposable target: drproduct 1.0.0 installed under ``tmp_path/drhost-target`` with its daemon running.

    A :class:`drhost.testing.DisposableTarget`: ``.root`` is the install root, ``.package``
    the 2.0.0 package a run installs, ``.snapshot()`` its files, catalog, service and
    processes. At teardown the daemon is stopped and every process left in the root ended.
    """
    from ._target import DisposableTarget

    target = DisposableTarget(tmp_path / "drhost-target", drhost_state_dir)
    try:
        yield target
    finally:
        target.close()


def _registry(subject: str, companions: list[str]) -> Registry:
    """The records of ``subject`` and ``companions``, discovered as a run discovers them; failing the test if any
    of them cannot take part in a run."""
    from ..plugins import Registry, discover

    wanted = [subject, *companions]
    installed = _installed_plugins()
    # Blocked rather than described: only the plugins of the plan are loaded, so a broken plugin the test does
    # not use cannot fail it, and no time goes on describing the rest.
    registry = discover([name for name in installed if name not in wanted])
    for name in wanted:
        record = registry.records.get(name)
        role = "the plugin under test" if name == subject else "the companion"
        if record is None:
            pytest.fail(f"drhost: {role} {name!r} is not installed in entry-point group {_ENTRY_POINT_GROUP!r} "
                        f"(installed: {', '.join(installed) or 'none'}); install it in this environment "
                        f"(pip install -e .)" + ("" if name != subject else f", or {_HOW_TO_NAME}"), pytrace=False)
        if not record.usable:
            pytest.fail(f"drhost: {role} {name} is {record.status}: {record.error}", pytrace=False)
    return Registry([registry.records[name] for name in wanted])


@pytest.fixture
def drhost_session(request: pytest.FixtureRequest, drhost_target: DisposableTarget,
                   drhost_plugin_name: str) -> Iterator[PluginSession]:
    """A :class:`drhost.testing.PluginSession` for ``drhost_target``: a real run's machinery, one target.

    The plan holds the plugin under test alone, or also the companions named by
    ``@pytest.mark.drhost_companions("dr-core", ...)`` or else the ``drhost_companions`` ini
    option (names separated by spaces or commas). The plugins are discovered as a run
    discovers them (each described in a worker of its own); one that is not installed, is
    broken (its import error, a name mismatch, ...), blocked or not allowed fails the test
    in setup with its error. Config and plan are those of a run against the target
    (``session_config``, ``session_plan``), so a run's refusals (no podman for a container
    plugin, a bad config section) fail the setup too. Closed at teardown: every worker and
    container stopped; the run directory stays under ``drhost_state_dir``.
    """
    from ..errors import DrhostError
    from ._session import PluginSession, session_config, session_plan

    registry = _registry(drhost_plugin_name, _companion_names(request, drhost_plugin_name))
    config = session_config(drhost_target)
    try:
        plan = session_plan(config, registry)
    except DrhostError as exc:
        pytest.fail(f"drhost: a run with {', '.join(registry.records)} would refuse to start: {exc}", pytrace=False)
    request.node.stash[_RECORDS] = registry
    session = PluginSession(drhost_target, config, plan)
    try:
        yield session
    finally:
        session.close()


class PluginRunner:
    """The plugin under test in a :class:`~drhost.testing.PluginSession`: every call in the plugin's isolation.

    Each call goes through the session's executor exactly as in a run: the plugin's
    isolation class (a thread, a cgroup'd worker process, a podman container), the
    production Context, the step's deadline and the watchdog. What it leaves out is a
    run's policy: nothing is retried, restarted or rolled back unless the test asks.
    """

    def __init__(self, session: PluginSession, record: PluginRecord) -> None:
        self.session = session
        #: The plugin as discovery described it: class, hooks, steps, config schema.
        self.record = record
        self.name = record.name

    @property
    def isolation(self) -> str:
        """Where the plugin's code runs: ``thread``, ``process`` or ``container`` (its class's isolation)."""
        return self.session.plan.plugin(self.name).isolation

    def steps(self, stage: str | Stage) -> list[PlannedStep]:
        """The plugin's planned steps of ``stage``, in the order a run runs them."""
        wanted = _stage(stage)
        return [step for step in self.session.stage_steps(wanted) if step.plugin == self.name]

    def run_step(self, stage: str | Stage, step: str, *, timeout_s: float | None = None) -> CallOutcome:
        """Run one of the plugin's steps; ``timeout_s`` replaces its deadline for this call only.

        The outcome is not checked: ``outcome.ok``, ``.ended`` (ok, failed, skipped, timeout,
        crashed, ...), ``.message``, ``.retryable`` and ``.state`` tell what happened.
        """
        wanted = _stage(stage)
        planned = self.session.plan.find_step(wanted, self.name, step)
        if planned is None:
            known = ", ".join(s.name for s in self.steps(wanted)) or "none"
            raise LookupError(f"plugin {self.name} has no step {step!r} in stage {wanted.value} (its steps there: "
                              f"{known})")
        return self.session.run_step(planned, timeout_s=timeout_s)

    def run_stage(self, stage: str | Stage) -> list[CallOutcome]:
        """Every planned step of ``stage`` (companions' too) in order; stops after a step that failed, as a run does.

        Returns one outcome per step that ran: all are ok or skipped unless the last one is not.
        """
        outcomes: list[CallOutcome] = []
        for step in self.session.stage_steps(_stage(stage)):
            outcome = self.session.run_step(step)
            outcomes.append(outcome)
            if not outcome.ok and outcome.ended != "skipped":
                break
        return outcomes

    def cleanup(self, stage: str | Stage) -> list[str]:
        """The stage's cleanup as a run makes it before a restart; returns the errors (empty: all succeeded).

        Step cleanups of the steps that ran in the stage, last run first, then the plugins'
        ``drhost_cleanup``; afterwards the stage counts as not run.
        """
        return self.session.cleanup(_stage(stage))

    def rollback(self, stage: str | Stage) -> list[str]:
        """The stage's rollback as a run makes it; returns the errors (empty: all succeeded).

        Step rollbacks of the steps that ran in the stage, last run first, then the plugins'
        ``drhost_rollback``; afterwards the stage counts as not run.
        """
        return self.session.rollback(_stage(stage))

    def verify(self, stage: str | Stage, phase: str | VerifyPhase) -> list[str]:
        """The problems the plugin's ``drhost_verify`` reports (a hook that did not run is one too); empty: none."""
        from drhost_hookspecs import VerifyPhase

        if "drhost_verify" not in self.session.plan.plugin(self.name).hooks:
            # An empty list would read as "verified": a test asserting it must not pass by accident.
            raise LookupError(f"plugin {self.name} does not implement drhost_verify")
        found = self.session.verify(_stage(stage), VerifyPhase(phase), plugins=[self.name])
        return found.get(self.name, [])


def _stage(stage: str | Stage) -> Stage:
    from drhost_hookspecs import Stage

    return Stage(stage)


@pytest.fixture
def drhost_runner(request: pytest.FixtureRequest, drhost_session: PluginSession,
                  drhost_plugin_name: str) -> PluginRunner:
    """A :class:`PluginRunner` for the plugin under test in ``drhost_session``.

    ``run_step(stage, step, *, timeout_s=None) -> CallOutcome``, ``run_stage(stage) ->
    list[CallOutcome]``, ``cleanup(stage)`` and ``rollback(stage) -> list[str]`` (errors),
    ``verify(stage, phase) -> list[str]`` (problems), ``steps(stage)``, ``isolation``,
    ``record``; stages and phases as enum members or their values ("upgrade", "completed").
    """
    registry = request.node.stash[_RECORDS]
    return PluginRunner(drhost_session, registry.records[drhost_plugin_name])


@pytest.fixture
def drhost_context(drhost_session: PluginSession, drhost_plugin_name: str) -> HostContext:
    """A real ``HostContext`` for the plugin under test, on the target: call a step function directly with it.

    The Context the host hands a plugin in a thread, built as a run builds it: the session's
    ``run_id``; ``target``, the target's ``TargetInfo`` (``install_root`` is
    ``drhost_target.root``); ``package``, the 2.0.0 package with ``remote_path`` under the
    root's ``staging/``; ``config``, the plugin's settings; ``state``, a dict that starts
    empty. Confined like a run's: the install root and the plugin's declared paths (and, for a
    third_party plugin, its declared commands). Its effects reach the target through a
    ``LocalSession``. ``checkpoint()`` saves ``state`` as the plugin's state in the session's
    run, where later ``drhost_runner`` calls find it; ``log`` and ``progress`` become events in
    ``drhost_session.events``. No deadline: the call runs in the test's own thread, outside the plugin's isolation.
    """
    import dataclasses
    import os

    from ..context import HostContext
    from ..orchestrator import target_info
    from ._session import TARGET

    session = drhost_session
    env = session.env
    name = drhost_plugin_name
    info = target_info(TARGET, env.config["targets"][TARGET], session.state.run_id)
    package = dataclasses.replace(
        env.package, remote_path=f"{info.install_root}/staging/{os.path.basename(env.package.local_path)}")

    def notify(method: NotifyMethod, args: Mapping[str, Any]) -> None:
        if method == "progress":
            env.emit("step.progress", target=TARGET, plugin=name, done=args.get("done"), total=args.get("total"),
                     unit=args.get("unit", ""))
        else:
            env.emit("plugin.log", target=TARGET, plugin=name, message=str(args.get("message", "")),
                     level=args.get("level", "info"))

    def persist(state: dict[str, Any]) -> None:
        with session.state.mutate_target(TARGET) as record:
            record["plugin_state"][name] = state

    entry = env.plan.plugin(name)
    return HostContext(
        session=session.executor.session(TARGET), run_id=session.state.run_id, target=info, package=package,
        config=dict(env.config["plugins"].get(name, {})), state={}, notify=notify, persist=persist,
        cancel=threading.Event(), deadline=None, logger=env.logger.getChild(f"plugin.{name}.{TARGET}"),
        plugin=name, plugin_class=entry.plugin_class, paths=entry.paths, commands=entry.commands,
        on_refused=lambda message, refused: env.emit("context.refused", target=TARGET, stage=None, step=None,
                                                     plugin=name, message=message, op="direct", **refused),
    )


@pytest.fixture
def drhost_instant_retries() -> Iterator[None]:
    """Within the test retries do not wait (``drhost.policy.instant_retries()``).

    Set through the environment (``DRHOST_INSTANT_RETRIES=1``) for the test's duration, so
    processes started meanwhile inherit it: the session's workers start at their first call,
    inside the test. Put back as it was at teardown.
    """
    from ..policy import instant_retries

    with instant_retries():
        yield
