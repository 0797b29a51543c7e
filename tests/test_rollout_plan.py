"""Batches, groups and failure budgets of a fleet rollout, as rules on their own (drhost/orchestrator/_rollout.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drhost.orchestrator._rollout import Amount, Batch, Budget, RolloutError, parse_serial, plan_batches

HOSTS = [f"h{i:02d}" for i in range(1, 21)]


def _sizes(batches: list[Batch]) -> list[int]:
    return [len(b.targets) for b in batches]


@pytest.mark.parametrize(("serial", "sizes"), [
    ("100%", [20]),
    ("5", [5, 5, 5, 5]),
    ("1, 25%, 100%", [1, 5, 14]),
    ("1, 25%", [1, 5, 5, 5, 4]),
    ("30%", [6, 6, 6, 2]),
    ("1%", [1] * 20),
    ("50", [20]),
])
def test_serial_sizes_and_the_last_size_repeats(serial: str, sizes: list[int]) -> None:
    """Batch sizes follow `serial` in order, percentages of the fleet rounded down (never 0), the last repeating."""
    batches = plan_batches(HOSTS, {}, (), parse_serial(serial))
    assert _sizes(batches) == sizes
    assert [t for b in batches for t in b.targets] == sorted(HOSTS)
    assert [b.index for b in batches] == list(range(len(sizes)))


@pytest.mark.parametrize("text", ["", "0", "abc", "10 %%", "150%", "1.5", "-1", "1,,x"])
def test_bad_serial_is_refused_with_what_was_expected(text: str) -> None:
    """A serial that is not counts and percentages (1..100 %, no zero) is refused, naming the key."""
    with pytest.raises(RolloutError, match=r"rollout\.serial: expected"):
        parse_serial(text)


def test_groups_go_in_order_and_never_share_a_batch() -> None:
    """Groups are rolled out in the given order, split by serial each on its own; ungrouped targets come last."""
    group_of = {**{h: "primary" for h in HOSTS[:10]}, **{h: "standby" for h in HOSTS[10:14]}}
    batches = plan_batches(HOSTS, group_of, ("standby", "primary"), parse_serial("1, 50%"))
    assert [(b.group, len(b.targets)) for b in batches] == [
        ("standby", 1), ("standby", 2), ("standby", 1),
        ("primary", 1), ("primary", 5), ("primary", 4),
        (None, 1), (None, 3), (None, 2)]
    assert all(len({group_of.get(t) for t in b.targets}) == 1 for b in batches)


def test_groups_not_listed_follow_by_name() -> None:
    """Groups the order does not name come after the named ones, alphabetically."""
    group_of = {"a": "west", "b": "east", "c": "north"}
    batches = plan_batches(["a", "b", "c"], group_of, ("north",), parse_serial("100%"))
    assert [b.group for b in batches] == ["north", "east", "west"]


def test_group_order_naming_no_target_is_refused() -> None:
    """An ordered group no target belongs to is a mistake (a typo would silently reorder the fleet)."""
    with pytest.raises(RolloutError, match="standbye"):
        plan_batches(["a"], {"a": "standby"}, ("standbye",), parse_serial("1"))


def _budget(failed: str = "100%", failed_total: str = "100%", unreachable: str = "100%",
            unreachable_total: str = "100%") -> Budget:
    return Budget.from_config({"max_failed": failed, "max_failed_total": failed_total,
                               "max_unreachable": unreachable, "max_unreachable_total": unreachable_total})


def test_budget_allows_exactly_its_count() -> None:
    """max_failed = 1 lets one failure pass and stops at the second."""
    batch = Batch(1, None, ("a", "b", "c", "d"))
    budget = _budget(failed="1")
    assert budget.exceeded(batch, {"a": "failed", "b": "succeeded"}, 10) is None
    reason = budget.exceeded(batch, {"a": "failed", "b": "rolled_back"}, 10)
    assert reason == "2 of 4 targets failed in batch 2, more than rollout.max_failed = 1 allows (1)"


def test_percentage_budget_is_of_the_batch_and_of_the_fleet() -> None:
    """A per-batch percentage counts against the batch's size, the total one against the whole fleet."""
    batch = Batch(0, None, ("a", "b", "c", "d"))
    assert _budget(failed="25%").exceeded(batch, {"a": "failed"}, 20) is None
    assert "batch 1" in (_budget(failed="25%").exceeded(batch, {"a": "failed", "b": "failed"}, 20) or "")
    earlier = {f"x{i}": "failed" for i in range(2)}
    reason = _budget(failed_total="10%").exceeded(batch, {**earlier, "a": "failed"}, 20)
    assert reason == "3 of 20 targets failed in the run, more than rollout.max_failed_total = 10% allows (2)"


def test_unreachable_targets_have_their_own_budget() -> None:
    """Unreachable targets do not use up the failure budget, and failures do not use up theirs."""
    batch = Batch(0, None, ("a", "b", "c"))
    budget = _budget(failed="0", unreachable="1")
    assert budget.exceeded(batch, {"a": "unreachable"}, 3) is None
    assert "unreachable" in (budget.exceeded(batch, {"a": "unreachable", "b": "unreachable"}, 3) or "")
    assert "failed" in (budget.exceeded(batch, {"a": "unreachable", "c": "failed"}, 3) or "")


def test_running_and_pending_targets_do_not_count() -> None:
    """Only targets that ended count: a running target is neither failed nor fine yet."""
    batch = Batch(0, None, ("a", "b"))
    assert _budget(failed="0").exceeded(batch, {"a": "running", "b": "pending"}, 2) is None


@pytest.mark.parametrize(("text", "total", "allowed"), [("0", 10, 0), ("3", 10, 3), ("10%", 10, 1),
                                                         ("15%", 10, 1), ("100%", 7, 7), ("33.3%", 3, 0)])
def test_amount_allowed(text: str, total: int, allowed: int) -> None:
    """Budgets round down: 15 % of 10 allows one failure, not two."""
    assert Amount.parse(text, "x").allowed(total) == allowed


@pytest.mark.parametrize(("setting", "named"), [
    ("rollout.serial=0", "rollout.serial: expected batch sizes above 0"),
    ("rollout.serial=1, x", "rollout.serial"),
    ("rollout.groups=standby", "rollout.groups: expected groups that targets belong to"),
    ("rollout.max_failed=200%", "rollout.max_failed"),
])
def test_bad_rollout_settings_stop_before_anything_is_touched(drhost: Any, state_dir: Path, setting: str,
                                                              named: str) -> None:
    """A rollout setting that cannot work exits 2 with one line naming the key, and creates no run."""
    proc = drhost("upgrade", "--demo", "--set", setting)
    assert proc.returncode == 2
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert not (state_dir / "runs").exists() or not list((state_dir / "runs").iterdir())


@pytest.mark.podman
def test_plan_shows_the_batches(drhost: Any, state_dir: Path) -> None:
    """`drhost plan` lists the batches a run would go through (text and JSON)."""
    proc = drhost("plan", "--demo", "--demo-targets", "4", "--set", "rollout.serial=1, 2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [b["targets"] for b in json.loads(proc.stdout)["batches"]] == [
        ["dr-demo-1"], ["dr-demo-2", "dr-demo-3"], ["dr-demo-4"]]
