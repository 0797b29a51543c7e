"""The host side of the Context API: effects on the target, and what a sandboxed plugin may not do."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from drhost_hookspecs import Cancelled, StepFailed
from worker_helpers import make_context


def test_run_returns_output_and_raises_on_failure(tmp_path: Path) -> None:
    """ctx.run returns stdout/returncode; with check=True a non-zero exit raises StepFailed with stderr."""
    ctx = make_context(tmp_path)
    assert ctx.run(["sh", "-c", "echo out"]).stdout == "out\n"
    assert ctx.run(["sh", "-c", "exit 3"], check=False).returncode == 3
    with pytest.raises(StepFailed) as info:
        ctx.run(["sh", "-c", "echo boom >&2; exit 4"])
    assert "exited 4" in str(info.value) and "boom" in str(info.value)


def test_run_uses_an_explicit_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands do not inherit the operator's environment, only PATH, locale, HOME and what the step passes."""
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t")
    ctx = make_context(tmp_path)
    out = ctx.run(["env"], env={"EXTRA": "1"}).stdout
    assert "SECRET_TOKEN" not in out and "EXTRA=1" in out and "LC_ALL=C.UTF-8" in out


def test_write_text_is_atomic_and_sets_mode(tmp_path: Path) -> None:
    """write_text creates parents, replaces atomically and applies the mode."""
    ctx = make_context(tmp_path)
    path = tmp_path / "a" / "b" / "f.txt"
    ctx.write_text(str(path), "one", mode=0o600)
    ctx.write_text(str(path), "two", mode=0o600)
    assert ctx.read_text(str(path)) == "two"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_remove_and_exists(tmp_path: Path) -> None:
    """remove deletes files and, with recursive=True, trees; a missing path is not an error."""
    ctx = make_context(tmp_path)
    (tmp_path / "d" / "e").mkdir(parents=True)
    with pytest.raises(StepFailed):
        ctx.remove(str(tmp_path / "d"))
    ctx.remove(str(tmp_path / "d"), recursive=True)
    assert not ctx.exists(str(tmp_path / "d"))
    ctx.remove(str(tmp_path / "missing"))


def test_sandboxed_put_is_limited_to_the_package(tmp_path: Path) -> None:
    """A worker may upload the run's package, but not an arbitrary controller file."""
    package = tmp_path / "pkg.tar.gz"
    package.write_bytes(b"payload")
    ctx = make_context(tmp_path, package_path=str(package))
    ctx.dispatch("put", {"local_path": str(package), "remote_path": str(tmp_path / "up" / "pkg.tar.gz")})
    assert (tmp_path / "up" / "pkg.tar.gz").read_bytes() == b"payload"
    with pytest.raises(StepFailed) as info:
        ctx.dispatch("put", {"local_path": "/etc/passwd", "remote_path": str(tmp_path / "stolen")})
    assert "refused" in str(info.value) and not (tmp_path / "stolen").exists()


def test_put_reports_progress(tmp_path: Path) -> None:
    """An upload reports progress in bytes up to the file size."""
    package = tmp_path / "pkg.tar.gz"
    package.write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    events: list[tuple[str, object]] = []
    ctx = make_context(tmp_path, package_path=str(package), events=events)
    ctx.put(str(package), str(tmp_path / "t" / "p"))
    progress = [args for method, args in events if method == "progress"]
    assert progress[-1] == {"done": package.stat().st_size, "total": package.stat().st_size, "unit": "bytes"}


def test_stop_wakes_sleep_and_ends_commands(tmp_path: Path) -> None:
    """After ctx.stop(), sleep raises Cancelled and no new command starts."""
    ctx = make_context(tmp_path)
    ctx.stop()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        ctx.sleep(30)
    with pytest.raises(Cancelled):
        ctx.run(["true"])
    assert time.monotonic() - started < 10  # far from the 30 s sleep, with room for a loaded machine


def test_run_never_outlives_the_step_deadline(tmp_path: Path) -> None:
    """A command is stopped when the step's deadline passes, even if it asked for a longer timeout."""
    ctx = make_context(tmp_path, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises((Cancelled, StepFailed)):
        ctx.run(["sleep", "30"], timeout=60)
    assert time.monotonic() - started < 5


def test_checkpoint_persists_state_before_the_call_returns(tmp_path: Path) -> None:
    """ctx.checkpoint() hands the current plugin state to the host's persistence at once."""
    events: list[tuple[str, object]] = []
    ctx = make_context(tmp_path, events=events)
    ctx.state["migration_started"] = True
    ctx.checkpoint()
    assert ("checkpoint", {"migration_started": True}) in events


def test_worker_checkpoint_replaces_the_host_copy(tmp_path: Path) -> None:
    """A worker's checkpoint request replaces the host's copy of the state and persists it."""
    events: list[tuple[str, object]] = []
    ctx = make_context(tmp_path, events=events)
    ctx.state["old"] = 1
    ctx.dispatch("checkpoint", {"state": {"new": 2}})
    assert dict(ctx.state) == {"new": 2} and ("checkpoint", {"new": 2}) in events
    with pytest.raises(StepFailed):
        ctx.dispatch("checkpoint", {"state": [1]})
