"""The watchdog's clock: cadences, the 85 %/95 % warnings, the deadline sample, one thread for all steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from drhost.watchdog import Environment
from drhost.watchdog._watchdog import StepWatch, Watchdog, WatchdogSettings

SETTINGS = WatchdogSettings(progress_every_s=10, remaining_every_s=30, resources_every_s=60, warn_at=0.85,
                            urgent_at=0.95)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((name, data))

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [data for event, data in self.events if event == name]


def make_watch(recorder: Recorder, timeout_s: float = 1800, settings: WatchdogSettings = SETTINGS,
               sample: Any = None) -> StepWatch:
    return StepWatch(timeout_s=timeout_s, started=0.0, emit=recorder, settings=settings,
                     sample=sample or (lambda: Environment(10, 20, 30)),
                     estimate=lambda elapsed, fraction: None if fraction is None else elapsed * (1 - fraction)
                     / fraction)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run_clock(watch: StepWatch, until: float, step: float = 1.0) -> None:
    now = 0.0
    while now <= until:
        watch.tick(now)
        now += step


def test_cadences_follow_the_configured_periods() -> None:
    """Progress every 10 s, remaining every 30 s, resources every 60 s, counted from the step's start."""
    recorder = Recorder()
    watch = make_watch(recorder)
    run_clock(watch, 119)
    # Resources are sampled off the watchdog thread, and a tick skips the sample while the previous one still
    # runs. The fake clock passes 60 s in microseconds, so the 120 s sample would be skipped or not depending
    # on whether the 60 s sampling thread happens to be inside its sample: let it finish, as 60 real seconds do.
    assert wait_for(lambda: len(recorder.named("watchdog.resources")) == 1)
    for now in range(120, 126):
        watch.tick(float(now))
    assert [d["elapsed_s"] for d in recorder.named("watchdog.progress")] == [10.0 * i for i in range(1, 13)]
    assert [d["elapsed_s"] for d in recorder.named("watchdog.remaining")] == [30.0, 60.0, 90.0, 120.0]
    assert wait_for(lambda: len(recorder.named("watchdog.resources")) == 2)
    assert sorted(d["elapsed_s"] for d in recorder.named("watchdog.resources")) == [60.0, 120.0]
    assert recorder.named("watchdog.resources")[0]["environment"] == {"cpu_percent": 10, "memory_percent": 20,
                                                                  "disk_io_percent": 30}


def test_warnings_fire_once_at_85_and_95_percent_of_the_budget() -> None:
    """A 30 min budget warns at 25.5 min with 4.5 min left, then urgently at 28.5 min with 1.5 min left."""
    recorder = Recorder()
    watch = make_watch(recorder)
    run_clock(watch, 1800, step=0.5)
    warnings = recorder.named("watchdog.warning")
    assert [(w["percent"], w["urgent"], w["elapsed_s"], w["remaining_s"]) for w in warnings] == [
        (85, False, 1530.0, 270.0), (95, True, 1710.0, 90.0)]


def test_progress_events_carry_the_steps_own_progress_and_eta() -> None:
    """After the step reports 9 of 20 tables, the progress event has 45 % and the ETA refined by it."""
    recorder = Recorder()
    watch = make_watch(recorder)
    watch.report_progress(9, 20, "tables")
    watch.tick(10.0)
    (event,) = recorder.named("watchdog.progress")
    assert (event["percent"], event["done"], event["total"], event["unit"]) == (45.0, 9, 20, "tables")
    assert event["remaining_s"] == pytest.approx(10 * 11 / 9, abs=0.1)
    assert event["budget_percent"] == pytest.approx(100 * 10 / 1800, abs=0.1)


def test_nothing_is_scheduled_past_the_deadline() -> None:
    """A 20 s step gets one progress line, both warnings, and nothing after its deadline."""
    recorder = Recorder()
    watch = make_watch(recorder, timeout_s=20)
    run_clock(watch, 60, step=0.5)
    assert [d["elapsed_s"] for d in recorder.named("watchdog.progress")] == [10.0]
    assert recorder.named("watchdog.remaining") == []
    assert [w["elapsed_s"] for w in recorder.named("watchdog.warning")] == [17.0, 19.0]
    assert watch.next_due() is None


def test_thresholds_of_one_or_more_disable_a_warning() -> None:
    """warn_at = 1 turns the first warning off; the urgent one still comes."""
    recorder = Recorder()
    settings = WatchdogSettings(progress_every_s=10, remaining_every_s=30, resources_every_s=60, warn_at=1.0,
                                urgent_at=0.9)
    watch = make_watch(recorder, timeout_s=100, settings=settings)
    run_clock(watch, 100)
    assert [w["percent"] for w in recorder.named("watchdog.warning")] == [90]


def test_deadline_sample_is_taken_when_the_deadline_passes() -> None:
    """At 100 % the target is measured while the hung work still runs; the report reads that sample."""
    recorder = Recorder()
    measured_at: list[float] = []

    def sample() -> Environment:
        measured_at.append(time.monotonic())
        return Environment(99, 50, 7)

    watch = make_watch(recorder, timeout_s=20, sample=sample)
    watch.tick(20.0)
    environment, controller = watch.environment_at_deadline(wait_s=5)
    assert environment == Environment(99, 50, 7) and controller is None
    assert len(measured_at) == 1


def test_one_thread_serves_every_watch_on_time() -> None:
    """With real time, two watches of 1 s and 2 s get their warnings at 85 %/95 % within 0.2 s."""
    dog = Watchdog(WatchdogSettings(progress_every_s=100, remaining_every_s=100, resources_every_s=100))
    recorders = [Recorder(), Recorder()]
    started = time.monotonic()
    watches = [dog.watch(timeout_s=timeout, emit=rec, sample=Environment, estimate=lambda e, f: None,
                         started=started) for timeout, rec in zip((1.0, 2.0), recorders, strict=True)]
    try:
        time.sleep(2.3)
        for timeout, rec in zip((1.0, 2.0), recorders, strict=True):
            elapsed = [w["elapsed_s"] for w in rec.named("watchdog.warning")]
            assert elapsed == pytest.approx([0.85 * timeout, 0.95 * timeout], abs=0.2)
        assert sum(1 for t in threading.enumerate() if t.name == "watchdog") == 1
    finally:
        for watch in watches:
            dog.release(watch)
        dog.close()


def test_released_watch_emits_nothing_more() -> None:
    """A step that finished early is released: no warning for it ever comes."""
    dog = Watchdog(WatchdogSettings(progress_every_s=100, remaining_every_s=100, resources_every_s=100))
    recorder = Recorder()
    watch = dog.watch(timeout_s=0.5, emit=recorder, sample=Environment, estimate=lambda e, f: None)
    dog.release(watch)
    time.sleep(0.7)
    dog.close()
    assert recorder.events == []


def test_only_a_watch_due_sooner_wakes_the_serving_thread() -> None:
    """Watches falling due after the thread's next wake-up, and every release, leave it asleep (no pass over all
    watches twice a step); a watch due sooner wakes it, and its warning comes on time."""
    dog = Watchdog(WatchdogSettings(progress_every_s=100, remaining_every_s=100, resources_every_s=100))
    first = dog.watch(timeout_s=100, emit=Recorder(), sample=Environment, estimate=lambda e, f: None)
    assert wait_for(lambda: dog._wakes_at is not None)
    notified: list[int] = []
    notify = dog._changed.notify

    def counted(n: int = 1) -> None:
        notified.append(n)
        notify(n)

    dog._changed.notify = counted  # type: ignore[method-assign]
    try:
        for _ in range(20):
            dog.release(dog.watch(timeout_s=200, emit=Recorder(), sample=Environment, estimate=lambda e, f: None))
        assert notified == []
        recorder = Recorder()
        soon = dog.watch(timeout_s=0.5, emit=recorder, sample=Environment, estimate=lambda e, f: None)
        assert len(notified) == 1
        assert wait_for(lambda: len(recorder.named("watchdog.warning")) == 2, timeout=3.0)
        assert [w["elapsed_s"] for w in recorder.named("watchdog.warning")] == pytest.approx([0.425, 0.475], abs=0.2)
        dog.release(soon)
    finally:
        dog.release(first)
        dog.close()


def test_settings_come_from_the_watchdog_section() -> None:
    """[watchdog] keys set the cadences and thresholds; absent keys keep the design's defaults."""
    settings = WatchdogSettings.from_config({"watchdog": {"progress_every_s": 2, "urgent_at": 0.9}})
    assert settings == WatchdogSettings(progress_every_s=2, remaining_every_s=30, resources_every_s=60,
                                        warn_at=0.85, urgent_at=0.9)
