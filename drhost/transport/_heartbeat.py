"""Heartbeats that detect a dead SSH peer, and the reconnect back-off that follows.

Why not ``Transport.set_keepalive``: paramiko's keepalive is an ``ignore``-style global request that asks for no
reply, so a frozen or black-holed peer stays "connected" forever. :class:`Heartbeat` sends
``keepalive@openssh.com`` *with* ``want_reply`` (OpenSSH answers it, normally with ``REQUEST_FAILURE`` — any
answer is proof of life), measures the round trip and counts what does not come back.

How one heartbeat works (one daemon thread per connection, plus one helper thread per probe):

* A probe is ``transport.global_request("keepalive@openssh.com", wait=True)`` run in a helper thread; the
  heartbeat thread never blocks on it (paramiko's call only returns on a reply or when the transport closes,
  and a send can block on a full socket buffer). At most **one probe is outstanding**: SSH answers global
  requests in order and paramiko keeps a single completion event, so a second request would only queue
  behind the first and steal its reply.
* **Miss**: a probe not answered within its timeout is a miss; while it stays unanswered, every further
  ``interval_s`` counts one more miss. A reply (late or not) resets the count to 0.
* **Dead**: the peer is dead when no reply has come for ``dead_after_s`` (counted from the last reply, or from
  the start) while a probe is overdue — or when the misses exceed ``allowed_misses = dead_after_s //
  interval_s - 1``, whichever comes first; or at once when paramiko reports the transport closed. Then
  ``on_dead`` is called exactly once, with a :class:`DeadPeer` holding the evidence, and the thread ends.
  Bound: a peer that stops answering at time *t* is declared dead by *t* + ``dead_after_s`` (= ``interval_s``
  × (``allowed_misses`` + 1) when ``dead_after_s`` is a multiple of the interval) plus scheduling slack.

Adaptive rule (the configured interval is the ceiling, never exceeded):

* **Probe timeout** = ``min(interval_s, max(min_timeout_s, 4 × p90(RTT history)))`` — ``min_timeout_s`` is 1 s
  by default; the history is the last 20 round trips.
* **Next probe**: normally ``interval_s`` after the previous probe was *sent*. When the RTT rises sharply —
  the last RTT is more than 3× the median of the earlier history *and* at least 50 ms above it (so loopback
  jitter of a few hundred microseconds does not count), or the last probe was answered only after its
  timeout — the next probe is sent after ``interval_s / 4`` (at least 0.1 s) instead, so a degrading link is
  looked at again soon. As soon as the RTT is back in line the full interval applies again.

Socket level (belt and braces, see :func:`configure_socket`): SO_KEEPALIVE with TCP_KEEPIDLE/INTVL/CNT and
TCP_USER_TIMEOUT = ``dead_after_s`` let the kernel abort a black-holed connection (unacknowledged data) on its
own; a *frozen* peer's kernel still ACKs, so only the SSH-level heartbeat sees that one.

Reconnects: :func:`reconnect_delays` — exponential back-off with full jitter, at most ``reconnects`` values
("manual" connections have 0: a dead status-check connection waits for the operator). When a connection is
beyond recovery the step fails with :class:`NetworkFailure` (category ``network``) carrying the evidence.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, get_args

from ._base import TransportError

log = logging.getLogger(__name__)

#: The rows of the design's SSH connection table (seed 4.6.1): the control connection (locks, reachability
#: probes, stopping a killed controller's commands), uploads, plugin steps' commands and the status checks
#: (the target's resources while a step runs, the context of a timeout).
ConnectionType = Literal["control", "transfer", "plugin_exec", "status_check"]
CONNECTION_TYPES: tuple[ConnectionType, ...] = get_args(ConnectionType)
KEEPALIVE_REQUEST = "keepalive@openssh.com"
RTT_HISTORY = 20
SHARP_RISE_FACTOR = 3.0
SHARP_RISE_MIN_S = 0.05
TIMEOUT_RTT_FACTOR = 4.0
SOONER_FRACTION = 0.25
SOONER_MIN_S = 0.1
#: The reason of a peer declared dead because its connection closed, however that was noticed.
TRANSPORT_CLOSED = "transport closed"


class KeepaliveTransport(Protocol):
    """What a heartbeat needs of a transport (``paramiko.Transport`` has it)."""

    def global_request(self, kind: str, data: Any = None, wait: bool = True) -> Any: ...

    def is_active(self) -> bool: ...


@dataclass(frozen=True)
class HeartbeatSettings:
    """One row of the SSH connection table (config section ``ssh.<connection_type>``)."""

    connection_type: str
    interval_s: float
    dead_after_s: float
    reconnects: int

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.dead_after_s <= 0:
            raise ValueError(f"heartbeat interval and dead-after must be > 0, got {self.interval_s}, "
                             f"{self.dead_after_s}")
        if self.reconnects < 0:
            raise ValueError(f"reconnects must be >= 0, got {self.reconnects}")

    @property
    def allowed_misses(self) -> int:
        """Consecutive misses tolerated; one more and the peer is dead."""
        return max(0, int(self.dead_after_s // self.interval_s) - 1)

    @property
    def manual(self) -> bool:
        """No automatic reconnect: the operator decides."""
        return self.reconnects == 0

    @classmethod
    def from_config(cls, config: Any, connection_type: str) -> HeartbeatSettings:
        """Read ``ssh.<connection_type>`` from a :class:`~drhost.config.LoadedConfig` or a plain mapping (the
        whole configuration); missing keys fall back to the built-in defaults. ``"plugin exec"`` and
        ``"status-check"`` spellings are accepted."""
        from drhost.config import defaults

        key = connection_type.strip().lower().replace(" ", "_").replace("-", "_")
        if key not in CONNECTION_TYPES:
            raise ValueError(f"unknown SSH connection type {connection_type!r}; known: {', '.join(CONNECTION_TYPES)}")
        data = getattr(config, "data", config)
        row: dict[str, Any] = dict(defaults()["ssh"][key])
        if isinstance(data, Mapping):
            ssh = data.get("ssh")
            if isinstance(ssh, Mapping) and isinstance(ssh.get(key), Mapping):
                row.update(ssh[key])
        return cls(key, float(row["heartbeat_s"]), float(row["dead_after_s"]), int(row["reconnects"]))


@dataclass(frozen=True)
class Miss:
    """One heartbeat deadline that passed without a reply."""

    probe_sent_wall: float
    counted_wall: float
    waited_s: float


@dataclass(frozen=True)
class DeadPeer:
    """The evidence that a peer is dead, as data (JSON-ready through :meth:`as_dict`)."""

    connection_type: str
    reason: str
    interval_s: float
    dead_after_s: float
    allowed_misses: int
    misses: tuple[Miss, ...]
    last_reply_age_s: float | None
    last_reply_wall: float | None
    silent_for_s: float
    rtt_history_s: tuple[float, ...]
    probe_timeout_s: float
    detected_wall: float

    @property
    def miss_count(self) -> int:
        return len(self.misses)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        last = ("never answered" if self.last_reply_age_s is None
                else f"last reply {self.last_reply_age_s:.1f} s ago")
        rtts = ", ".join(f"{rtt * 1000:.1f}" for rtt in self.rtt_history_s[-5:]) or "none"
        return (f"{self.connection_type} connection dead: {self.reason}; {last}; {self.miss_count} missed "
                f"heartbeat(s) (allowed {self.allowed_misses}); interval {self.interval_s:g} s, dead after "
                f"{self.dead_after_s:g} s; recent RTTs ms: {rtts}")


class NetworkFailure(TransportError):
    """A connection is beyond recovery: the step fails as a *network* failure with the evidence attached."""

    def __init__(self, evidence: DeadPeer, *, reconnects_tried: int = 0, target: str = "") -> None:
        where = f"{target}: " if target else ""
        tried = f"; {reconnects_tried} reconnect(s) tried" if reconnects_tried else ""
        super().__init__(f"{where}{evidence.describe()}{tried}", category="network")
        self.evidence = evidence
        self.reconnects_tried = reconnects_tried
        self.target = target

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category, "target": self.target, "reconnects_tried": self.reconnects_tried,
                "evidence": self.evidence.as_dict()}


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def probe_timeout(rtts: list[float], interval_s: float, min_timeout_s: float = 1.0) -> float:
    """How long one probe may wait before it counts as a miss (see the module docstring)."""
    floor = min_timeout_s if not rtts else max(min_timeout_s, TIMEOUT_RTT_FACTOR * _p90(rtts))
    return min(interval_s, floor)


def sharp_rise(rtts: list[float]) -> bool:
    """True when the newest RTT is far above the median of the ones before it."""
    if len(rtts) < 3:
        return False
    last, before = rtts[-1], statistics.median(rtts[:-1])
    return last > SHARP_RISE_FACTOR * before and last - before > SHARP_RISE_MIN_S


def next_probe_delay(rtts: list[float], interval_s: float, *, late: bool = False) -> float:
    """Delay from one probe's send to the next: the interval, or a quarter of it after a sharp rise."""
    if late or sharp_rise(rtts):
        return min(interval_s, max(SOONER_MIN_S, interval_s * SOONER_FRACTION))
    return interval_s


@dataclass
class _Probe:
    sent: float
    sent_wall: float
    timeout_s: float
    next_miss: float
    done: threading.Event = field(default_factory=threading.Event)
    replied: float | None = None
    error: str | None = None


class Heartbeat:
    """Watch one SSH transport; call ``on_dead`` once when the peer stops answering (see the module docstring)."""

    def __init__(self, transport: KeepaliveTransport, settings: HeartbeatSettings,
                 on_dead: Callable[[DeadPeer], None], *, clock: Callable[[], float] = time.monotonic,
                 min_timeout_s: float = 1.0, start: bool = True) -> None:
        self.transport = transport
        self.settings = settings
        self.on_dead = on_dead
        self.clock = clock
        self.min_timeout_s = min_timeout_s
        self._rtts: deque[float] = deque(maxlen=RTT_HISTORY)
        self._misses: list[Miss] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._started = self.clock()
        self._last_reply: float | None = None
        self._last_reply_wall: float | None = None
        self._dead: DeadPeer | None = None
        self._probe: _Probe | None = None
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{settings.connection_type}", daemon=True)
        if start:
            self.start()

    # -- public -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._thread.is_alive() and not self._stopped.is_set():
            self._started = self.clock()
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop watching (the outstanding probe's helper thread ends with the transport)."""
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def rtts(self) -> tuple[float, ...]:
        with self._lock:
            return tuple(self._rtts)

    @property
    def misses(self) -> int:
        with self._lock:
            return len(self._misses)

    @property
    def dead(self) -> DeadPeer | None:
        return self._dead

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def last_reply_age(self) -> float | None:
        with self._lock:
            return None if self._last_reply is None else self.clock() - self._last_reply

    # -- the thread ---------------------------------------------------------------------------------------
    def _send(self, now: float) -> None:
        timeout = probe_timeout(list(self._rtts), self.settings.interval_s, self.min_timeout_s)
        probe = _Probe(sent=now, sent_wall=time.time(), timeout_s=timeout, next_miss=now + timeout)
        self._probe = probe

        def ask() -> None:
            try:
                self.transport.global_request(KEEPALIVE_REQUEST, wait=True)
                if not self.transport.is_active():
                    probe.error = TRANSPORT_CLOSED
            except (EOFError, OSError) as exc:
                # A probe sent after the peer closed but before paramiko's reader saw it fails in the send
                # (paramiko's write_all says EOFError): the same cause as a probe that returns on a closed
                # transport, so the same reason, whichever of the two sees the close first.
                log.debug("heartbeat probe of %s: %s(%s)", self.settings.connection_type, type(exc).__name__, exc)
                probe.error = TRANSPORT_CLOSED
            except Exception as exc:  # e.g. paramiko's SSHException on a stuck key exchange
                probe.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            probe.replied = self.clock()
            probe.done.set()
            self._wake.set()

        threading.Thread(target=ask, name=f"heartbeat-probe-{self.settings.connection_type}", daemon=True).start()

    def _run(self) -> None:
        next_send = self._started
        try:
            while not self._stopped.is_set():
                now = self.clock()
                probe = self._probe
                if probe is None and now >= next_send:
                    if not self.transport.is_active():
                        self._declare(TRANSPORT_CLOSED, now)  # the same reason as a probe that saw the close
                        return
                    self._send(now)
                    probe = self._probe
                if probe is not None and probe.done.is_set():
                    self._probe = None
                    if probe.error is not None:
                        self._declare(probe.error, self.clock())
                        return
                    assert probe.replied is not None
                    rtt = probe.replied - probe.sent
                    late = rtt > probe.timeout_s
                    with self._lock:
                        self._rtts.append(rtt)
                        self._last_reply, self._last_reply_wall = probe.replied, time.time()
                        self._misses.clear()
                    next_send = probe.sent + next_probe_delay(list(self._rtts), self.settings.interval_s, late=late)
                    continue
                if probe is not None and now >= probe.next_miss:
                    with self._lock:
                        self._misses.append(Miss(probe.sent_wall, time.time(), now - probe.sent))
                    probe.next_miss += self.settings.interval_s
                    continue
                silence_from = self._last_reply if self._last_reply is not None else self._started
                if probe is not None and self._misses:
                    if now - silence_from >= self.settings.dead_after_s:
                        self._declare(f"no reply for {now - silence_from:.2f} s", now)
                        return
                    if len(self._misses) > self.settings.allowed_misses:
                        self._declare(f"{len(self._misses)} consecutive heartbeats missed", now)
                        return
                wake_at = [silence_from + self.settings.dead_after_s]
                wake_at.append(probe.next_miss if probe is not None else next_send)
                self._wake.wait(max(0.005, min(wake_at) - self.clock()))
                self._wake.clear()
        except Exception:  # never let a watcher die silently
            log.exception("heartbeat for %s failed", self.settings.connection_type)

    def _declare(self, reason: str, now: float) -> None:
        if self._stopped.is_set():
            return
        with self._lock:
            silence_from = self._last_reply if self._last_reply is not None else self._started
            evidence = DeadPeer(
                connection_type=self.settings.connection_type, reason=reason,
                interval_s=self.settings.interval_s, dead_after_s=self.settings.dead_after_s,
                allowed_misses=self.settings.allowed_misses, misses=tuple(self._misses),
                last_reply_age_s=None if self._last_reply is None else now - self._last_reply,
                last_reply_wall=self._last_reply_wall, silent_for_s=now - silence_from,
                rtt_history_s=tuple(self._rtts),
                probe_timeout_s=probe_timeout(list(self._rtts), self.settings.interval_s, self.min_timeout_s),
                detected_wall=time.time())
        self._dead = evidence
        log.warning("%s", evidence.describe())
        try:
            self.on_dead(evidence)
        except Exception:
            log.exception("on_dead callback for %s failed", self.settings.connection_type)


def reconnect_delays(settings: HeartbeatSettings, base_s: float = 0.5, cap_s: float = 30.0, *,
                     rng: random.Random | None = None) -> Iterator[float]:
    """Waits before each reconnect attempt: full jitter over ``min(cap_s, base_s * 2**attempt)``; exactly
    ``settings.reconnects`` values (none for a manual connection)."""
    draw = rng or random.Random()
    for attempt in range(settings.reconnects):
        yield draw.uniform(0.0, min(cap_s, base_s * (2 ** attempt)))


def configure_socket(sock: socket.socket, settings: HeartbeatSettings) -> None:
    """TCP keepalive and TCP_USER_TIMEOUT matched to the heartbeat settings (where the platform has them)."""
    idle = max(1, int(settings.interval_s))
    count = max(1, settings.allowed_misses + 1)
    intvl = max(1, int(max(1.0, settings.dead_after_s - idle) // count))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", intvl), ("TCP_KEEPCNT", count),
                        ("TCP_USER_TIMEOUT", int(settings.dead_after_s * 1000))):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
