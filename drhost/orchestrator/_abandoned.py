"""Core threads abandoned after a timeout, and the targets they may still be changing.

A core plugin runs in a thread of the host, and a thread cannot be killed: a step that ignores its stop is
left running (``ThreadRunner``: ``detail["hung_thread"]``). Until it returns, or the drhost process ends,
whatever it does to its target happens after drhost recorded the target. So the target's record keeps an
entry per abandoned thread (``abandoned_threads``: plugin, call, when, and the drhost process — pid and
start time — that holds it), and every reader derives from it what can be said now:

- the thread is still running (this process) or its drhost process is still alive (another process):
  the target **may still be changing** (``still_changing``);
- the thread returned, or its process is gone: the target may have changed after drhost recorded it
  (``abandoned``), a note that stays with the record.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psutil

from drhost_hookspecs import OperationName, Stage

from ..errors import phrase
from ..supervisor import CallOutcome

if TYPE_CHECKING:
    from ._env import RunEnv

#: Abandoned threads of this process, by entry id: what this process can still check exactly.
_LIVE: dict[str, threading.Thread] = {}
_LIVE_LOCK = threading.Lock()

#: The sentence a later reader gets once the process that abandoned the thread has ended.
ABANDONED_NOTE = "a core thread was abandoned while running; the target may have changed after drhost recorded it"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _what(op: str, stage: str | None, step: str | None) -> str:
    if op == "run_step" and step:
        return f"step {step}"
    if step:
        return f"{op.replace('_step', '')} of step {step}"
    return f"drhost_{op}" + (f" ({stage})" if stage else "")


def entry_label(entry: Mapping[str, Any]) -> str:
    """``dr-core step x abandoned at 12:03:04``."""
    what = _what(str(entry.get("op")), entry.get("stage"), entry.get("step"))
    return f"{entry.get('plugin')} {what} abandoned at {_clock(float(entry.get('at') or 0))}"


def _process_alive(pid: Any, started: Any) -> bool:
    """Whether the drhost process that abandoned the thread still runs (same pid and start time)."""
    if not isinstance(pid, int):
        return False
    try:
        process = psutil.Process(pid)
        return started is None or abs(process.create_time() - float(started)) < 1.0
    except (psutil.Error, ValueError):
        return False


def abandoned_view(record: Mapping[str, Any]) -> dict[str, list[str]]:
    """What a target's abandoned threads mean now, seen from this process.

    ``still_changing``: threads that may still be changing the target; ``abandoned``: threads that are over
    (returned, or their drhost process ended), whose target may have changed after drhost recorded it.
    """
    still: list[str] = []
    over: list[str] = []
    for entry in record.get("abandoned_threads") or []:
        label = entry_label(entry)
        with _LIVE_LOCK:
            mine = _LIVE.get(str(entry.get("id")))
        if entry.get("returned"):
            over.append(f"{label}; the thread returned at {_clock(float(entry['returned']))}: the target may have "
                        f"changed after drhost recorded it")
        elif mine is not None and entry.get("pid") == os.getpid():
            if mine.is_alive():
                still.append(f"{label} (thread still running)")
            else:
                over.append(f"{label}; the thread has returned since: the target may have changed after drhost "
                            f"recorded it")
        elif _process_alive(entry.get("pid"), entry.get("pid_started")):
            still.append(f"{label} (thread left running in drhost pid {entry.get('pid')}, which is still running)")
        else:
            over.append(f"{ABANDONED_NOTE} ({label}; drhost pid {entry.get('pid')} has ended)")
    return {"still_changing": still, "abandoned": over}


class AbandonedThreads:
    """This run's abandoned core threads: recorded with their target as they happen, followed until they return.

    Writes go to the run's state only while this process drives the run (between ``drive``'s start and
    :meth:`close`); after that the state may belong to another controller, and readers derive the rest
    from the entries (:func:`abandoned_view`).
    """

    def __init__(self, env: RunEnv) -> None:
        self.env = env
        self._lock = threading.Lock()
        self._open = True
        self.count = 0

    def note(self, outcome: CallOutcome, *, target: str, plugin: str, op: OperationName, stage: Stage | None,
             step: str | None) -> None:
        """Record the thread a call left behind (``detail["hung_thread"]``); no-op for any other outcome."""
        if not outcome.detail.get("hung_thread"):
            return
        ident = outcome.detail.get("thread_ident")
        thread = next((t for t in threading.enumerate() if t.ident == ident), None) if ident is not None else None
        started: float | None = None
        with contextlib.suppress(psutil.Error):
            started = psutil.Process().create_time()
        entry: dict[str, Any] = {
            "id": secrets.token_hex(6), "plugin": plugin, "op": op, "stage": stage.value if stage else None,
            "step": step, "thread": thread.name if thread is not None else outcome.detail.get("thread"),
            "at": time.time(), "pid": os.getpid(), "pid_started": started, "returned": None,
        }
        if thread is not None:
            with _LIVE_LOCK:
                _LIVE[entry["id"]] = thread
        with self._lock:
            if not self._open:
                return
            self.count += 1
            with self.env.state.mutate_target(target) as record:
                record.setdefault("abandoned_threads", []).append(entry)
        label = entry_label(entry)
        self.env.emit("target.still_changing", target=target, stage=stage, step=step, plugin=plugin,
                      message=phrase("{label}: the thread did not stop and keeps running inside drhost; {target} "
                                     "may still be changing until it returns or drhost exits", label=label,
                                     target=target),
                      thread=entry["thread"], pid=entry["pid"])
        if thread is not None:
            threading.Thread(target=self._await, args=(thread, target, entry), daemon=True,
                             name=f"abandoned-{entry['id']}").start()

    def _await(self, thread: threading.Thread, target: str, entry: dict[str, Any]) -> None:
        thread.join()
        returned = time.time()
        with self._lock:
            if not self._open:
                return  # the run is no longer driven by this process: readers find the thread gone
            with self.env.state.mutate_target(target) as record:
                for found in record.get("abandoned_threads") or []:
                    if found.get("id") == entry["id"]:
                        found["returned"] = returned
        self.env.emit("target.thread_returned", target=target, plugin=str(entry["plugin"]),
                      message=phrase("{label}: the thread returned at {time}; {target} may have changed after "
                                     "drhost recorded it", label=entry_label(entry), time=_clock(returned),
                                     target=target))

    def close(self) -> None:
        """The run is no longer driven by this process: stop writing to its state."""
        with self._lock:
            self._open = False
