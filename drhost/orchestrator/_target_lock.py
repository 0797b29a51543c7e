"""One upgrade per target at a time, across controllers: a lock file in the target's ``{root}/.drhost/``.

The lock lives on the target, not on a controller, because two controllers share nothing but the target.
Every operation is one constant ``/bin/sh`` script run through the session, with the path and the
contents passed as positional arguments, so no value is ever parsed by a shell.

How the scripts stay safe when controllers race:

- Taking a free lock creates the file under ``set -C`` (noclobber), which ``sh`` performs as an
  ``O_CREAT|O_EXCL`` open: of any number of racing controllers exactly one creates it.
- Every change to an existing lock (a takeover by ``--break-lock`` or by the same run resuming, a
  refresh, a release) first takes a mutex on the target, ``lock.mutex``, a directory made with
  ``mkdir`` (atomic, fails if it exists). Inside it the script checks the lock is still what the
  caller judged (the exact bytes for a takeover, our token for refresh and release) and then replaces
  it by rename or removes it. Check and change are thus one step for every other changer, and the
  rename means the lock never disappears during a change, so a controller waiting to take a free lock
  cannot slip in.
- The mutex is held for milliseconds. One older than 10 s was left by a killed script and is removed;
  two waiters removing the same leftover at the same moment is the one race left, and it needs a
  killed script first. A holder that loses its lock anyway finds out at its next refresh, which raises.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import posixpath
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import NoReturn

import psutil

from ..errors import RefusedError, phrase
from ..i18n import N_
from ..transport import TargetSession, TransportError

__all__ = ["LockOwner", "TargetLock", "TargetLocked"]

log = logging.getLogger(__name__)

_SCRIPT_TIMEOUT_S = 60.0
# Rounds of "create, else read and decide" before giving up on a lock that keeps changing under us.
_ATTEMPTS = 10
# A lock read as empty or unparseable may be one being written right now (the exclusive create and
# the write are two steps): look again this many times before calling it garbage.
_UNREADABLE_RETRIES = 3
_UNREADABLE_PAUSE_S = 0.1

# Shared by the scripts. ``state`` reports an existing lock: target clock and file mtime come from the
# same machine, so the lock's age needs no agreement between controller and target clocks, and the
# contents travel as hex so that garbage arrives byte for byte and can be compared exactly.
# ``enter`` takes the mutex described in the module docstring; it waits on the target, not in
# round trips from the controller.
_PRELUDE = r"""
state() {
    hex=$(od -An -tx1 -v 2>/dev/null < "$1") || exit 4
    mtime=$(stat -c %Y -- "$1" 2>/dev/null || stat -f %m -- "$1" 2>/dev/null || echo -)
    printf '%s %s\n%s\n' "$(date +%s)" "$mtime" "$hex"
}
age() {
    t=$(stat -c %Y -- "$1" 2>/dev/null || stat -f %m -- "$1" 2>/dev/null) || { echo 0; return; }
    echo $(( $(date +%s) - t ))
}
enter() {
    m="$1.mutex"
    n=0
    until mkdir -- "$m" 2>/dev/null; do
        [ -d "${1%/*}" ] || exit 4
        n=$((n + 1))
        # About 20 s: past the 10 s after which a leftover mutex is removed below.
        if [ "$n" -gt 400 ]; then
            printf 'another drhost has held %s for too long\n' "$m" >&2
            exit 6
        fi
        if [ "$(age "$m")" -gt 10 ]; then rmdir -- "$m" 2>/dev/null; continue; fi
        sleep 0.05 2>/dev/null || sleep 1
    done
    trap 'rmdir -- "$m" 2>/dev/null' EXIT
    trap 'exit 1' HUP INT TERM
}
"""

# $1 lock path, $2 contents. 0 created; 3 exists (state follows); 4 vanished before it could be read.
_ACQUIRE = _PRELUDE + r"""
# 700: .drhost holds drhost's private files; an existing directory keeps the mode it has.
mkdir -p -m 700 -- "${1%/*}" || exit 2
set -C
if err=$( { printf '%s' "$2" > "$1"; } 2>&1 ); then exit 0; fi
if [ -e "$1" ] || [ -h "$1" ]; then state "$1"; exit 3; fi
printf '%s\n' "$err" >&2
exit 2
"""

# $1 lock path, $2 hex of the lock the caller judged, $3 new contents. 0 taken; 4 gone; 5 changed since.
_TAKEOVER = _PRELUDE + r"""
[ -e "$1" ] || [ -h "$1" ] || exit 4
enter "$1"
[ -e "$1" ] || [ -h "$1" ] || exit 4
[ "$(od -An -tx1 -v < "$1" | tr -d ' \n')" = "$2" ] || exit 5
tmp="$1.new.$$"
printf '%s' "$3" > "$tmp" || { rm -f -- "$tmp"; exit 2; }
mv -f -- "$tmp" "$1"
"""

# $1 lock path, $2 our token, $3 new contents. 0 refreshed; 3 someone else's (state follows); 4 gone.
_REFRESH = _PRELUDE + r"""
[ -e "$1" ] || [ -h "$1" ] || exit 4
enter "$1"
grep -qF -- "$2" 2>/dev/null < "$1" || { state "$1"; exit 3; }
tmp="$1.new.$$"
printf '%s' "$3" > "$tmp" || { rm -f -- "$tmp"; exit 2; }
mv -f -- "$tmp" "$1"
"""

# $1 lock path, $2 our token. 0 removed or nothing there; 3 someone else's lock, left in place; 4 gone.
_RELEASE = _PRELUDE + r"""
[ -e "$1" ] || [ -h "$1" ] || exit 0
enter "$1"
if grep -qF -- "$2" 2>/dev/null < "$1"; then rm -f -- "$1"; exit 0; fi
if [ -e "$1" ] || [ -h "$1" ]; then exit 3; fi
"""

# $1 lock path. 3 exists (state follows); 4 no lock.
_READ = _PRELUDE + r"""
state "$1"
exit 3
"""

#: Tokens of the locks TargetLock objects of this process hold now: what makes our own pid's lock judgeable.
_HELD_HERE: set[str] = set()
_HELD_LOCK = threading.Lock()



_OWNER_KEYS = ("run_id", "controller", "pid", "user", "since", "token")


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(text: str) -> datetime:
    # Python 3.10's fromisoformat does not read a trailing "Z".
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return parsed


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _this_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # No name for our uid (a container without a passwd entry): the uid still identifies us.
        return str(os.getuid())


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        # A zombie has exited: it only waits for its parent to collect the status.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclass(frozen=True)
class LockOwner:
    """Who holds a target's lock: the run, and where and as whom its controller runs."""

    run_id: str
    controller: str
    pid: int
    user: str
    since: str
    token: str
    # Heartbeat written by refresh(); ``since`` stays the moment the lock was taken.
    refreshed: str | None = None

    @classmethod
    def for_this_process(cls, run_id: str) -> LockOwner:
        """An owner naming this process, with a fresh token."""
        return cls(run_id=run_id, controller=socket.gethostname(), pid=os.getpid(), user=_this_user(),
                   since=_utc_now(), token=secrets.token_hex(16))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LockOwner:
        """Parse a lock file's contents; ValueError saying what is wrong if it is not a drhost lock."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = [key for key in _OWNER_KEYS if key not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        pid = data["pid"]
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise ValueError(f"pid is {pid!r}, not an integer")
        for key in ("run_id", "controller", "user", "since", "token"):
            if not isinstance(data[key], str) or not data[key]:
                raise ValueError(f"{key} is {data[key]!r}, not a non-empty string")
            # These end up in messages on the operator's terminal: no escape sequence may ride along.
            if not data[key].isprintable():
                raise ValueError(f"{key} is {data[key]!a}, which has control characters")
        refreshed = data.get("refreshed")
        if refreshed is not None and not isinstance(refreshed, str):
            raise ValueError(f"refreshed is {refreshed!r}, not a string")
        for stamp in (data["since"], refreshed):
            if stamp is not None:
                _parse_utc(stamp)
        return cls(run_id=data["run_id"], controller=data["controller"], pid=pid, user=data["user"],
                   since=data["since"], token=data["token"], refreshed=refreshed)

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.controller} as {self.user}, since {self.since})"


def _refusal(target: str, path: str, owner: LockOwner | None, stale: bool, why: str, lost: bool
             ) -> tuple[str, dict[str, object]]:
    """The refusal's English template and the fields it fills (the CLI says it in the operator's language)."""
    fields: dict[str, object] = {"target": target, "path": path, "why": why,
                                 "who": owner.describe() if owner is not None else "an unknown owner"}
    if lost:
        return (N_("target {target}: this run's lock {path} was taken away ({why}); it is now held by {who}: stop "
                "driving {target} and check which run should"), fields)
    if stale:
        return (N_("target {target} is locked by {who}, lock file {path}; the lock looks stale ({why}): check that no "
                "drhost is driving {target}, then run again with --break-lock"), fields)
    if owner is None:
        return N_("target {target} is locked by {who}, lock file {path}; {why}: wait and run again"), fields
    fields.update(run=owner.run_id, controller=owner.controller)
    if why:
        return (N_("target {target} is locked by {who}, lock file {path} ({why}): wait for that run to finish, or "
                "check it with drhost status {run} on {controller}"), fields)
    return (N_("target {target} is locked by {who}, lock file {path}: wait for that run to finish, or check it with "
            "drhost status {run} on {controller}"), fields)


class TargetLocked(RefusedError):
    """Another run holds the target's lock (or took ours away); says who and what the operator can do."""

    def __init__(self, target: str, path: str, owner: LockOwner | None, *, stale: bool, why: str = "",
                 lost: bool = False) -> None:
        self.target = target
        self.path = path
        self.owner = owner
        self.stale = stale
        self.why = why
        self.lost = lost
        self.template, self.fields = _refusal(target, path, owner, stale, why, lost)
        super().__init__(self.template.format(**self.fields))


@dataclass(frozen=True)
class _Seen:
    """An existing lock as one look at the target found it."""

    raw: bytes
    target_now: float | None
    mtime: float | None

    @property
    def owner(self) -> LockOwner | None:
        try:
            return LockOwner.from_json(self.raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    def age_s(self, owner: LockOwner) -> float:
        """Seconds since the freshest sign of life: the heartbeat in the file, or the file's mtime."""
        ages = [(datetime.now(timezone.utc) - _parse_utc(owner.refreshed or owner.since)).total_seconds()]
        if self.target_now is not None and self.mtime is not None:
            ages.append(self.target_now - self.mtime)
        # The freshest evidence wins: a lock is stale only when every clock agrees it is old.
        return min(ages)


def _parse_state(stdout: str) -> _Seen:
    head, _, body = stdout.partition("\n")
    fields = head.split()

    def number(index: int) -> float | None:
        try:
            return float(fields[index])
        except (IndexError, ValueError):
            return None

    try:
        raw = bytes.fromhex("".join(body.split()))
    except ValueError:
        # A target whose od printed something else: judged unreadable, and a takeover, which compares
        # the real bytes on the target, then refuses to replace it.
        raw = b""
    return _Seen(raw=raw, target_now=number(0), mtime=number(1))


class TargetLock:
    """The lock that keeps a second run (from this or any other controller) off a target."""

    def __init__(self, session: TargetSession, *, target: str, root: str, run_id: str,
                 stale_after_s: float = 600.0) -> None:
        if not run_id:
            raise ValueError("run_id must not be empty")
        self._session = session
        self.target = target
        self.run_id = run_id
        self.stale_after_s = stale_after_s
        self.path = posixpath.join(root, ".drhost", "lock")
        self._held: LockOwner | None = None
        # refresh() may run on a heartbeat thread while the main thread releases.
        self._mutex = threading.Lock()

    def _set_held(self, owner: LockOwner | None) -> None:
        with _HELD_LOCK:
            if self._held is not None:
                _HELD_HERE.discard(self._held.token)
            if owner is not None:
                _HELD_HERE.add(owner.token)
        self._held = owner

    @contextlib.contextmanager
    def _claiming(self, token: str) -> Iterator[None]:
        """The token counts as held here from before its lock is written: another thread of this process
        that reads the lock in between must not judge it abandoned. Dropped again unless the lock was taken."""
        with _HELD_LOCK:
            _HELD_HERE.add(token)
        try:
            yield
        finally:
            with _HELD_LOCK:
                if self._held is None or self._held.token != token:
                    _HELD_HERE.discard(token)

    @property
    def held(self) -> LockOwner | None:
        """The owner this lock wrote, while it believes it holds the target."""
        return self._held

    def _script(self, script: str, *args: str, ok: tuple[int, ...]) -> tuple[int, str]:
        result = self._session.run(["/bin/sh", "-c", script, "drhost-lock", self.path, *args],
                                   timeout=_SCRIPT_TIMEOUT_S)
        if result.returncode not in ok:
            self._fail(phrase("exit {status}: {stderr}", status=result.returncode,
                              stderr=result.stderr.strip() or phrase("no message")))
        return result.returncode, result.stdout

    def _fail(self, problem: str) -> NoReturn:
        raise TransportError.worded("target {target}: lock {path}: {problem}", init={"category": "file"},
                                    target=self.target, path=self.path, problem=problem)

    def _judge(self, seen: _Seen) -> tuple[bool, str]:
        """Whether a lock of another run looks abandoned, and the evidence."""
        owner = seen.owner
        if owner is None:
            return True, "unreadable lock file"
        if owner.controller == socket.gethostname():
            if owner.pid == os.getpid():
                # This process: its lock is gone exactly when no TargetLock here holds the token any more
                # (an earlier drive of this process ended without releasing, as an interrupted run does).
                with _HELD_LOCK:
                    if owner.token not in _HELD_HERE:
                        return True, f"no lock of this process (pid {owner.pid}) holds it any more"
            elif not _pid_alive(owner.pid):
                return True, f"process {owner.pid} is gone from {owner.controller}"
        age = seen.age_s(owner)
        if age > self.stale_after_s:
            last = owner.refreshed or owner.since
            return True, (f"not refreshed for {_duration(age)} (last sign of life {last}), "
                          f"more than {_duration(self.stale_after_s)}")
        return False, ""

    def acquire(self, *, break_lock: bool = False) -> LockOwner | None:
        """Take the target's lock. Returns None when it was free; the previous owner when this run
        resumes its own lock or breaks another's (``break_lock``); raises :class:`TargetLocked` when
        another run holds it. A broken lock that was unreadable also returns None (it is logged).

        ``break_lock`` replaces the lock this call finds first, stale or not, and no other: a lock that
        replaced it meanwhile is refused. Two breakers racing over one lock thus break it once; one that
        starts after the other has won breaks the winner's lock, which the winner's refresh() reports."""
        with self._mutex:
            unreadable = 0
            last: _Seen | None = None
            to_break: bytes | None = None
            for _ in range(_ATTEMPTS):
                candidate = LockOwner.for_this_process(self.run_id)
                with self._claiming(candidate.token):
                    code, out = self._script(_ACQUIRE, candidate.to_json(), ok=(0, 3, 4))
                    if code == 0:
                        self._set_held(candidate)
                if code == 0:
                    return None
                if code == 4:
                    continue  # released between our create and our read: try to create it again
                seen = last = _parse_state(out)
                owner = seen.owner
                if owner is None and unreadable < _UNREADABLE_RETRIES:
                    unreadable += 1
                    time.sleep(_UNREADABLE_PAUSE_S)
                    continue
                stale, why = self._judge(seen)
                if owner is not None and owner.run_id == self.run_id and stale:
                    # Our own run, from a controller that is provably gone: resume with a new owner. One that
                    # may still be alive (a copy of the run resumed elsewhere) is refused like any other run.
                    if self._take_over(seen, candidate):
                        log.info("target %s: run %s resumes its lock (was %s: %s)", self.target, self.run_id,
                                 owner.describe(), why)
                        return owner
                    continue
                if owner is not None and owner.run_id == self.run_id and not break_lock:
                    raise TargetLocked(self.target, self.path, owner, stale=False,
                                       why="the same run, from another drhost that is not provably gone")
                # Break only the lock first found: one that replaced it since belongs to a run that has
                # just started (perhaps another breaker), which this --break-lock was never about.
                if not break_lock or to_break not in (None, seen.raw):
                    raise TargetLocked(self.target, self.path, owner, stale=stale, why=why)
                to_break = seen.raw
                if self._take_over(seen, candidate):
                    log.warning("target %s: broke the lock %s of %s (%s)", self.target, self.path,
                                owner.describe() if owner else "an unknown owner",
                                why if stale else "it did not look stale")
                    return owner
            if last is not None:
                owner = last.owner
                raise TargetLocked(self.target, self.path, owner, stale=False,
                                   why=f"the lock changed {_ATTEMPTS} times while drhost tried to take it")
            self._fail(phrase("the lock kept appearing and vanishing over {attempts} attempts", attempts=_ATTEMPTS))

    def _take_over(self, seen: _Seen, candidate: LockOwner) -> bool:
        with self._claiming(candidate.token):
            code, _ = self._script(_TAKEOVER, seen.raw.hex(), candidate.to_json(), ok=(0, 4, 5))
            if code == 0:
                self._set_held(candidate)
        return code == 0

    def refresh(self) -> None:
        """Show that this run is alive, so a long run never looks stale; raises :class:`TargetLocked`
        when the file no longer holds our token (someone broke our lock or removed it)."""
        with self._mutex:
            held = self._held
            if held is None:
                raise RuntimeError(f"target {self.target}: refresh() of a lock this run does not hold")
            fresh = replace(held, refreshed=_utc_now())
            code, out = self._script(_REFRESH, held.token, fresh.to_json(), ok=(0, 3, 4))
            if code == 0:
                self._set_held(fresh)
                return
            self._set_held(None)
            if code == 4:
                raise TargetLocked(self.target, self.path, None, stale=False, lost=True,
                                   why="the lock file was removed")
            owner = _parse_state(out).owner
            raise TargetLocked(self.target, self.path, owner, stale=False, lost=True,
                               why="someone broke it" if owner is None or owner.run_id != self.run_id
                               else "the same run took it again from another controller")

    def release(self) -> None:
        """Remove the lock if it still holds our token; a missing file or another run's lock is left alone."""
        with self._mutex:
            held = self._held
            self._set_held(None)
            if held is None:
                return
            code, _ = self._script(_RELEASE, held.token, ok=(0, 3, 4))
            if code == 3:
                log.warning("target %s: not releasing %s: it no longer holds run %s's token (someone broke "
                            "the lock)", self.target, self.path, self.run_id)

    def forget(self) -> None:
        """This process stops driving the target but leaves its lock in place (the target is not whole yet):
        from now on the lock reads as held by a controller that is gone, so a resume may take it over."""
        with self._mutex:
            self._set_held(None)

    def read(self) -> LockOwner | None:
        """The current owner; None when there is no lock or it is unreadable."""
        code, out = self._script(_READ, ok=(3, 4))
        return _parse_state(out).owner if code == 3 else None

