"""How long steps usually take, per target, and the remaining-time estimates built on it.

The history is one small JSON file shared by every drhost run on this controller::

    {"format": 1, "targets": {"dr-demo-1": {"upgrade/dr-database/upgrade_db_schema": [41.2, 39.8]}}}

It only feeds estimates, so it must never stop an upgrade: an unreadable file is moved aside,
logged and replaced by an empty history rather than raised.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import WordedError, message_phrase
from ..state import atomic_write, state_root

__all__ = [
    "HISTORY_FORMAT",
    "KEEP_PER_STEP",
    "StepHistory",
    "default_history_path",
    "eta_extra",
    "remaining_for",
    "remaining_s",
]

HISTORY_FORMAT = 1
# Enough runs for a stable median, few enough that a changed product or host shows within weeks.
KEEP_PER_STEP = 20
#: The fleet-wide samples of a step kept for a target with none of its own: the newest, so that the estimate
#: costs the same in a fleet of ten or of a thousand and follows a product that changed.
KEEP_POOLED = 200
#: A run writes the file at most this often while targets finish (and once more at its end): the file holds
#: the whole fleet, so writing it at every target's end made a fleet run's cost grow with targets².
FLUSH_EVERY_S = 10.0

_LOG = logging.getLogger(__name__)

_Durations = dict[str, dict[str, list[float]]]


def default_history_path() -> Path:
    return state_root() / "history" / "step-durations.json"


def _usable(duration_s: float) -> bool:
    # bool is an int; a True that slipped in is a bug upstream, not a duration of one second.
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)):
        return False
    return math.isfinite(duration_s) and duration_s >= 0


class _Unusable(WordedError):
    """The history file exists but cannot be used; the message says why."""


def _parse(data: bytes) -> _Durations:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Unusable.worded("not valid JSON ({error}); truncated or corrupt", error=str(exc)) from None
    if not isinstance(document, dict):
        raise _Unusable.worded("expected a JSON object, found {kind}", kind=type(document).__name__)
    if document.get("format") != HISTORY_FORMAT:
        raise _Unusable.worded("expected format {expected}, found {found}", expected=HISTORY_FORMAT,
                               found=repr(document.get("format")))
    targets = document.get("targets")
    if not isinstance(targets, dict):
        raise _Unusable.worded("'targets' is missing or not an object")
    parsed: _Durations = {}
    for target, steps in targets.items():
        if not isinstance(steps, dict):
            raise _Unusable.worded("target {target}: expected an object of step keys", target=repr(target))
        for step_key, durations in steps.items():
            if not isinstance(durations, list) or not all(
                    isinstance(d, (int, float)) and not isinstance(d, bool) for d in durations):
                raise _Unusable.worded("target {target}, step {step}: expected a list of numbers",
                                       target=repr(target), step=repr(step_key))
            # Python's json accepts NaN/Infinity; such values, like negatives, carry no timing
            # information, so they are dropped without condemning the whole file.
            kept = [float(d) for d in durations if _usable(d)][-KEEP_PER_STEP:]
            if kept:
                parsed.setdefault(target, {})[step_key] = kept
    return parsed


def _encode(durations: _Durations) -> bytes:
    document = {"format": HISTORY_FORMAT, "targets": durations}
    return json.dumps(document, sort_keys=True, allow_nan=False, ensure_ascii=False).encode("utf-8") + b"\n"


def _merged(durations: _Durations, samples: _Durations) -> _Durations:
    """``durations`` with ``samples`` appended per target and step, each series cut to its newest
    :data:`KEEP_PER_STEP` (changed in place and returned)."""
    for name, steps in samples.items():
        for step_key, values in steps.items():
            series = durations.setdefault(name, {}).setdefault(step_key, [])
            series.extend(values)
            del series[:-KEEP_PER_STEP]
    return durations


class StepHistory:
    """Durations of successful step runs, per target and step key, persisted in one JSON file.

    Reads are served from memory: the file is read on first use and again on :meth:`reload`
    or :meth:`record`, so a run sees a stable history instead of re-reading for each estimate.
    """

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path if path is not None else default_history_path()
        self._clock = clock
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._cache: _Durations | None = None
        # Every target's samples per step key (the newest KEEP_POOLED), for targets with none of their own.
        self._pooled: dict[str, list[float]] = {}
        # Samples noted by a run and not yet written: target -> step key -> durations, oldest first.
        self._pending: _Durations = {}
        self._flushed_at: float | None = None
        # Medians already taken, by (target, step key) and by step key for the pooled ones: every step asks for
        # the estimates of all the steps after it, and a median sorts its samples; a new sample clears them.
        self._medians: dict[tuple[str | None, str], float | None] = {}
        # Steps of several targets finish on different threads of one run.
        self._mutex = threading.Lock()

    def note(self, target: str, step_key: str, duration_s: float) -> None:
        """Add one successful run's duration for this run's estimates at once, and to the file at a later
        :meth:`flush`. Samples not yet written when the controller is killed are lost: they only make later
        estimates less exact."""
        if not _usable(duration_s):
            _LOG.debug("ignoring unusable duration %r for %s %s", duration_s, target, step_key)
            return
        with self._mutex:
            for durations in (self._loaded(), self._pending):
                _merged(durations, {target: {step_key: [float(duration_s)]}})
            self._pool(step_key, [float(duration_s)])
            self._medians.pop((target, step_key), None)
            self._medians.pop((None, step_key), None)

    def flush(self, target: str | None = None) -> None:
        """Write what was noted, in one read-merge-write under the file's lock. ``target``: a target has
        ended, so write if the last write is :data:`FLUSH_EVERY_S` old (else a later flush writes it); None:
        write now (a run's end). An I/O error is logged, not raised, as for :meth:`record`."""
        with self._mutex:
            now = self._clock()
            if target is not None and self._flushed_at is not None and now - self._flushed_at < FLUSH_EVERY_S:
                return
            pending, self._pending = self._pending, {}
            if not pending:
                return
            self._flushed_at = now
            try:
                with self._exclusive():
                    # Re-read under the lock: another run may have recorded since this one last read.
                    durations = _merged(self._read(locked=True), pending)
                    atomic_write(self.path, _encode(durations), mode=0o600)
                self._set_cache(durations)
            except OSError as exc:
                _LOG.warning("could not record the durations of %s in step history %s: %s",
                             ", ".join(sorted(pending)), self.path, exc)

    def record(self, target: str, step_key: str, duration_s: float) -> None:
        """Add one successful run's duration and write it at once (:meth:`note`, then :meth:`flush`); keep the
        newest :data:`KEEP_PER_STEP` per step. An I/O error (full disk, read-only state dir) is logged, not
        raised: a lost sample only makes later estimates slightly worse, a raised error would fail a step."""
        self.note(target, step_key, duration_s)
        self.flush()

    def expected_s(self, target: str, step_key: str) -> float | None:
        """The median duration of ``step_key`` on ``target``, else on the fleet (its newest
        :data:`KEEP_POOLED` samples), else None."""
        with self._mutex:
            own_key = (target, step_key)
            if own_key in self._medians:
                return self._medians[own_key]
            own = self._loaded().get(target, {}).get(step_key)
            if own:
                median = self._medians[own_key] = float(statistics.median(own))
                return median
            # A target new to this controller most likely behaves like the others of the fleet.
            pooled_key: tuple[str | None, str] = (None, step_key)
            if pooled_key not in self._medians:
                series = self._pooled.get(step_key)
                self._medians[pooled_key] = float(statistics.median(series)) if series else None
            return self._medians[pooled_key]

    def reload(self) -> None:
        """Read the file again, picking up what other runs recorded."""
        with self._mutex:
            self._set_cache(self._read(locked=False))

    def _loaded(self) -> _Durations:
        """The durations in memory, read from the file on first use (call with the mutex held)."""
        if self._cache is None:
            self._set_cache(self._read(locked=False))
        assert self._cache is not None
        return self._cache

    def _set_cache(self, durations: _Durations) -> None:
        """Serve estimates from ``durations`` plus what this run noted and did not write yet."""
        self._cache = _merged(durations, copy.deepcopy(self._pending))
        self._medians = {}
        self._pooled = {}
        for steps in self._cache.values():
            for step_key, series in steps.items():
                self._pool(step_key, series)

    def _pool(self, step_key: str, samples: list[float]) -> None:
        pooled = self._pooled.setdefault(step_key, [])
        pooled.extend(samples)
        del pooled[:-KEEP_POOLED]

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self._ensure_directory()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            # Closing the descriptor releases the flock.
            os.close(fd)

    def _ensure_directory(self) -> None:
        directory = self.path.parent
        if directory.is_dir():
            # Not ours to tighten: a caller may keep the history in a directory it manages.
            return
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkdir's mode is filtered by the umask; durations reveal the fleet's names, so be exact.
        os.chmod(directory, 0o700)

    def _read(self, *, locked: bool) -> _Durations:
        """The file's durations; a corrupt file is moved aside and reads as empty.

        With ``locked`` (inside :meth:`record`) an I/O error propagates, so that a file which
        merely could not be read is never overwritten by a history of one sample.
        """
        try:
            return self._load_or_quarantine(locked=locked)
        except OSError as exc:
            if locked:
                raise
            _LOG.warning("cannot read step history %s (%s); estimating without it", self.path, exc)
            return {}

    def _load_or_quarantine(self, *, locked: bool) -> _Durations:
        try:
            return _parse(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except _Unusable as exc:
            if locked:
                self._quarantine(message_phrase(exc))
                return {}
        # Moving the file aside must happen under the lock: without it, a run that read the
        # corrupt file could move away the good file another run has just written in its place.
        with self._exclusive():
            return self._load_or_quarantine(locked=True)

    def _quarantine(self, problem: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            # Two bad files within a second: keep both for whoever investigates.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
            n += 1
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        _LOG.warning("step history %s is unusable (%s); moved it to %s and starting with an empty history",
                     self.path, problem, aside)


def remaining_s(expected_s: float | None, elapsed_s: float, fraction_done: float | None) -> float | None:
    """Seconds the current step still needs, or None when there is nothing honest to say.

    With progress (0 < fraction < 1) the progress-based estimate ``elapsed * (1 - f) / f`` is
    blended with history as ``f * progress + (1 - f) * max(0, expected - elapsed)``: early
    progress is noisy (a slow start extrapolates to hours), so history dominates at first and
    progress takes over as it becomes reliable. Without progress, history alone answers until
    the step outlasts it; then the step is slower than usual and None says so, where 0 would
    claim it is about to finish.
    """
    elapsed = max(0.0, elapsed_s)
    expected = expected_s if expected_s is not None and _usable(expected_s) else None
    if fraction_done is not None and math.isfinite(fraction_done):
        if fraction_done >= 1:
            return 0.0
        if fraction_done > 0:
            by_progress = elapsed * (1 - fraction_done) / fraction_done
            if expected is None:
                return by_progress
            by_history = max(0.0, expected - elapsed)
            return fraction_done * by_progress + (1 - fraction_done) * by_history
    if expected is None or elapsed > expected:
        return None
    return expected - elapsed


def remaining_for(steps: Iterable[tuple[str, str]], history: StepHistory,
                  fallback_s: Mapping[str, float] | None = None) -> float | None:
    """The summed expected duration of the (target, step key) pairs still to run.

    History comes first, then ``fallback_s`` by step key. If any step has neither, the answer is
    None rather than the sum of the known ones: that sum would be shown as an ETA while
    being an understatement of unknown size, and "unknown" is the truthful answer.
    """
    total = 0.0
    for target, step_key in steps:
        estimate = history.expected_s(target, step_key)
        if estimate is None and fallback_s is not None:
            fallback = fallback_s.get(step_key)
            estimate = fallback if fallback is not None and _usable(fallback) else None
        if estimate is None:
            return None
        total += estimate
    return total


def eta_extra(*, expected_s: float | None, retry_wait_s: float, retries_left: int, stage_expected_s: float | None,
              restarts_left: int) -> dict[str, object]:
    """What a step's ETA foresees beyond its current attempt, as the fields of its progress events.

    The policy allows ``retries_left`` more attempts of the step, each costing its typical duration plus the
    class's retry wait, and ``restarts_left`` restarts of its stage, each costing the stage's typical duration.
    These are upper bounds, not expectations: a run that needs none of them finishes on the plain ETA; a run
    that needs all of them finishes near ``remaining + retries_s + restart_s``. A cost whose durations were
    never timed is None (unknown), never a guess.
    """
    retries_s = None if expected_s is None else retries_left * (expected_s + max(0.0, retry_wait_s))
    restart_s = None if stage_expected_s is None else restarts_left * stage_expected_s
    return {"retries_left": retries_left, "retries_s": None if retries_s is None else round(retries_s, 1),
            "stage_restart": restarts_left > 0, "restarts_left": restarts_left,
            "restart_s": None if restart_s is None or restarts_left == 0 else round(restart_s, 1)}
