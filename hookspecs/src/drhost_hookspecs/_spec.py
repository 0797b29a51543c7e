"""The hookspecs: what a plugin may implement.

Every docstring here is the reference for plugin authors; ``docs/plugin-hooks.md``
repeats each signature and a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from ._context import Context
from ._types import PluginInfo, Stage, Step, VerifyPhase

PROJECT_NAME = "drhost"

#: Marks the hook specifications below; plugins need only ``hookimpl``.
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Mark a plugin's functions with ``@hookimpl`` so drhost finds them.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def drhost_plugin_info() -> PluginInfo:
    """Say who the plugin is: name, department, class and the hook-API version.

    Required. Called once at discovery, in the plugin's own isolation.

    Example::

        @hookimpl
        def drhost_plugin_info():
            return PluginInfo(name="dr-database", department="dba",
                              plugin_class=PluginClass.DATABASE)
    """


@hookspec(firstresult=True)
def drhost_config_schema() -> dict[str, Any] | None:
    """Return a JSON Schema (draft 2020-12) for the plugin's own config section.

    The section is ``[plugin:NAME]`` in the ops INI file or ``--set plugin.NAME.key=value``.
    The host validates the section before the run starts and passes it as ``ctx.config``.
    The keys ``fault`` and ``fault_delay_s`` (fault injection) are added by the host.
    """


@hookspec
def drhost_stage_steps(stage: Stage, register: Callable[[Step], None]) -> None:
    """Register the plugin's steps for ``stage`` by calling ``register(Step(...))``.

    Called once per stage at discovery (in the plugin's isolation). A step's
    ``order`` places it among every plugin's steps of the stage (ties broken by
    plugin name, then step name). An exception here marks the plugin broken.

    Example::

        @hookimpl
        def drhost_stage_steps(stage, register):
            if stage is Stage.UPGRADE:
                register(Step("upgrade_db_schema", migrate, retryable=False,
                              timeout_s=1800, category=Category.DATABASE,
                              order=35, cleanup=restore, rollback=restore))
    """


@hookspec
def drhost_cleanup(stage: Stage, ctx: Context) -> None:
    """Plugin-wide cleanup of ``stage`` before the stage is started again.

    Runs after the step-level ``cleanup`` callables (last step first), when a
    non-retryable step failed and the operator chose to retry. Must tolerate a
    partial run and being called twice. An exception is recorded; the host goes on
    with the other plugins' cleanup, then fails the retry.
    """


@hookspec
def drhost_rollback(stage: Stage, ctx: Context) -> None:
    """Plugin-wide rollback of ``stage``, after its step-level ``rollback`` callables.

    Stages are rolled back in reverse order; within a stage, plugins in reverse step
    order. Must tolerate a partial run and being called twice. An exception marks
    the rollback of this stage failed; the host still runs the other compensations.
    """


@hookspec
def drhost_verify(stage: Stage, phase: VerifyPhase, ctx: Context) -> list[str] | None:
    """Check the target and return the problems found (empty or None: verified).

    ``phase`` is ``completed`` after the stage ran, ``rolled_back`` after it was
    rolled back. A returned problem fails the stage (completed) or marks the
    rollback unverified (rolled_back).
    """


@hookspec
def drhost_manual_rollback_steps(stage: Stage, ctx: Context) -> list[str] | None:
    """Return what an operator does by hand to finish undoing this plugin's part of ``stage``.

    Called only when drhost's own rollback of ``stage`` failed twice (the compensation
    or its verification) and the target is marked ``inconsistent``. One item per
    instruction, with the real paths and commands of this target (from ``ctx.target``
    and ``ctx.state``), for example ``"restore the catalog: /opt/drproduct/current/bin/
    drproduct-db --root /opt/drproduct restore --from /opt/drproduct/backup/RUN/catalog.db"``.
    Read-only: change nothing here. The items are printed, saved with the evidence
    and shown by ``drhost status``.
    """


@hookspec
def drhost_collect_context(ctx: Context) -> dict[str, Any] | None:
    """Return extra diagnostics (JSON-safe) when a step times out on this target.

    Called for every plugin that implements it, whichever plugin's step timed out,
    after that step was stopped; for example the database sessions and their running
    statements. Saved with the run in ``timeouts/``; must finish within seconds and
    should report what it could not read rather than raise.

    An optional ``"measurement"`` key feeds the timeout message's reason: ``port``
    (service), ``data_bytes`` (database), ``file_bytes`` (file), ``latency_ms``
    (network), with an optional ``label`` naming the figure (``{"data_bytes":
    2100000000, "label": "catalog"}`` reads ``catalog 2.1 GB``). The timed-out step's
    own plugin is asked first.
    """


@hookspec(firstresult=True)
def drhost_installed_version(ctx: Context) -> str | None:
    """Return the product version installed on the target, or None if this plugin cannot tell.

    Asked before the run starts on a target (a target already at the package's
    version is left untouched and reported as up to date) and at the end (the
    version in the run's report). Must be read-only and quick.
    """
