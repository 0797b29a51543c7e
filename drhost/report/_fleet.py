"""The live view of a fleet: where each batch and host stands, and the time left per host, batch and run."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from ..events import Event
from ..i18n import Translate
from ..status import status_label

#: Events after which a host is done for this run (its status is the part after the dot).
_ENDINGS = {
    "target.succeeded": "succeeded", "target.up_to_date": "up to date", "target.interrupted": "interrupted",
    "target.aborted": "aborted", "target.rollback_queued": "rollback queued", "target.inconsistent": "INCONSISTENT",
    "target.locked": "locked", "target.refused": "REFUSED", "rollback.verified": "rolled back",
}


@dataclass
class _Batch:
    index: int
    group: str | None
    targets: tuple[str, ...]
    ended: bool = False
    counts: dict[str, int] = field(default_factory=dict)


class FleetBoard:
    """Batches and hosts from the run's events; ETAs from the per-host estimates of ``host_eta``.

    A batch's time left is its slowest running host's plus, for hosts still queued
    behind ``forks``, as many waves of a typical host as they need; the run's adds
    the later batches the same way, and the pauses between them. A typical host is
    the median of the hosts that finished in this run, else of the hosts' expected
    totals (their steps' usual durations); unknown stays unknown.
    """

    def __init__(self, host_eta: Callable[[str, float], float | None]) -> None:
        self._host_eta = host_eta
        self.batches: list[_Batch] = []
        self.forks = 1
        self.pause_s = 0.0
        self.status: dict[str, str] = {}
        self._started: dict[str, float] = {}
        self._took: dict[str, float] = {}
        self._expected_total: dict[str, float] = {}
        self.stopped: str | None = None

    @property
    def several(self) -> bool:
        return len(self.batches) > 1

    def see(self, event: Event) -> None:
        d = event.data
        name = event.event
        if name == "run.started":
            self.batches = [_Batch(i, b.get("group"), tuple(b.get("targets", ())))
                            for i, b in enumerate(d.get("batches") or [])]
            self.forks = max(1, int(d.get("forks") or 1))
            self.pause_s = float(d.get("pause_s") or 0.0)
            for batch in self.batches:
                for member in batch.targets:
                    self.status.setdefault(member, "waiting")
        elif name == "rollout.batch_finished" and 0 <= int(d.get("batch", -1)) < len(self.batches):
            batch = self.batches[int(d["batch"])]
            batch.ended = True
            batch.counts = dict(d.get("counts") or {})
        elif name == "rollout.stopped":
            self.stopped = str(d.get("reason") or event.message)
        target = event.target
        if target is None:
            return
        if name == "target.started":
            self.status[target] = "running"
            self._started[target] = event.ts
        elif name == "step.started" and target not in self._expected_total:
            if d.get("expected_s") is not None and d.get("rest_after_s") is not None:
                self._expected_total[target] = float(d["expected_s"]) + float(d["rest_after_s"])
        elif name == "rollback.started":
            self.status[target] = "rolling back"
        elif name in _ENDINGS:
            self.status[target] = _ENDINGS[name]
            if target in self._started and name in ("target.succeeded", "target.up_to_date"):
                self._took[target] = event.ts - self._started[target]

    # -- estimates ------------------------------------------------------------------
    def typical_s(self) -> float | None:
        if self._took:
            return statistics.median(self._took.values())
        if self._expected_total:
            return statistics.median(self._expected_total.values())
        return None

    def _active(self, target: str) -> bool:
        return self.status.get(target) in ("running", "rolling back")

    def batch_eta(self, index: int, now: float) -> float | None:
        batch = self.batches[index]
        if batch.ended:
            return 0.0
        running = [t for t in batch.targets if self._active(t)]
        queued = [t for t in batch.targets if self.status.get(t) == "waiting"]
        etas = [self._host_eta(t, now) for t in running]
        if any(eta is None for eta in etas):
            return None
        longest = max((eta for eta in etas if eta is not None), default=0.0)
        if not queued:
            return longest
        typical = self.typical_s()
        if typical is None:
            return None
        return longest + math.ceil(len(queued) / self.forks) * typical

    def run_eta(self, now: float) -> float | None:
        if self.stopped is not None:
            return None
        left = [b for b in self.batches if not b.ended]
        if not left:
            return None
        first = self.batch_eta(left[0].index, now)
        typical = self.typical_s()
        if first is None or (len(left) > 1 and typical is None):
            return None
        later = sum(math.ceil(len(b.targets) / self.forks) * (typical or 0.0) + self.pause_s for b in left[1:])
        return first + later

    # -- lines ------------------------------------------------------------------------
    def lines(self, now: float, host_line: Callable[[str], str], height: int,
              clock: Callable[[float], str], t: Translate) -> list[str]:
        """A header per batch; the host lines of the batch under way, cut to fit ``height`` lines."""
        out: list[str] = []
        current = next((b for b in self.batches if not b.ended), None)
        for batch in self.batches:
            title = (t("batch {number}/{count} [{group}]") if batch.group else t("batch {number}/{count}")).format(
                number=batch.index + 1, count=len(self.batches), group=batch.group)
            if batch.ended:
                counts = ", ".join(f"{v} {status_label(k, t)}" for k, v in batch.counts.items() if v)
                out.append(t("{title}: done — {counts}").format(title=title, counts=counts))
            elif batch is current:
                done = sum(1 for h in batch.targets if self.status.get(h) not in ("waiting", "running",
                                                                                   "rolling back"))
                eta = self.batch_eta(batch.index, now)
                eta_text = t(", ETA {time}").format(time=clock(eta)) if eta is not None else ""
                out.append(t("{title}: {done}/{count} hosts done{eta}").format(
                    title=title, done=done, count=len(batch.targets), eta=eta_text))
                out.extend(self._host_lines(batch, host_line, max(1, height - len(self.batches) - 1), t))
            else:
                out.append(t("{title}: {count} hosts waiting").format(title=title, count=len(batch.targets)))
        if self.stopped:
            out.append(t("rollout stopped: {reason}").format(reason=self.stopped))
        return out

    def _host_lines(self, batch: _Batch, host_line: Callable[[str], str], room: int, t: Translate) -> list[str]:
        # Hosts at work first, then finished ones, then the queue: what an operator watches.
        order = {"running": 0, "rolling back": 0, "waiting": 2}
        targets = sorted(batch.targets, key=lambda h: (order.get(self.status.get(h, "waiting"), 1), h))
        if len(targets) <= room:
            return [host_line(h) for h in targets]
        shown = targets[:room - 1]
        rest = targets[room - 1:]
        waiting = sum(1 for h in rest if self.status.get(h) == "waiting")
        return [*(host_line(h) for h in shown),
                t("  … {count} more hosts ({waiting} waiting, {done} done)").format(
                    count=len(rest), waiting=waiting, done=len(rest) - waiting)]

__all__ = ["FleetBoard"]
