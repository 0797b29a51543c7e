"""The checks that run a plugin: its steps, again, cut short, cleaned up and rolled back, on a real target.

The target goes through the five stages with every plugin of the plan, as in a run.
Around each of the plugin's steps the target is snapshotted (files, catalog, the
service, processes), so every finding is attributed to the plugin: a key counts as
the plugin's when one of its steps changed it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from drhost_hookspecs import Stage, VerifyPhase

from ..plan import PlannedStep
from ..policy import class_policy
from ..supervisor import CallOutcome, isolation
from ._checks import CheckResult, failed, passed, skipped
from ._session import PluginSession
from ._snapshot import Snapshot, SnapshotDiff, describe_key

#: A step cut short gets this share of the time its full run took (and never less than the floor).
CUT_SHARE = 0.5
CUT_FLOOR_S = 0.05

_FIX_RUNS = "run the step by hand against a drproduct 1.0.0 install, or with the pytest fixtures (drhost_session)"
_FIX_IDEMPOTENT = ("make the step check before it changes anything (write whole files, create-if-missing, "
                   "INSERT OR IGNORE ...), or declare retryable=False with a cleanup and a rollback")
_FIX_TIMEOUT = ("do all work on the target through ctx.run / ctx.put / ctx.write_text (the host can stop those), "
                "wait with ctx.sleep, check ctx.cancelled in loops, and make the step (or its cleanup) cope with "
                "the half-done work a cut leaves")
_FIX_CLEANUP = ("undo in cleanup everything the step may have done, also after a partial run: remove what it "
                "created, put back what it changed (keep the old value in ctx.state and call ctx.checkpoint() "
                "before changing it)")
_FIX_ROLLBACK = ("restore in rollback (the step's, or drhost_rollback for the stage) what the step changed: keep "
                 "the old value in ctx.state, ctx.checkpoint() before the change, put it back on rollback")
_FIX_VERIFY = "make drhost_verify report only real problems, or fix what it found"


class CompanionFailed(Exception):
    """Another plugin's step failed: the target cannot be taken further."""

    def __init__(self, step: PlannedStep, outcome: CallOutcome) -> None:
        super().__init__(f"{step.label} {outcome.ended}: {outcome.message}")
        self.step = step


@dataclass
class _StageRecord:
    """What the plugin's steps of one stage changed: key -> its value before the first change (None: absent)."""

    before: dict[str, str | None] = field(default_factory=dict)
    with_cleanup: set[str] = field(default_factory=set)
    #: How long each of the plugin's steps took on its first run.
    durations: dict[str, float] = field(default_factory=dict)

    def note(self, step: PlannedStep, earlier: Snapshot, changes: SnapshotDiff) -> None:
        for key in sorted(changes.keys()):
            self.before.setdefault(key, earlier.entries.get(key))
            if step.has_cleanup:
                self.with_cleanup.add(key)


#: Logs are the record of what happened: a cleanup or rollback keeps them, so they are no residue.
_EVIDENCE = ("file:log/", "dir:log/")


def _not_restored(record: _StageRecord, keys: set[str], now: Snapshot) -> list[str]:
    lines = []
    for key in sorted(keys):
        before, after = record.before[key], now.entries.get(key)
        if before == after or key.startswith(_EVIDENCE):
            continue
        what = describe_key(key)
        if before is None:
            lines.append(f"left behind {what} ({after})")
        elif after is None:
            lines.append(f"not put back {what} (was {before})")
        else:
            lines.append(f"not restored {what}: was {before}, now {after}")
    return lines


def _cut_deadline(duration_s: float) -> float:
    return max(CUT_FLOOR_S, round(duration_s * CUT_SHARE, 3))


class Driver:
    """Takes the target through the stages and checks the plugin ``subject`` on the way."""

    def __init__(self, session: PluginSession, subject: str, report: Callable[[CheckResult], None]) -> None:
        self.session = session
        self.subject = subject
        self.report = report
        self.hooks = set(session.plan.plugin(subject).hooks)

    def snapshot(self) -> Snapshot:
        return self.session.target.snapshot()

    # -- the walk -----------------------------------------------------------------------
    def run(self) -> None:
        """All stages, then whether everything the plugin's calls did on the way was declared."""
        try:
            self._walk()
        finally:
            self.report(self._declares_effects())

    def _declares_effects(self) -> CheckResult:
        """Fails when the Context refused the plugin a path or a command during the walk."""
        refused = [e for e in self.session.events_named("context.refused") if e.plugin == self.subject]
        if not refused:
            entry = self.session.plan.plugin(self.subject)
            return passed("declares_effects", self.subject,
                          f"nothing refused: its file operations stayed in the product root or its declared paths "
                          f"({', '.join(entry.paths) or 'none'}); declared commands: "
                          f"{', '.join(entry.commands) or 'none'}")
        root = self.session.target.root.as_posix().rstrip("/")
        wanted: dict[str, list[str]] = {"paths": [], "commands": [], "env": []}
        for event in refused:
            kind, value = str(event.data.get("kind", "")), str(event.data.get("value", ""))
            if value.startswith(root + "/"):
                value = "{root}" + value[len(root):]
            key = {"path": "paths", "command": "commands"}.get(kind, "env")
            if value not in wanted[key]:
                wanted[key].append(value)
        fixes = [f"PluginInfo({key}=[..., {', '.join(repr(v) for v in values[:8])}])"
                 for key, values in wanted.items() if values and key != "env"]
        if wanted["env"]:
            fixes.append(f"stop setting {', '.join(wanted['env'])} in ctx.run(env=...)")
        where = sorted({f"{e.stage}/{e.step}" if e.step else f"{e.stage or '-'} ({e.data.get('op')})"
                        for e in refused})
        messages = list(dict.fromkeys(e.message for e in refused))
        return failed("declares_effects", self.subject,
                      f"{len(refused)} Context calls refused in {', '.join(where[:6])}: " + "; ".join(messages[:4]),
                      "declare what the plugin needs: " + "; ".join(fixes) +
                      " (a path: the file or a directory above it; a command: argv[0] exactly as the plugin "
                      "passes it) — or keep the work inside the product root",
                      refused=[{"message": e.message, **dict(e.data)} for e in refused[:50]])

    def _walk(self) -> None:
        """All stages; a failure that leaves the target unusable ends the walk with the rest reported skipped."""
        for index, stage in enumerate(Stage.ordered()):
            try:
                carry_on = self._stage(stage)
            except CompanionFailed as exc:
                if exc.step.plugin == self.subject:
                    self.report(failed("runs", f"{stage.value}/{exc.step.name}",
                                       f"failed when the stage ran again after its cleanup or rollback: {exc}",
                                       _FIX_CLEANUP))
                else:
                    self.report(failed("companions", stage.value, str(exc),
                                       "if this plugin's earlier steps left the target so, fix them; otherwise "
                                       "test it without the other plugins: drhost plugin-test --alone"))
                carry_on = False
            if not carry_on:
                for later in Stage.ordered()[index + 1:]:
                    if any(s.plugin == self.subject for s in self.session.stage_steps(later)):
                        self.report(skipped("runs", later.value, "not reached: an earlier check left the target "
                                                                  "unusable"))
                return

    def _forward(self, step: PlannedStep) -> None:
        outcome = self.session.run_step(step)
        if not outcome.ok and outcome.ended != "skipped":
            raise CompanionFailed(step, outcome)

    def _stage(self, stage: Stage) -> bool:
        steps = self.session.stage_steps(stage)
        mine = [s for s in steps if s.plugin == self.subject]
        if not mine:
            for step in steps:
                self._forward(step)
            return True
        record = _StageRecord()
        for step in steps:
            if step.plugin != self.subject:
                self._forward(step)
            elif not self._own_step(step, record):
                return False
        self._verify(stage, VerifyPhase.COMPLETED, "verify_completed")
        if not self._cleanup_checks(stage, steps, mine, record):
            return False
        return self._rollback_check(stage, steps, mine, record)

    # -- one of the plugin's steps ------------------------------------------------------------
    def _own_step(self, step: PlannedStep, record: _StageRecord) -> bool:
        where = f"{step.stage.value}/{step.name}"
        before = self.snapshot()
        outcome = self.session.run_step(step)
        after = self.snapshot()
        if not outcome.ok and outcome.ended != "skipped":
            self.report(failed("runs", where, f"{outcome.ended}: {outcome.message}", _FIX_RUNS,
                               run_dir=str(self.session.run_dir)))
            self._limits(step, outcome)
            return False
        changes = before.diff(after)
        self.report(passed("runs", where, f"{outcome.ended} in {outcome.duration_s:.2f} s of {step.timeout_s:g} s; "
                                          f"changed {len(changes.keys())} things on the target",
                           changed=changes.lines(limit=20)))
        self._limits(step, outcome)
        record.note(step, before, changes)
        record.durations[step.key] = outcome.duration_s
        if step.retryable:
            self._idempotent(step, after)
            self._retry_after_cut(step, after, outcome.duration_s)
        return True

    def _limits(self, step: PlannedStep, outcome: CallOutcome) -> None:
        where = f"{step.stage.value}/{step.name}"
        policy = class_policy(self.session.config.data, step.plugin_class)
        usage = outcome.detail.get("usage") or {}
        peak = usage.get("memory_bytes")
        if outcome.ended == "pids":
            self.report(failed("within_limits", where, outcome.message,
                               f"start fewer processes (threads count too): class {step.plugin_class.value} allows "
                               f"{policy.pids or 'the default number of'} at once ([class:{step.plugin_class.value}] "
                               f"pids)", usage=usage))
        elif outcome.ended == "cpu_time":
            self.report(failed("within_limits", where, outcome.message,
                               "use less CPU time in the worker process (RLIMIT_CPU ends it without cleanup)",
                               usage=usage))
        elif outcome.ended in ("memory", "killed"):
            self.report(failed("within_limits", where, outcome.message,
                               f"stay under the {policy.memory_mb} MiB of class {step.plugin_class.value} (stream "
                               f"instead of loading whole files; start fewer processes), or ask the operator for "
                               f"more in [class:{step.plugin_class.value}] memory_mb", usage=usage))
        elif outcome.ended == "timeout":
            self.report(failed("within_limits", where, f"took longer than its timeout of {step.timeout_s:g} s: "
                                                       f"{outcome.message}",
                               "make the step faster, or declare the timeout it really needs (timeout_s=...)"))
        elif not isolation(step.isolation).in_worker:
            self.report(passed("within_limits", where, f"{outcome.duration_s:.2f} s of {step.timeout_s:g} s "
                                                       f"(a thread in drhost: no memory figure of its own)"))
        else:
            memory = f"peak {peak / 2**20:.0f} MiB of {policy.memory_mb} MiB" if peak else \
                f"memory limit {policy.memory_mb} MiB"
            self.report(passed("within_limits", where, f"{memory}; {outcome.duration_s:.2f} s of "
                                                       f"{step.timeout_s:g} s", usage=usage))

    def _idempotent(self, step: PlannedStep, first: Snapshot) -> float:
        """Run the step again and compare; returns how long the second run took."""
        where = f"{step.stage.value}/{step.name}"
        outcome = self.session.run_step(step, attempt=2)
        second = self.snapshot()
        if not outcome.ok and outcome.ended != "skipped":
            self.report(failed("idempotent", where, f"the second run {outcome.ended}: {outcome.message}",
                               _FIX_IDEMPOTENT))
            return outcome.duration_s
        diff = first.diff(second)
        if diff:
            self.report(failed("idempotent", where, "a second run changed the target: " + "; ".join(diff.lines()),
                               _FIX_IDEMPOTENT, diff=diff.to_json()))
        else:
            self.report(passed("idempotent", where, "a second run left files, catalog, service and processes "
                                                    "unchanged"))
        return outcome.duration_s

    def _retry_after_cut(self, step: PlannedStep, whole: Snapshot, duration_s: float) -> None:
        where = f"{step.stage.value}/{step.name}"
        deadline = _cut_deadline(duration_s)
        cut = self.session.run_step(step, timeout_s=deadline, attempt=3)
        stopped = self._stopped_cleanly(cut)
        retry = self.session.run_step(step, attempt=4)
        after = self.snapshot()
        diff = whole.diff(after)
        if stopped is not None:
            self.report(failed("timeout_behaviour", where, stopped, _FIX_TIMEOUT))
        elif not retry.ok and retry.ended != "skipped":
            self.report(failed("timeout_behaviour", where, f"cut after {deadline:g} s, the retry {retry.ended}: "
                                                           f"{retry.message}", _FIX_TIMEOUT))
        elif diff:
            self.report(failed("timeout_behaviour", where, f"cut after {deadline:g} s and retried, the target "
                                                           f"differs from one whole run: " + "; ".join(diff.lines()),
                               _FIX_TIMEOUT, diff=diff.to_json()))
        else:
            self.report(passed("timeout_behaviour", where, self._cut_words(cut, deadline) +
                               "; the retry reached the same state as one whole run"))

    def _stopped_cleanly(self, cut: CallOutcome) -> str | None:
        """Why the cut call did not stop as it must, or None."""
        if cut.detail.get("hung_thread"):
            return (f"did not stop when asked: the thread was still running after the grace and was abandoned "
                    f"({cut.message})")
        if cut.ended not in ("ok", "timeout", "skipped", "cancelled"):
            return f"cut short, it ended {cut.ended}: {cut.message}"
        left = self.session.target.leftover_processes()
        if left:
            return f"processes outlived the stopped step: {'; '.join(left[:3])}"
        return None

    @staticmethod
    def _cut_words(cut: CallOutcome, deadline: float) -> str:
        if cut.ended == "ok":
            return f"finished within the shortened deadline of {deadline:g} s (too quick to cut)"
        return f"stopped {cut.duration_s - deadline:.2f} s after a deadline of {deadline:g} s ({cut.ended})"

    # -- the stage's compensations ------------------------------------------------------------
    def _rerun(self, steps: list[PlannedStep], *, until: PlannedStep | None = None,
               cut_s: float | None = None) -> CallOutcome | None:
        """Run the stage again (the restart a run makes); with ``until``, stop there and run it cut short."""
        for step in steps:
            if until is not None and step.key == until.key:
                return self.session.run_step(step, timeout_s=cut_s)
            outcome = self.session.run_step(step)
            if not outcome.ok and outcome.ended != "skipped":
                raise CompanionFailed(step, outcome)
        return None

    def _cleanup_checks(self, stage: Stage, steps: list[PlannedStep], mine: list[PlannedStep],
                        record: _StageRecord) -> bool:
        has_cleanup = any(s.has_cleanup for s in mine) or "drhost_cleanup" in self.hooks
        if not has_cleanup:
            self.report(skipped("cleanup_no_residue", stage.value, "no cleanup in this stage (all its steps are "
                                                                   "retryable)"))
            return True
        errors = self.session.cleanup(stage)
        now = self.snapshot()
        residue = _not_restored(record, record.with_cleanup, now)
        if errors or residue:
            self.report(failed("cleanup_no_residue", stage.value, "; ".join(errors + residue[:8]), _FIX_CLEANUP,
                               errors=errors, residue=residue))
            for step in (s for s in mine if not s.retryable):
                self.report(skipped("timeout_behaviour", f"{stage.value}/{step.name}",
                                    "not tried: the stage's cleanup already fails after a whole run"))
            self._rerun(steps)  # the rest of the walk needs the stage done; a failure here ends it
            return True
        self._rerun(steps)
        self.report(passed("cleanup_no_residue", stage.value,
                           f"after the stage's cleanup the {len(record.with_cleanup)} things changed by steps "
                           f"with a cleanup were as before; the stage then ran again"))
        return all(self._cut_then_cleanup(stage, steps, step, record) for step in mine if not step.retryable)

    def _cut_then_cleanup(self, stage: Stage, steps: list[PlannedStep], step: PlannedStep,
                          record: _StageRecord) -> bool:
        """A non-retryable step cut short: the stage's cleanup must leave no residue and the restart must succeed."""
        where = f"{stage.value}/{step.name}"
        errors = self.session.cleanup(stage)
        if errors:
            self.report(failed("timeout_behaviour", where, "the cleanup before the cut run failed: " +
                               "; ".join(errors), _FIX_CLEANUP))
            return False
        deadline = _cut_deadline(record.durations.get(step.key, 0.0))
        cut = self._rerun(steps, until=step, cut_s=deadline)
        assert cut is not None
        stopped = self._stopped_cleanly(cut)
        errors = self.session.cleanup(stage)
        residue = _not_restored(record, record.with_cleanup, self.snapshot())
        problems = ([stopped] if stopped else []) + errors + residue[:8]
        if not problems:
            self._rerun(steps)
        if problems:
            self.report(failed("timeout_behaviour", where, f"cut after {deadline:g} s: " + "; ".join(problems),
                               _FIX_TIMEOUT + "; " + _FIX_CLEANUP))
            return False
        self.report(passed("timeout_behaviour", where, self._cut_words(cut, deadline) +
                           "; the stage's cleanup left no residue and the restarted stage completed"))
        return True

    def _rollback_check(self, stage: Stage, steps: list[PlannedStep], mine: list[PlannedStep],
                        record: _StageRecord) -> bool:
        has_rollback = any(s.has_rollback for s in mine) or "drhost_rollback" in self.hooks
        if not has_rollback:
            if record.before:
                self.report(failed("rollback_restores", stage.value,
                                   f"the plugin's steps changed {len(record.before)} things and nothing rolls them "
                                   f"back", _FIX_ROLLBACK))
            else:
                self.report(passed("rollback_restores", stage.value, "the plugin changed nothing in this stage"))
            return True
        errors = self.session.rollback(stage)
        left = _not_restored(record, set(record.before), self.snapshot())
        if errors or left:
            self.report(failed("rollback_restores", stage.value, "; ".join(errors + left[:8]), _FIX_ROLLBACK,
                               errors=errors, not_restored=left))
        else:
            self.report(passed("rollback_restores", stage.value,
                               f"all {len(record.before)} things the plugin's steps changed were restored"))
        self._verify(stage, VerifyPhase.ROLLED_BACK, "verify_rolled_back")
        self._rerun(steps)  # even after a failed check: the rest of the walk needs the stage done
        return True

    def _verify(self, stage: Stage, phase: VerifyPhase, check: str) -> None:
        if "drhost_verify" not in self.hooks:
            self.report(skipped(check, stage.value, "drhost_verify not implemented"))
            return
        problems = self.session.verify(stage, phase, plugins=[self.subject]).get(self.subject, [])
        if problems:
            self.report(failed(check, stage.value, "; ".join(problems[:5]), _FIX_VERIFY, problems=problems))
        else:
            self.report(passed(check, stage.value, f"no problem {phase.value.replace('_', ' ')}"))


__all__ = ["CUT_FLOOR_S", "CUT_SHARE", "CompanionFailed", "Driver"]
