"""dr-core: the platform department's plugin for drproduct.

Checks the installed version, disk and service; backs up program files and
config; uploads and unpacks the package; installs the new release, its config,
licence and service registration; and puts the old release back on rollback.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from drhost_hookspecs import Category, Context, PluginClass, PluginInfo, Stage, Step, VerifyPhase, hookimpl

from . import _ini, _target, backup, checks, config, precheck, release, services, transfer
from .config import REPLICATION_MODES

NAME = "dr-core"
StepFn = Callable[[Context], None]


@hookimpl
def drhost_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        department="platform",
        plugin_class=PluginClass.CORE,
        description="drproduct versions, program files, services, core config and licence",
    )


@hookimpl
def drhost_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "replication_mode": {"enum": list(REPLICATION_MODES), "default": "async"},
            "licence_series": {"type": "string", "pattern": r"^[0-9]+\.x$"},
            "start_timeout_s": {"type": "integer", "minimum": 1, "default": 60},
            "stop_timeout_s": {"type": "integer", "minimum": 1, "default": 30},
            "free_margin_bytes": {"type": "integer", "minimum": 0, "default": 0},
            "require_running_service": {"type": "boolean", "default": True},
            "ini_settings": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
                },
                "default": {},
            },
        },
    }


def _step(stage: Stage, name: str, run: StepFn, retryable: bool, timeout_s: float, category: Category,
          order: int, **compensations: StepFn) -> Step:
    return Step(name, run, retryable=retryable, timeout_s=timeout_s, category=category,
                timeout_key=f"{stage.value}.{name}", order=order, description=_describe(run), **compensations)


def _describe(run: StepFn) -> str:
    return (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else ""


def _steps(stage: Stage) -> list[Step]:
    file, service, network = Category.FILE, Category.SERVICE, Category.NETWORK
    s = stage
    if stage is Stage.PRECHECK:
        return [
            _step(s, "check_installed_version", precheck.check_installed_version, True, 30, file, 10),
            _step(s, "check_disk_space", precheck.check_disk_space, True, 30, file, 20),
            _step(s, "check_service_healthy", precheck.check_service_healthy, True, 60, service, 30),
        ]
    if stage is Stage.BACKUP:
        return [_step(s, "backup_program_files", backup.backup_program_files, True, 600, file, 10)]
    if stage is Stage.TRANSFER:
        return [
            _step(s, "upload_package", transfer.upload_package, True, 1800, network, 10,
                  rollback=transfer.remove_package),
            _step(s, "unpack_package", transfer.unpack_package, True, 600, file, 20,
                  rollback=transfer.remove_staging),
        ]
    if stage is Stage.UPGRADE:
        return [
            _step(s, "stop_services", services.stop_services, True, 120, service, 10,
                  rollback=services.start_old),
            _step(s, "install_program_files", release.install_program_files, False, 600, file, 30,
                  cleanup=release.uninstall_program_files, rollback=release.uninstall_program_files),
            _step(s, "register_services", services.register_services, False, 60, service, 40,
                  cleanup=services.register_old, rollback=services.register_old),
            _step(s, "init_core_config", config.init_core_config, False, 30, file, 45,
                  cleanup=config.restore_ini, rollback=config.restore_ini),
            _step(s, "update_licence", config.update_licence, False, 60, file, 50,
                  cleanup=config.restore_licence, rollback=config.restore_licence),
            _step(s, "update_config_files", config.update_config_files, True, 30, file, 60,
                  rollback=config.restore_ini),
            _step(s, "init_log_files", config.init_log_files, True, 30, file, 70),
            # Rolled back step by step, before init_core_config's restore of the ini puts back its own mode.
            _step(s, "set_permissions", config.set_permissions, True, 30, file, 80,
                  rollback=config.restore_permissions),
            _step(s, "start_services", services.start_services, True, 180, service, 90,
                  rollback=services.stop_services),
        ]
    return [_step(s, "check_new_version_healthy", checks.check_new_version_healthy, True, 120, service, 10)]


@hookimpl
def drhost_stage_steps(stage: Stage, register: Callable[[Step], None]) -> None:
    for step in _steps(stage):
        register(step)


@hookimpl
def drhost_cleanup(stage: Stage, ctx: Context) -> None:
    if stage is not Stage.UPGRADE:
        return
    # The stage restarts from stop_services: leave nothing of the new release running
    # or half-written, and the old release current and registered.
    services.stop(ctx)
    release.uninstall_program_files(ctx)
    services.register_old(ctx)


@hookimpl
def drhost_rollback(stage: Stage, ctx: Context) -> None:
    if stage is Stage.UPGRADE:
        # Old release running first: the new one is removed only once nothing runs from it.
        services.restore_old_release(ctx)
        release.uninstall_program_files(ctx)
    elif stage is Stage.TRANSFER:
        transfer.remove_staging(ctx)
        transfer.remove_package(ctx)
    elif stage is Stage.BACKUP:
        # Only reached when the backup stage itself failed ([stages.backup] rollback_when = stage_failed): a
        # complete backup is what the other stages' rollback restores from and is never removed here.
        backup.remove_program_backup(ctx)


@hookimpl
def drhost_verify(stage: Stage, phase: VerifyPhase, ctx: Context) -> list[str]:
    if phase is VerifyPhase.COMPLETED:
        return checks.verify_completed(ctx, stage)
    return checks.verify_rolled_back(ctx, stage)


@hookimpl
def drhost_installed_version(ctx: Context) -> str | None:
    return _target.current_version(ctx)


@hookimpl
def drhost_collect_context(ctx: Context) -> dict[str, Any]:
    """The service's port, registration and status: what a service-start timeout needs explained."""
    found: dict[str, Any] = {}
    try:
        ini = _target.path(ctx, "etc", "drproduct.ini")
        port = _ini.get(ctx.read_text(ini), "service", "port") if ctx.exists(ini) else None
        found["port"] = int(port) if port is not None and port.isdigit() else port
        if isinstance(found["port"], int):
            found["measurement"] = {"port": found["port"]}
        found["registered_version"] = _target.registered_version(ctx)
        found["current_version"] = _target.current_version(ctx)
        code, body = _target.run_json(ctx, [*_target.tool(ctx, "drproductctl"), "status"], check=False)
        found["service_status"] = {"exit": code, **(body if isinstance(body, dict) else {"output": body})}
    except Exception as exc:  # diagnostics must not fail: say what could not be read instead
        found["error"] = f"{type(exc).__name__}: {exc}"
    return found


@hookimpl
def drhost_manual_rollback_steps(stage: Stage, ctx: Context) -> list[str]:
    """By hand: the old release current, registered and running; the run's backup archive for etc/."""
    if stage is Stage.TRANSFER:
        return [f"remove the staged package: rm -rf {shlex.quote(_target.staging_dir(ctx))}"]
    if stage is not Stage.UPGRADE:
        return []
    root = _target.root(ctx)
    old = _target.old_version(ctx) or "OLD_VERSION"
    ctl = " ".join(shlex.quote(part) for part in _target.tool(ctx, "drproductctl", old))
    backup = ctx.state.get(_target.PROGRAM_BACKUP)
    archive = str(backup.get("path")) if isinstance(backup, dict) else f"{_target.backup_dir(ctx)}/<program archive>"
    return [
        f"stop whatever release runs: {' '.join(shlex.quote(p) for p in _target.tool(ctx, 'drproductctl'))} stop",
        f"put back etc/ from the run's backup if it changed: tar -xzf {shlex.quote(archive)} -C {shlex.quote(root)} "
        f"etc",
        f"make {old} current: ln -sfn releases/{old} {shlex.quote(root)}/current.tmp && mv -T "
        f"{shlex.quote(root)}/current.tmp {shlex.quote(root)}/current",
        f"register and start it: {ctl} register && {ctl} start",
        f"check: {ctl} health  (expect status ok, version {old})",
    ]
