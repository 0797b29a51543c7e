"""How the fleet driver walks batches: who starts, when it stops, approvals, and a defect in one target."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from drhost.config import defaults
from drhost.events import Event, EventBus
from drhost.orchestrator import RunEnv
from drhost.orchestrator._fleet import Fleet, rollout_record
from drhost.orchestrator._rollout import Batch, parse_serial, plan_batches
from drhost.plan import Plan
from drhost.state import RunState, new_run_id


def _env(targets: list[str], serial: str, events: list[Event], **rollout: object) -> RunEnv:
    batches = plan_batches(targets, {}, (), parse_serial(serial))
    body = {"targets": {name: {"status": "pending"} for name in targets}, "rollout": rollout_record(batches)}
    state = RunState.create(new_run_id(), body)
    bus = EventBus()
    bus.subscribe(events.append)
    config = {"rollout": {**defaults()["rollout"], "serial": serial, **rollout}, "run": defaults()["run"]}
    return RunEnv(state=state, plan=Plan((), ()), config=config, package=None, bus=bus,  # type: ignore[arg-type]
                  decide=lambda target, stage, message: "rollback", logger=logging.getLogger("test"))


def _one(env: RunEnv, outcomes: dict[str, str], started: list[str]) -> Callable[[str], str]:
    def one(name: str) -> str:
        started.append(name)
        status = outcomes.get(name, "succeeded")
        if status == "boom":
            raise RuntimeError("a defect")
        with env.state.mutate() as body:
            body["targets"][name]["status"] = status
        return status
    return one


def test_nothing_starts_after_the_budget_is_exceeded(state_dir: Path) -> None:
    """With one target at a time, the failure of the first stops the batch: the others are never started."""
    events: list[Event] = []
    env = _env(["a", "b", "c", "d"], "3", events, max_failed="0")
    started: list[str] = []
    outcome = Fleet(env, _one(env, {"a": "failed"}, started), forks=1, approve=None).run()
    assert started == ["a"]
    assert outcome.stopped is not None and "1 of 3 targets failed in batch 1" in outcome.stopped
    (stopped,) = [e for e in events if e.event == "rollout.stopped"]
    assert stopped.data["not_started"] == ["b", "c", "d"]
    assert env.state.get("rollout")["stopped"]["not_started"] == ["b", "c", "d"]


def test_targets_already_running_finish_when_the_budget_is_exceeded(state_dir: Path) -> None:
    """With two at a time, the target running beside the failing one is not abandoned."""
    events: list[Event] = []
    env = _env(["a", "b", "c"], "3", events, max_failed="0")
    release = threading.Event()
    started: list[str] = []

    def one(name: str) -> str:
        started.append(name)
        if name == "b":
            release.wait(10)  # still running when a's failure is counted
            return "succeeded"
        release.set()
        return "failed"

    outcome = Fleet(env, one, forks=2, approve=None).run()
    assert sorted(started) == ["a", "b"] and outcome.results == {"a": "failed", "b": "succeeded"}


def test_a_defect_in_one_target_interrupts_that_target_only(state_dir: Path) -> None:
    """An exception escaping one target's flow marks it interrupted (resumable) and the others go on."""
    events: list[Event] = []
    env = _env(["a", "b", "c"], "100%", events)
    started: list[str] = []
    outcome = Fleet(env, _one(env, {"b": "boom"}, started), forks=1, approve=None).run()
    assert outcome.results == {"a": "succeeded", "b": "interrupted", "c": "succeeded"}
    assert env.state.get("targets")["b"]["status"] == "interrupted"
    assert any(e.event == "target.interrupted" and "RuntimeError: a defect" in e.message for e in events)


def test_approval_is_asked_before_every_later_batch(state_dir: Path) -> None:
    """approve = true: the first batch starts, each later one only once the callback says yes."""
    events: list[Event] = []
    env = _env(["a", "b", "c"], "1", events, approve=True)
    asked: list[int] = []

    def approve(batch: Batch, count: int) -> bool:
        asked.append(batch.index)
        return batch.index == 1

    started: list[str] = []
    outcome = Fleet(env, _one(env, {}, started), forks=1, approve=approve).run()
    assert asked == [1, 2] and started == ["a", "b"]
    assert outcome.waiting is not None and outcome.waiting.index == 2
    assert env.state.get("rollout")["waiting"] == 2 and env.state.get("rollout")["approved"] == 1


def test_a_stop_during_the_pause_ends_the_rollout(state_dir: Path) -> None:
    """Ctrl-C while waiting between batches starts nothing more."""
    events: list[Event] = []
    env = _env(["a", "b"], "1", events, pause_s=30)
    started: list[str] = []
    threading.Timer(0.5, env.stop.set).start()
    Fleet(env, _one(env, {}, started), forks=1, approve=None).run()
    assert started == ["a"]
    assert [e.event for e in events if e.event.startswith("rollout.")][-1] == "rollout.paused"


@pytest.mark.parametrize("done", [["a"], ["a", "b"]])
def test_whole_batches_are_skipped_on_resume(state_dir: Path, done: list[str]) -> None:
    """A batch whose targets are all whole (an earlier drive did them) is not driven again."""
    events: list[Event] = []
    env = _env(["a", "b", "c"], "1", events)
    with env.state.mutate() as body:
        for name in done:
            body["targets"][name]["status"] = "succeeded"
    started: list[str] = []
    Fleet(env, _one(env, {}, started), forks=1, approve=None).run()
    assert started == [n for n in ["a", "b", "c"] if n not in done]
    assert [e.data["batch"] for e in events if e.event == "rollout.batch_started"] == list(range(len(done), 3))


