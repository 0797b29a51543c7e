"""A run: create or reopen its state, drive every target, and sum up how it ended."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from drhost_hookspecs import ENTRY_POINT_GROUP, PackageInfo

from ..errors import ExitCode, RefusedError, message_phrase, phrase
from ..events import EventBus, EventName, Subscriber
from ..failpoints import failpoint
from ..plan import Plan, recorded_plan
from ..plugins import check_run
from ..state import RunLock, RunState, new_run_id
from ..supervisor import isolation, remove_stale_worker_dirs
from ..transport import TransportError
from ._abandoned import abandoned_view
from ._env import Decide, Executor, RunEnv
from ._fleet import ApproveBatch, Fleet, rollout_record
from ._locks import WHOLE, TargetLocks
from ._reach import NOT_TAKEN_EVENTS, NotTaken, Reach, look, queue_rollback, wait_until_reachable
from ._recheck import (
    check_config,
    check_controller,
    check_package,
    controller_record,
    previous_controller_gone,
    spare_cgroup,
)
from ._records import new_target_record
from ._rollback import RollbackFlow, rollback_verdict
from ._rollout import Batch, batches_for
from ._root import MISSING_ROOT_STATUS, missing_root
from ._statuses import RunMode, RunStatus, TargetStatus
from ._target import TargetFlow

_EXIT_CODES: dict[RunStatus, int] = {
    "succeeded": ExitCode.SUCCEEDED,
    "rolled_back": ExitCode.ROLLED_BACK,
    "failed": ExitCode.ROLLBACK_FAILED,
    "aborted": ExitCode.ABORTED,
    "interrupted": ExitCode.INTERRUPTED,
    "refused": ExitCode.REFUSED,
}
#: The exit code of a run that ended with a status (any other: ExitCode.FAILED); keyed by the recorded string.
RUN_EXIT_CODES: Mapping[str, int] = {str(status): code for status, code in _EXIT_CODES.items()}

#: The event a run-start clean-up's ``Removed.what`` is reported as.
REMOVED_EVENTS: dict[str, EventName] = {"cgroups": "cgroups.removed", "containers": "containers.removed"}


@dataclass(frozen=True)
class RunSummary:
    """How a run ended: what ``--json`` prints."""

    run_id: str
    status: RunStatus
    run_dir: Path
    targets: Mapping[str, Mapping[str, Any]]

    @property
    def exit_code(self) -> int:
        return RUN_EXIT_CODES.get(self.status, ExitCode.FAILED)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "run_dir": str(self.run_dir),
                "targets": {name: dict(t) for name, t in self.targets.items()}}


#: Target statuses that make the run's status, first match wins (a run of only whole targets succeeded).
_SUCCEEDED: frozenset[TargetStatus] = frozenset({"succeeded", "up_to_date"})
_INTERRUPTED: frozenset[TargetStatus] = frozenset({"interrupted", "pending", "running", "rolling_back", "unreachable"})
_FAILED: frozenset[TargetStatus] = frozenset({"rollback_failed", "failed", "inconsistent"})
_REFUSED: frozenset[TargetStatus] = frozenset({"locked", "refused"})


def run_status(target_statuses: Sequence[str]) -> RunStatus:
    """The run's status from its targets' (as the state records them: plain strings)."""
    statuses = set(target_statuses)
    if statuses <= _SUCCEEDED:
        return "succeeded"
    if statuses & _INTERRUPTED:
        return "interrupted"
    if statuses & _FAILED:
        return "failed"
    if statuses & _REFUSED:
        return "refused"
    if "aborted" in statuses:
        return "aborted"
    return "rolled_back"


def package_for(package: PackageInfo) -> dict[str, Any]:
    data = dataclasses.asdict(package)
    data["upgrades_from"] = list(package.upgrades_from)
    data["manifest"] = dict(package.manifest)
    return data


def create_run(*, config: Mapping[str, Any], config_files: Sequence[str], plan: Plan, package: PackageInfo,
               extra: Mapping[str, Any] | None = None) -> RunState:
    """Write the run's first checkpoint: everything a resume needs, before anything is touched."""
    body = {
        "created": time.time(),
        "status": "created",
        "config": dict(config),
        "config_files": list(config_files),
        "package": package_for(package),
        "plan": plan.to_json(),
        "targets": {name: new_target_record() for name in sorted(config["targets"])},
        "rollout": rollout_record(batches_for(config)),
        **(extra or {}),
    }
    state = RunState.create(new_run_id(), body)
    failpoint("run.created")
    return state


def _target_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A target as ``--json`` and the final lines show it: status, version, and what is known beyond them."""
    status = record["status"]
    # An inconsistent target's version is unknown: its plugins' verification says what can be said instead.
    summary: dict[str, Any] = {"status": status, "version": None if status == "inconsistent"
                               else record.get("version") or record.get("version_before")}
    if status == "inconsistent":
        verdict = rollback_verdict(record)
        summary["verification"] = verdict["label"] if verdict else "no verification recorded"
    still = abandoned_view(record)["still_changing"]
    if still:
        summary["still_changing"] = still
    return summary


def _check_plugins_present(plan: Plan) -> list[str]:
    installed = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    missing = [p.name for p in plan.plugins if p.name not in installed]
    if missing:
        raise RefusedError.worded("plugins of this run are no longer installed: {plugins}; reinstall them (the "
                                  "run's plan needs them to resume or roll back)", plugins=", ".join(missing))
    changed = []
    for plugin in plan.plugins:
        dist = getattr(installed[plugin.name], "dist", None)
        if dist is not None and dist.version != plugin.version:
            changed.append(f"{plugin.name} {plugin.version} -> {dist.version}")
    return changed


def _remove_leftovers(env: RunEnv, plan: Plan, previous_gone: bool, *, worker_dirs: bool = True) -> None:
    """Remove cgroups and containers that a killed controller left (of this run, or orphaned).

    Only what provably belongs to a controller that is gone: a live controller of the same run (a copy of
    the run directory resumed elsewhere) keeps its workers. ``previous_gone``: the run's previous controller
    is provably gone, so what carries no controller pid is its. ``worker_dirs``: also tidy the empty working
    directories of gone controllers (once a run is enough: at its start).
    """
    run_id = env.state.run_id
    # only the kinds this run uses can have left something (its plan is fixed for the run's lifetime)
    for name in dict.fromkeys(p.isolation for p in plan.plugins):
        for removed in isolation(name).clean_up(run_id, env.config, previous_gone=previous_gone,
                                                spare=lambda cgroup: spare_cgroup(run_id, cgroup, previous_gone)):
            names: dict[str, Any] = {removed.what: list(removed.names)}  # the event's field is named as the event
            env.emit(REMOVED_EVENTS[removed.what], message=removed.message, **names)
    if not worker_dirs:
        return
    # Empty working directories of workers whose controller was killed: nothing to report, only to tidy.
    stale = remove_stale_worker_dirs()
    if stale:
        env.logger.info("removed %d worker directories of controllers that are gone", len(stale))


def _stop_leftovers(env: RunEnv, executor: Executor, name: str) -> None:
    """A killed controller's commands may still run on the target: stop them before the resumed step."""
    try:
        stopped = executor.control(name).stop_leftover_commands()
    except (TransportError, RefusedError) as exc:
        env.emit("target.leftovers_unknown", target=name,
                 message=phrase("could not look for commands left running by an earlier controller: {error}",
                                error=message_phrase(exc)))
        return
    if stopped:
        env.emit("target.leftovers_stopped", target=name, stopped=stopped,
                 message=phrase("stopped {count} command(s) an earlier controller of this run left running: "
                                "{commands}", count=len(stopped), commands=", ".join(stopped)))


def _lock_target(env: RunEnv, executor: Executor, locks: TargetLocks, name: str, *, rollback: bool) -> str | None:
    """Take the target's lock before touching it. None when held; else the target's status: ``locked``
    (another run holds it; the target is left untouched), ``refused`` (a changed host key or rejected
    credentials: never waited for, never retried) or ``unreachable`` (resume tries again).

    ``rollback``: the target needs a rollback (``drhost rollback``, or a queued one that resume takes up). An
    unreachable one is then waited for (``run.unreachable_wait_s``), and whatever keeps it from being locked
    leaves it queued under that status — never under the status it had, which would claim a rollback that
    did not happen (a ``succeeded`` target still at the new version, exit 0).
    """
    root = str(env.config["targets"][name]["root"])
    try:
        executor.control(name)
    except (TransportError, RefusedError) as exc:
        reach = Reach("refused" if isinstance(exc, RefusedError) else "unreachable", str(exc))
    else:
        # One look first: an outage costs one connect timeout (not one per lock-file operation), and a refusal
        # is told apart from it before anything is waited for.
        reach = wait_until_reachable(env, executor, name, "rollback") if rollback else look(executor, name)
    if not reach.ok:
        why = f"cannot reach {name} to lock it: {reach.why}" if reach.status == "unreachable" else \
            f"{name} refused the connection: {reach.why}"
        not_taken: NotTaken = "unreachable" if reach.status == "unreachable" else "refused"
        return queue_rollback(env, name, not_taken, why) if rollback else _not_locked(env, name, not_taken, why)
    session = executor.control(name)
    missing = missing_root(session, name, root)
    if missing is not None:
        return _not_locked(env, name, MISSING_ROOT_STATUS, missing)
    with executor.watched(name, executor.lock_operation(), session):
        previous, refused = locks.acquire(name, session, root)
    if refused is None:
        if previous is not None and previous.run_id != env.state.run_id:
            env.emit("target.lock_broken", target=name,
                     message=phrase("--break-lock: took the lock of {owner}", owner=previous.describe()),
                     owner=dataclasses.asdict(previous))
        return None
    status: NotTaken = "unreachable" if refused.startswith("cannot reach") else "locked"
    return queue_rollback(env, name, status, refused) if rollback else _not_locked(env, name, status, refused)


def _not_locked(env: RunEnv, name: str, status: NotTaken, why: str) -> NotTaken:
    with env.state.mutate_target(name) as record:
        # A refusal replaces what an earlier drive left (interrupted, aborted): the operator must act on it first,
        # and the run's exit code (7) must say so. The steps' records keep where the target stands.
        if record["status"] in ("pending", "locked", "unreachable", "refused") or status == "refused":
            record["status"] = status
        record.setdefault("errors", []).append({"ts": time.time(), "message": why, "action": "target not touched"})
    env.emit(NOT_TAKEN_EVENTS[status], target=name, message=why)
    return status


@contextlib.contextmanager
def _signals_stop(env: RunEnv, executor: Executor) -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the current steps safely; the state stays resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if not env.stop.is_set():
            env.stop.set()
            env.emit("run.stopping", message=phrase("{signal} received: stopping the current steps",
                                                    signal=signal.Signals(signum).name))
            executor.stop_active()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _debug_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "debug.log", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    (run_dir / "debug.log").chmod(0o600)
    return handler


def _with_rollout(state: RunState) -> None:
    """Runs created before batches existed: one batch of every target, under the default settings."""
    from ..config import defaults

    names = state.target_names()
    with state.mutate() as body:
        if "rollout" not in body:
            body["rollout"] = rollout_record([Batch(0, None, tuple(names))])
        body["config"].setdefault("rollout", defaults()["rollout"])


def drive(state: RunState, *, mode: RunMode, decide: Decide, subscribers: Sequence[Subscriber] = (),
          after: Callable[[RunState, str], None] | None = None, break_lock: bool = False,
          approve: ApproveBatch | None = None) -> RunSummary:
    """Run (``upgrade``/``resume``) or roll back (``rollback``) every target of the run.

    Upgrades go batch by batch (``[rollout]``); ``approve`` is asked before a batch that needs approval (None:
    the run stops there, resumable). A rollback takes every target at once, ``forks`` at a time.
    """
    lock = RunLock(state.run_dir)
    lock.acquire()
    try:
        # Before anything is written or swept: a refusal here leaves the run and its targets as they were.
        if mode != "upgrade":
            check_controller(state)
            # A rollback too: a stored value today's code would misread could undo the wrong thing.
            check_config(state)
        if mode == "resume":
            check_package(state)
        plan = recorded_plan(state)
        previous_gone = mode == "upgrade" or previous_controller_gone(state)
        with state.mutate() as b:
            b["controller"] = controller_record()
    except BaseException:
        lock.release()
        raise
    logger = logging.getLogger(f"drhost.run.{state.run_id}")
    # The run's debug log takes everything drhost logs meanwhile: transport, supervisor and plugins too.
    package_logger = logging.getLogger("drhost")
    package_logger.setLevel(logging.DEBUG)
    handler = _debug_log(state.run_dir)
    package_logger.addHandler(handler)
    bus = EventBus()
    journal = state.journal()
    bus.subscribe(journal)
    bus.subscribe(lambda e: logger.info("%s %s", e.event, e.json_line))
    for subscriber in subscribers:
        bus.subscribe(subscriber)
    _with_rollout(state)
    body = state.snapshot()
    package = PackageInfo(**{**body["package"], "upgrades_from": tuple(body["package"]["upgrades_from"])})
    env = RunEnv(state=state, plan=plan, config=body["config"], package=package, bus=bus, decide=decide,
                 logger=logger)
    executor = Executor(env)
    locks = TargetLocks(run_id=state.run_id, config=env.config, break_lock=break_lock)
    env.lock_lost = locks.lost
    try:
        if state.recovered_from:
            env.emit("state.recovered", message=phrase("newest checkpoint unusable, previous generation used: "
                                                       "{why}", why=state.recovered_from))
        _remove_leftovers(env, plan, previous_gone)
        if mode != "upgrade":
            for change in _check_plugins_present(plan):
                env.emit("plugin.version_changed", message=phrase("plugin changed since the run started: {change}",
                                                                  change=change))
            # The run's plugins: one distribution each, and exactly as the plugin lock has them (if one is in force).
            check_run([(p.name, p.plugin_class) for p in plan.plugins], env.config)
        with state.mutate() as b:
            b["status"] = "running" if mode != "rollback" else "rolling_back"
        env.emit("run.started", mode=mode, targets=sorted(body["targets"]), package=package.version,
                 steps=len(plan.steps), run_dir=str(state.run_dir),
                 isolation={p.name: p.isolation for p in plan.plugins},
                 weaker_isolation=body.get("weaker_isolation"), forks=int(env.config["run"]["forks"]),
                 batches=[{"targets": b["targets"], "group": b.get("group")} for b in body["rollout"]["batches"]]
                 if mode != "rollback" else [{"targets": sorted(body["targets"]), "group": None}],
                 pause_s=float(env.config["rollout"]["pause_s"]))
        forks = int(env.config["run"]["forks"])
        # Targets whose lock another run holds: left untouched, whatever their record says.
        locked_out: list[str] = []

        def one(name: str) -> str:
            with state.reading() as b:
                status = str(b["targets"][name]["status"])
                phase = str(b["targets"][name].get("phase"))
            if status in WHOLE and (mode != "rollback" or status != "succeeded"):
                return status
            refused = _lock_target(env, executor, locks, name, rollback=mode == "rollback" or phase == "rollback")
            if refused is not None:
                if refused == "locked":
                    locked_out.append(name)
                return refused
            if mode != "upgrade":
                _stop_leftovers(env, executor, name)
            try:
                result = RollbackFlow(env, executor, name).run() if mode == "rollback" else \
                    TargetFlow(env, executor, name).run()
            finally:
                executor.history.flush(name)
            if result in WHOLE:
                locks.release(name)
            return result

        stopped_by_budget = False
        with _signals_stop(env, executor):
            if mode == "rollback":
                with ThreadPoolExecutor(max_workers=forks, thread_name_prefix="target") as pool:
                    list(pool.map(one, sorted(body["targets"])))
            else:
                stopped_by_budget = Fleet(env, one, forks=forks, approve=approve).run().stopped is not None
        with state.reading() as b:
            status = run_status([str(t["status"]) for t in b["targets"].values()])
        if stopped_by_budget and status == "interrupted":
            status = "aborted"  # stopped on purpose by the failure budget, not by a crash or a signal
        elif locked_out and status == "interrupted":
            # A half-done target locked by another controller (of this very run, resumed from a copy): this
            # drhost was refused, it did not stop half-way.
            status = "refused"
        with state.reading() as b:
            targets = {n: _target_summary(t) for n, t in b["targets"].items()}
        with state.mutate() as b:
            b["status"] = status
            b["finished"] = time.time()
            changing = {n: t["still_changing"] for n, t in targets.items() if t.get("still_changing")}
            if changing:
                # Said in the run itself: after this process ends, these threads end with it, unrecorded.
                b["still_changing_at_finish"] = {"pid": os.getpid(), "at": time.time(), "targets": changing}
        env.emit("run.finished", status=status, targets=targets)
        if after is not None:
            after(state, status)
        return RunSummary(state.run_id, status, state.run_dir, targets)
    finally:
        executor.abandoned.close()
        locks.close()
        executor.close()
        _remove_leftovers(env, plan, previous_gone, worker_dirs=False)
        journal.close()
        package_logger.removeHandler(handler)
        handler.close()
        lock.release()
