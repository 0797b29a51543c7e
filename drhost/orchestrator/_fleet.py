"""Drive a fleet batch by batch: ``forks`` targets at a time within a batch, the failure budget checked as each
target ends, a pause or an approval between batches. Where a batch stands is in the run's state, so a resume
continues with the same batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ._env import RunEnv
from ._locks import WHOLE
from ._rollout import FAILED, UNREACHABLE, Batch, Budget

#: (the batch waiting, how many batches there are) -> whether the operator lets it start.
ApproveBatch = Callable[[Batch, int], bool]


@dataclass
class FleetOutcome:
    """How the batches went: each driven target's status, and why the rollout stopped early (if it did)."""

    results: dict[str, str] = field(default_factory=dict)
    #: The budget that was exceeded, in words; None when the rollout was not stopped by a budget.
    stopped: str | None = None
    #: The batch waiting for the operator's approval (the run is resumable), or None.
    waiting: Batch | None = None


def rollout_record(batches: list[Batch]) -> dict[str, Any]:
    """What a run keeps about its batches from the start: the batches, approvals, a stop."""
    return {"batches": [b.to_json() for b in batches], "approved": 0, "waiting": None, "stopped": None,
            "current": None}


def batches_of(record: Mapping[str, Any]) -> list[Batch]:
    return [Batch(int(b["index"]), b.get("group"), tuple(b["targets"])) for b in record["batches"]]


def _counts(statuses: Mapping[str, str], names: tuple[str, ...]) -> dict[str, int]:
    ended = [statuses[n] for n in names if n in statuses]
    return {"succeeded": sum(s in WHOLE and s != "rolled_back" for s in ended),
            "failed": sum(s in FAILED for s in ended), "unreachable": sum(s in UNREACHABLE for s in ended),
            "not_started": sum(n not in statuses for n in names)}


class Fleet:
    """Runs ``one(target) -> status`` over the run's batches under its ``[rollout]`` settings."""

    def __init__(self, env: RunEnv, one: Callable[[str], str], *, forks: int,
                 approve: ApproveBatch | None) -> None:
        self.env = env
        self.one = one
        self.forks = forks
        self.approve = approve
        self.settings = env.config["rollout"]
        self.budget = Budget.from_config(self.settings)

    def _record(self) -> dict[str, Any]:
        with self.env.state.reading() as body:
            return dict(body["rollout"])

    def _update(self, **changes: Any) -> None:
        with self.env.state.mutate() as body:
            body["rollout"].update(changes)

    def _status(self, name: str) -> str:
        with self.env.state.reading_target(name) as record:
            return str(record["status"])

    def run(self) -> FleetOutcome:
        record = self._record()
        batches = batches_of(record)
        fleet_size = sum(len(b.targets) for b in batches)
        outcome = FleetOutcome()
        self._update(stopped=None, waiting=None)
        drove_one = False
        for batch in batches:
            if self.env.stop.is_set():
                break
            if all(self._status(n) in WHOLE for n in batch.targets):
                continue  # done in an earlier drive of this run
            if not self._may_start(batch, len(batches), record):
                outcome.waiting = batch
                return outcome
            if drove_one and float(self.settings["pause_s"]) > 0:
                pause = float(self.settings["pause_s"])
                self.env.emit("rollout.paused", message=f"waiting {pause:g} s before batch {batch.index + 1}",
                              batch=batch.index, seconds=pause)
                if self.env.stop.wait(pause):
                    break
            self._batch(batch, len(batches), fleet_size, outcome)
            drove_one = True
            if outcome.stopped is not None or self.env.stop.is_set():
                break
        self._update(current=None)
        return outcome

    def _may_start(self, batch: Batch, count: int, record: Mapping[str, Any]) -> bool:
        if not self.settings["approve"] or batch.index <= int(record.get("approved", 0)):
            return True
        if self.approve is not None and self.approve(batch, count):
            self._update(approved=batch.index)
            self.env.emit("rollout.approved", message=f"batch {batch.index + 1} of {count} approved",
                          batch=batch.index)
            return True
        self._update(waiting=batch.index)
        self.env.emit("rollout.waiting_approval", batch=batch.index, targets=list(batch.targets),
                      message=f"batch {batch.index + 1} of {count} ({len(batch.targets)} targets: "
                              f"{', '.join(batch.targets[:5])}{' ...' if len(batch.targets) > 5 else ''}) waits "
                              f"for approval: drhost resume {self.env.state.run_id}")
        return False

    def _batch(self, batch: Batch, count: int, fleet_size: int, outcome: FleetOutcome) -> None:
        self._update(current=batch.index)
        started = time.monotonic()
        self.env.emit("rollout.batch_started", batch=batch.index, batches=count, group=batch.group,
                      targets=list(batch.targets),
                      message=f"batch {batch.index + 1} of {count}"
                              f"{f' (group {batch.group})' if batch.group else ''}: {len(batch.targets)} targets")
        queue = list(batch.targets)
        running: dict[Future[str], str] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.forks, len(queue))),
                                thread_name_prefix="target") as pool:
            while queue or running:
                while queue and len(running) < self.forks and outcome.stopped is None \
                        and not self.env.stop.is_set():
                    name = queue.pop(0)
                    running[pool.submit(self.one, name)] = name
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    outcome.results[name] = self._result(name, future)
                if outcome.stopped is None:
                    reason = self.budget.exceeded(batch, outcome.results, fleet_size)
                    if reason is not None:
                        # Targets already running finish (stopping them midway would leave them between versions);
                        # nothing else starts.
                        outcome.stopped = reason
                        left = [n for n in queue] + [b for later in self._later(batch) for b in later.targets]
                        self._update(stopped={"reason": reason, "batch": batch.index, "ts": time.time(),
                                              "not_started": left})
                        self.env.emit("rollout.stopped", batch=batch.index, reason=reason, not_started=left,
                                      message=f"rollout stopped: {reason}; {len(left)} targets not started")
                        queue.clear()
        counts = _counts(outcome.results, batch.targets)
        self.env.emit("rollout.batch_finished", batch=batch.index, batches=count,
                      seconds=round(time.monotonic() - started, 3), counts=counts,
                      message=f"batch {batch.index + 1} of {count} finished: "
                              + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v))

    def _result(self, name: str, future: Future[str]) -> str:
        """The target's status; a defect in drhost that escaped its flow stops that target only, resumably."""
        try:
            return future.result()
        except Exception as exc:
            self.env.logger.exception("driving %s failed", name)
            message = f"drhost could not go on with this target: {type(exc).__name__}: {exc} (see debug.log)"
            with self.env.state.mutate_target(name) as record:
                record["status"] = "interrupted"
                record.setdefault("errors", []).append({"ts": time.time(), "message": message,
                                                        "action": "target interrupted; resume or roll back"})
            self.env.emit("target.interrupted", target=name, message=message)
            return "interrupted"

    def _later(self, batch: Batch) -> list[Batch]:
        return [b for b in batches_of(self._record()) if b.index > batch.index]


__all__ = ["ApproveBatch", "Fleet", "FleetOutcome", "batches_of", "rollout_record"]
