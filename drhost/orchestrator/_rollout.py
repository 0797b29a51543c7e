"""A fleet in batches: serial sizes, ordered groups, and failure budgets that stop the rollout.

Pure planning and accounting — no threads, no I/O — so the rules can be read and
tested on their own. ``_run.drive`` applies them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import phrase
from ..i18n import N_
from ._statuses import TargetStatus

#: Target statuses counted against the failure budget: the target did not end at the new version. ``refused``
#: (a changed host key, rejected credentials) is here, never under UNREACHABLE: a host that may be an impostor
#: is not an outage, and must not hide behind (or use up) the network's budget.
FAILED: tuple[TargetStatus, ...] = ("failed", "rolled_back", "aborted", "inconsistent", "rollback_failed", "locked",
                                     "refused")
#: Counted against the unreachable budget instead: the network, not the upgrade, failed.
UNREACHABLE = ("unreachable",)

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


class RolloutError(ValueError):
    """A rollout setting that cannot be read: which key of ``[rollout]``, what was expected, what was found."""

    def __init__(self, key: str, expected: str, found: object) -> None:
        super().__init__(f"rollout.{key}: expected {expected}, found {found!r}")
        self.key = key
        self.expected = expected
        self.found = found


@dataclass(frozen=True)
class Amount:
    """A number of targets, or a percentage of some total."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str, key: str) -> Amount:
        match = _AMOUNT.match(str(text))
        if match is None:
            raise RolloutError(key, N_("a number of targets (3) or a percentage (25%)"), text)
        value, percent = float(match.group(1)), bool(match.group(2))
        if percent and value > 100:
            raise RolloutError(key, N_("a percentage of at most 100%"), text)
        if not percent and value != int(value):
            raise RolloutError(key, N_("a whole number of targets"), text)
        return cls(value, percent)

    def batch_size(self, total: int) -> int:
        """How many targets a batch of this size takes out of ``total``: at least one."""
        if not self.percent:
            return max(1, int(self.value))
        # Rounded down as Ansible does, but a batch is never empty.
        return max(1, math.floor(total * self.value / 100))

    def allowed(self, total: int) -> int:
        """How many of ``total`` may fail before the budget is exceeded."""
        if not self.percent:
            return int(self.value)
        return math.floor(total * self.value / 100 + 1e-9)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)}"


def parse_serial(text: str) -> tuple[Amount, ...]:
    """``"1, 25%, 100%"``: the batch sizes in order; the last one repeats until every target is placed."""
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise RolloutError("serial", N_("batch sizes such as '1, 25%, 100%'"), text)
    amounts = tuple(Amount.parse(part, "serial") for part in parts)
    if any(a.value == 0 for a in amounts):
        raise RolloutError("serial", N_("batch sizes above 0 (a batch of 0 targets never ends)"), text)
    return amounts


def parse_groups(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in str(text).split(",") if name.strip())


@dataclass(frozen=True)
class Batch:
    """One batch: its place in the rollout, its group (or None) and its targets."""

    index: int
    group: str | None
    targets: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "group": self.group, "targets": list(self.targets)}


def plan_batches(targets: Sequence[str], group_of: Mapping[str, str | None], group_order: Sequence[str],
                 serial: Sequence[Amount]) -> list[Batch]:
    """Targets in batches: groups in ``group_order`` (the others after, by name; ungrouped last), each group
    split by ``serial`` on its own, so a batch never spans two groups and a group ends before the next starts.

    Percentages are of the group's size: ``1, 50%`` on a standby site of 4 and a primary of 10 gives
    1, 2, 1 (standby) then 1, 5, 4 (primary).
    """
    names = sorted(targets)
    present = {group_of.get(name) for name in names}
    unknown = [g for g in group_order if g not in present]
    if unknown:
        known = ", ".join(sorted(g for g in present if g)) or "none: no target sets group"
        raise RolloutError("groups", phrase("groups that targets belong to ({known})", known=known), ", ".join(unknown))
    ordered_groups: list[str | None] = [*group_order, *sorted(g for g in present if g and g not in group_order)]
    if None in present:
        ordered_groups.append(None)
    batches: list[Batch] = []
    for group in ordered_groups:
        members = [name for name in names if group_of.get(name) == group]
        taken = 0
        position = 0
        while taken < len(members):
            size = serial[min(position, len(serial) - 1)].batch_size(len(members))
            batches.append(Batch(len(batches), group, tuple(members[taken:taken + size])))
            taken += size
            position += 1
    return batches


@dataclass(frozen=True)
class Budget:
    """How many targets may fail, or be unreachable, per batch and in the whole run, before the rollout stops."""

    failed_per_batch: Amount
    failed_total: Amount
    unreachable_per_batch: Amount
    unreachable_total: Amount

    @classmethod
    def from_config(cls, rollout: Mapping[str, object]) -> Budget:
        return cls(
            Amount.parse(str(rollout["max_failed"]), "max_failed"),
            Amount.parse(str(rollout["max_failed_total"]), "max_failed_total"),
            Amount.parse(str(rollout["max_unreachable"]), "max_unreachable"),
            Amount.parse(str(rollout["max_unreachable_total"]), "max_unreachable_total"),
        )

    def exceeded(self, batch: Batch, statuses: Mapping[str, str], fleet_size: int) -> str | None:
        """Why the rollout must stop now, given the statuses so far; None while within budget.

        Only targets that ended count; a running target is neither failed nor fine yet.
        """
        in_batch = [statuses.get(name, "pending") for name in batch.targets]
        everywhere = list(statuses.values())
        checks = (
            (sum(s in FAILED for s in in_batch), self.failed_per_batch, len(batch.targets),
             f"batch {batch.index + 1}", "failed", "rollout.max_failed"),
            (sum(s in FAILED for s in everywhere), self.failed_total, fleet_size, "the run", "failed",
             "rollout.max_failed_total"),
            (sum(s in UNREACHABLE for s in in_batch), self.unreachable_per_batch, len(batch.targets),
             f"batch {batch.index + 1}", "unreachable", "rollout.max_unreachable"),
            (sum(s in UNREACHABLE for s in everywhere), self.unreachable_total, fleet_size, "the run",
             "unreachable", "rollout.max_unreachable_total"),
        )
        for count, amount, total, where, kind, key in checks:
            allowed = amount.allowed(total)
            if count > allowed:
                return (f"{count} of {total} targets {kind} in {where}, more than {key} = {amount} allows "
                        f"({allowed})")
        return None


def batches_for(config: Mapping[str, Any]) -> list[Batch]:
    """The batches of a run with ``config``: its targets, their ``group`` and ``[rollout]``."""
    rollout = config["rollout"]
    targets = config["targets"]
    group_of = {name: (str(t["group"]) if t.get("group") else None) for name, t in targets.items()}
    return plan_batches(list(targets), group_of, parse_groups(str(rollout["groups"])),
                        parse_serial(str(rollout["serial"])))


__all__ = [
    "FAILED",
    "UNREACHABLE",
    "Amount",
    "Batch",
    "Budget",
    "RolloutError",
    "batches_for",
    "parse_groups",
    "parse_serial",
    "plan_batches",
]
