"""The per-target lock in {root}/.drhost/lock: one run per target at a time, across controllers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from drhost.errors import ExitCode, RefusedError
from drhost.orchestrator._target_lock import LockOwner, TargetLock, TargetLocked
from drhost.transport import LocalSession, SshSession, SshTarget
from sshd_hosts import SshHost, sshd_available

TWO_HOURS_AGO = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))


@pytest.fixture
def session() -> LocalSession:
    return LocalSession("db-1", kill_grace_s=1.0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "opt" / "drproduct"


def lock_for(session: LocalSession, root: Path, run_id: str, **settings: float) -> TargetLock:
    return TargetLock(session, target="db-1", root=str(root), run_id=run_id, **settings)


def lock_file(root: Path) -> Path:
    return root / ".drhost" / "lock"


def plant(root: Path, content: str, *, age_s: float = 0.0) -> None:
    """Write a lock file as another controller would have, ``age_s`` seconds old by its mtime."""
    path = lock_file(root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(content)
    then = time.time() - age_s
    os.utime(path, (then, then))


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def other_owner(run_id: str = "20261128-051405-9d7549", **changes: object) -> LockOwner:
    owner = LockOwner(run_id=run_id, controller="ctl-1", pid=4242, user="root", since="2026-11-28T05:14:05Z",
                      token="ab" * 16)
    return replace(owner, **changes)  # type: ignore[arg-type]


def test_owner_json_round_trip_and_description() -> None:
    """A LockOwner survives to_json/from_json and describes itself with run, pid, controller, user and since."""
    owner = other_owner(refreshed="2026-11-28T05:20:00Z")
    assert LockOwner.from_json(owner.to_json()) == owner
    assert owner.describe() == "run 20261128-051405-9d7549 (pid 4242 on ctl-1 as root, since 2026-11-28T05:14:05Z)"
    with pytest.raises(ValueError, match="missing token"):
        LockOwner.from_json(json.dumps({k: v for k, v in json.loads(owner.to_json()).items() if k != "token"}))


def test_acquire_and_release_round_trip(session: LocalSession, root: Path) -> None:
    """acquire creates {root}/.drhost/lock (dir 0700) naming run, pid and controller; release removes it."""
    lock = lock_for(session, root, "run-a")
    assert lock.acquire() is None
    path = lock_file(root)
    assert path.parent.stat().st_mode & 0o777 == 0o700
    written = json.loads(path.read_text())
    assert written["run_id"] == "run-a"
    assert written["pid"] == os.getpid()
    assert written["controller"] == socket.gethostname()
    assert lock.read() == lock.held
    lock.release()
    assert not path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == []  # no mutex or temp file left behind
    assert lock.read() is None


def test_second_run_is_refused_and_told_to_wait(session: LocalSession, root: Path) -> None:
    """A second run gets TargetLocked (exit code refused) naming the owner's run, pid and controller; not stale."""
    first = lock_for(session, root, "run-a")
    first.acquire()
    with pytest.raises(TargetLocked) as refused:
        lock_for(session, root, "run-b").acquire()
    error = refused.value
    assert isinstance(error, RefusedError) and error.exit_code == ExitCode.REFUSED
    assert error.stale is False
    assert error.owner == first.held
    message = str(error)
    for part in ("db-1", "run run-a", f"pid {os.getpid()}", f"on {socket.gethostname()}", "wait for that run",
                 f"drhost status run-a on {socket.gethostname()}"):
        assert part in message
    assert "--break-lock" not in message
    assert json.loads(lock_file(root).read_text())["run_id"] == "run-a"  # the refused run changed nothing


def test_lock_of_a_dead_process_on_this_host_is_stale_and_can_be_broken(session: LocalSession, root: Path) -> None:
    """A lock whose owner pid on this controller is gone is stale; break_lock takes it and returns the old owner."""
    gone = other_owner(controller=socket.gethostname(), pid=dead_pid(), since=time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    plant(root, gone.to_json())
    lock = lock_for(session, root, "run-b")
    with pytest.raises(TargetLocked) as refused:
        lock.acquire()
    assert refused.value.stale is True
    assert f"process {gone.pid} is gone" in str(refused.value)
    assert "--break-lock" in str(refused.value)
    assert lock.acquire(break_lock=True) == gone
    assert json.loads(lock_file(root).read_text())["run_id"] == "run-b"


def test_lock_not_refreshed_for_longer_than_stale_after_is_stale(session: LocalSession, root: Path) -> None:
    """A lock whose timestamps and mtime are both older than stale_after_s is stale."""
    plant(root, other_owner(since=TWO_HOURS_AGO, refreshed=TWO_HOURS_AGO).to_json(), age_s=7200)
    with pytest.raises(TargetLocked) as refused:
        lock_for(session, root, "run-b", stale_after_s=600).acquire()
    assert refused.value.stale is True
    assert "not refreshed for" in str(refused.value)
    assert "--break-lock" in str(refused.value)


def test_a_just_written_file_is_not_stale_whatever_its_timestamp_says(session: LocalSession, root: Path) -> None:
    """Fresh mtime on the target outweighs an old timestamp (a controller with a skewed clock is not stale)."""
    plant(root, other_owner(since=TWO_HOURS_AGO).to_json(), age_s=0)
    with pytest.raises(TargetLocked) as refused:
        lock_for(session, root, "run-b", stale_after_s=600).acquire()
    assert refused.value.stale is False


def test_refresh_keeps_a_held_lock_fresh(session: LocalSession, root: Path) -> None:
    """refresh() writes a new heartbeat and mtime, so a long-held lock stops looking stale."""
    holder = lock_for(session, root, "run-a", stale_after_s=600)
    holder.acquire()
    assert holder.held is not None
    # The run has been going for two hours: the same owner and token, with old timestamps and mtime.
    plant(root, replace(holder.held, since=TWO_HOURS_AGO).to_json(), age_s=7200)
    other = lock_for(session, root, "run-b", stale_after_s=600)
    with pytest.raises(TargetLocked) as before:
        other.acquire()
    assert before.value.stale is True
    holder.refresh()
    written = json.loads(lock_file(root).read_text())
    assert written["refreshed"] is not None and written["token"] == holder.held.token
    with pytest.raises(TargetLocked) as after:
        other.acquire()
    assert after.value.stale is False


def test_refresh_after_the_lock_was_broken_raises(session: LocalSession, root: Path) -> None:
    """Once another run broke our lock, refresh() raises TargetLocked naming the new owner, and release leaves it."""
    holder = lock_for(session, root, "run-a")
    holder.acquire()
    breaker = lock_for(session, root, "run-b")
    assert breaker.acquire(break_lock=True) == holder.held
    with pytest.raises(TargetLocked) as lost:
        holder.refresh()
    assert lost.value.lost is True
    assert lost.value.owner == breaker.held
    assert "run run-b" in str(lost.value)
    holder.release()
    assert json.loads(lock_file(root).read_text())["run_id"] == "run-b"


def test_same_run_reacquires_its_lock(session: LocalSession, root: Path) -> None:
    """The same run resuming after a controller crash takes its lock again with a new owner and gets the old one."""
    crashed = other_owner(run_id="run-a", controller=socket.gethostname(), pid=dead_pid())
    plant(root, crashed.to_json())
    resumed = lock_for(session, root, "run-a")
    assert resumed.acquire() == crashed
    written = LockOwner.from_json(lock_file(root).read_text())
    assert written == resumed.held
    assert written.pid == os.getpid() and written.token != crashed.token


@pytest.mark.parametrize("holder", ["live-pid-here", "other-controller-fresh"])
def test_same_run_from_a_live_controller_is_refused(session: LocalSession, root: Path, holder: str) -> None:
    """The same run id does not take a lock whose holder may be alive (a copy of the run resumed elsewhere)."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        alive = (other_owner(run_id="run-a", controller=socket.gethostname(), pid=sleeper.pid)
                 if holder == "live-pid-here" else other_owner(run_id="run-a", since=time.strftime(
                     "%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        plant(root, alive.to_json())
        with pytest.raises(TargetLocked) as refused:
            lock_for(session, root, "run-a").acquire()
        assert refused.value.stale is False and refused.value.owner == alive
        assert "not provably gone" in str(refused.value) and "--break-lock" not in str(refused.value)
        assert LockOwner.from_json(lock_file(root).read_text()) == alive
    finally:
        sleeper.kill()
        sleeper.wait()


def test_same_run_takes_back_a_lock_stale_by_both_clocks(session: LocalSession, root: Path) -> None:
    """The same run from another controller takes its lock back once both the heartbeat and the mtime are old."""
    old = other_owner(run_id="run-a", since=TWO_HOURS_AGO)
    plant(root, old.to_json(), age_s=7200)
    assert lock_for(session, root, "run-a").acquire() == old
    plant(root, old.to_json(), age_s=0)
    with pytest.raises(TargetLocked):
        lock_for(session, root, "run-a").acquire()


def test_break_lock_still_overrides_a_live_holder_of_the_same_run(session: LocalSession, root: Path) -> None:
    """--break-lock stays the operator's explicit override, for the same run as for another."""
    alive = other_owner(run_id="run-a", since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    plant(root, alive.to_json())
    taker = lock_for(session, root, "run-a")
    assert taker.acquire(break_lock=True) == alive
    assert LockOwner.from_json(lock_file(root).read_text()) == taker.held


def test_a_lock_this_process_forgot_is_taken_back_one_it_holds_is_not(session: LocalSession, root: Path) -> None:
    """This process's own lock: refused while a TargetLock here holds it, taken back once it was forgotten."""
    first = lock_for(session, root, "run-a")
    first.acquire()
    with pytest.raises(TargetLocked):
        lock_for(session, root, "run-a").acquire()
    held = first.held
    first.forget()
    again = lock_for(session, root, "run-a")
    assert again.acquire() == held
    again.release()
    assert not lock_file(root).exists()


def test_release_leaves_another_runs_lock(session: LocalSession, root: Path) -> None:
    """release() removes nothing when the file holds another run's token."""
    holder = lock_for(session, root, "run-a")
    holder.acquire()
    plant(root, other_owner().to_json())
    holder.release()
    assert LockOwner.from_json(lock_file(root).read_text()) == other_owner()


def test_release_when_the_lock_is_gone_is_quiet(session: LocalSession, root: Path) -> None:
    """release() of a lock whose file (or whole .drhost dir) vanished does not raise."""
    holder = lock_for(session, root, "run-a")
    holder.acquire()
    lock_file(root).unlink()
    lock_file(root).parent.rmdir()
    holder.release()
    assert not lock_file(root).parent.exists()


def test_a_mutex_left_by_a_killed_script_is_cleared(session: LocalSession, root: Path) -> None:
    """A lock.mutex older than 10 s (its script was killed) does not block release forever."""
    holder = lock_for(session, root, "run-a")
    holder.acquire()
    leftover = lock_file(root).parent / "lock.mutex"
    leftover.mkdir()
    then = time.time() - 60
    os.utime(leftover, (then, then))
    holder.release()
    assert not lock_file(root).exists()
    assert not leftover.exists()


@pytest.mark.parametrize("content", ["", "not json {", '{"run_id": "x"}', "[1, 2]", "\udcff\udcfe",
                                     other_owner(controller="ctl\x1b]0;owned\x07").to_json()],
                         ids=["empty", "not-json", "missing-keys", "not-an-object", "not-utf8", "terminal-escape"])
def test_garbage_lock_file_is_stale_and_can_be_broken(session: LocalSession, root: Path, content: str) -> None:
    """An unreadable lock file is a stale lock ("unreadable lock file"), and break_lock replaces it."""
    path = lock_file(root)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    lock = lock_for(session, root, "run-b")
    with pytest.raises(TargetLocked) as refused:
        lock.acquire()
    assert refused.value.stale is True and refused.value.owner is None
    assert "unreadable lock file" in str(refused.value)
    assert lock.read() is None
    assert lock.acquire(break_lock=True) is None
    assert json.loads(path.read_text())["run_id"] == "run-b"


def race(locks: list[TargetLock], *, break_lock: bool) -> tuple[dict[str, LockOwner | None], list[TargetLocked]]:
    """Call acquire on every lock at the same moment, one thread each: winners' run id -> what acquire
    returned, and the refusals."""
    start = threading.Barrier(len(locks))
    winners: dict[str, LockOwner | None] = {}
    refusals: list[TargetLocked] = []
    errors: list[BaseException] = []

    def contend(lock: TargetLock) -> None:
        start.wait()
        try:
            winners[lock.run_id] = lock.acquire(break_lock=break_lock)
        except TargetLocked as exc:
            refusals.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    return winners, refusals


def test_racing_controllers_get_exactly_one_lock(root: Path) -> None:
    """Controllers (own sessions) racing for a free target: exactly one wins each of 20 rounds; the rest see it."""
    for round_no in range(20):
        locks = {f"run-{round_no}-{n}": lock_for(LocalSession(f"db-1/{n}"), root, f"run-{round_no}-{n}")
                 for n in range(4)}
        winners, refusals = race(list(locks.values()), break_lock=False)
        assert len(winners) == 1, f"round {round_no}: winners {sorted(winners)}"
        (winner,) = (locks[run_id] for run_id in winners)
        assert winners[winner.run_id] is None  # the target was free
        assert winner.held is not None
        assert {refusal.owner for refusal in refusals} == {winner.held}
        assert all(refusal.stale is False for refusal in refusals)
        assert LockOwner.from_json(lock_file(root).read_text()) == winner.held
        winner.release()


def test_racing_breakers_break_the_stale_lock_once(root: Path) -> None:
    """Controllers all running --break-lock on one stale lock: exactly one breaks it and one ends up holding
    the target; a breaker whose fresh lock another breaker then replaced learns it at its next refresh."""
    for round_no in range(20):
        stale = other_owner(controller=socket.gethostname(), pid=dead_pid())
        plant(root, stale.to_json())
        locks = {f"run-{round_no}-{n}": lock_for(LocalSession(f"db-1/{n}"), root, f"run-{round_no}-{n}")
                 for n in range(3)}
        winners, _ = race(list(locks.values()), break_lock=True)
        # --break-lock replaces whatever lock it finds, so a breaker that looked after the first one had
        # won breaks that one; but the stale lock itself is replaced exactly once.
        assert list(winners.values()).count(stale) == 1, f"round {round_no}: {winners}"
        on_disk = LockOwner.from_json(lock_file(root).read_text())
        (holder,) = (locks[run_id] for run_id in winners if locks[run_id].held == on_disk)
        for run_id in winners:
            if run_id != holder.run_id:
                with pytest.raises(TargetLocked):
                    locks[run_id].refresh()
        holder.refresh()
        holder.release()
        assert not lock_file(root).exists()


NASTY_ROOT = "it's a \"root\" with $(touch PWNED) `touch PWNED` ; * and\nnewline"


def test_root_with_spaces_and_quotes_is_just_a_path(session: LocalSession, tmp_path: Path) -> None:
    """A root full of quotes, $(), backticks, ;, * and a newline is used verbatim: no shell reads it."""
    root = tmp_path / NASTY_ROOT
    lock = lock_for(session, root, "run-a")
    lock.acquire()
    assert json.loads(lock_file(root).read_text())["run_id"] == "run-a"
    with pytest.raises(TargetLocked):
        lock_for(session, root, "run-b").acquire()
    lock.refresh()
    lock.release()
    assert not lock_file(root).exists()
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()


available, why = sshd_available()


@pytest.mark.integration
@pytest.mark.skipif(not available, reason=why)
@pytest.mark.sshd
def test_over_a_real_ssh_session(host: SshHost, tmp_path: Path) -> None:
    """Over SshSession to a real sshd: acquire, a second run refused, release; a nasty root stays a path."""
    target = SshTarget(host.name, host.host, host.port, key_file=str(host.client_key),
                       known_hosts=str(host.known_hosts))
    ssh = SshSession(host.name, target, run_id="run1", work_dir=str(tmp_path / "work"), kill_grace_s=1.0,
                     poll_interval_s=0.05)
    try:
        for root in (host.root, host.root / NASTY_ROOT):
            first = TargetLock(ssh, target=host.name, root=str(root), run_id="run-a")
            assert first.acquire() is None
            assert lock_file(root).parent.stat().st_mode & 0o777 == 0o700
            assert LockOwner.from_json(lock_file(root).read_text()) == first.held
            with pytest.raises(TargetLocked) as refused:
                TargetLock(ssh, target=host.name, root=str(root), run_id="run-b").acquire()
            assert refused.value.owner == first.held and refused.value.stale is False
            first.refresh()
            first.release()
            assert not lock_file(root).exists()
    finally:
        ssh.close()
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.integration
@pytest.mark.skipif(not available, reason=why)
@pytest.mark.sshd
def test_same_run_from_two_controllers_over_real_ssh(host: SshHost, tmp_path: Path) -> None:
    """Over a real sshd, a second controller of the same run is refused while the first holds the lock (its
    process alive), and takes it back once the first has forgotten it."""
    target = SshTarget(host.name, host.host, host.port, key_file=str(host.client_key),
                       known_hosts=str(host.known_hosts))
    sessions = [SshSession(host.name, target, run_id="run-a", work_dir=str(tmp_path / f"work{i}"),
                           kill_grace_s=1.0, poll_interval_s=0.05) for i in (1, 2)]
    try:
        first = TargetLock(sessions[0], target=host.name, root=str(host.root), run_id="run-a")
        assert first.acquire() is None
        with pytest.raises(TargetLocked) as refused:
            TargetLock(sessions[1], target=host.name, root=str(host.root), run_id="run-a").acquire()
        assert refused.value.owner == first.held and "not provably gone" in str(refused.value)
        assert LockOwner.from_json(lock_file(host.root).read_text()) == first.held
        held = first.held
        first.forget()
        second = TargetLock(sessions[1], target=host.name, root=str(host.root), run_id="run-a")
        assert second.acquire() == held
        second.release()
        assert not lock_file(host.root).exists()
    finally:
        for session in sessions:
            session.close()
