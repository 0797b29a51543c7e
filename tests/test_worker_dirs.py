"""Workers' private directories: made at launch, removed at close, and tidied after a killed controller."""

from __future__ import annotations

import glob
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from drhost.supervisor import remove_stale_worker_dirs
from worker_helpers import process_runner


def gone_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_runner_makes_its_directory_at_launch_and_removes_it_at_close() -> None:
    """A runner leaves nothing before its first launch; its worker starts in a private dir named after the
    controller's pid, and close() removes it."""
    runner = process_runner("dr-catalog")
    try:
        runner.start()
        cwd = os.readlink(f"/proc/{runner.pid}/cwd")
        assert Path(cwd).name.startswith(f"drhost-worker-{os.getpid()}-")
        assert stat.S_IMODE(os.stat(cwd).st_mode) == 0o700
    finally:
        runner.close()
    assert not os.path.lexists(cwd)


def test_a_runner_that_never_launches_makes_no_directory() -> None:
    """Building and closing a runner that never launched a worker creates nothing in the temp directory."""
    mine = os.path.join(tempfile.gettempdir(), f"drhost-worker-{os.getpid()}-*")
    before = set(glob.glob(mine))
    runner = process_runner("dr-catalog")
    runner.close()
    assert set(glob.glob(mine)) == before


def test_only_directories_of_gone_controllers_owned_by_this_user_are_removed(tmp_path: Path) -> None:
    """A gone controller's directory (with conmon's oom file) goes; a live controller's, another user's, a
    symlink, a plain file and an unrelated name all stay, and the symlink's target is untouched."""
    dead = gone_pid()
    stale = tmp_path / f"drhost-worker-{dead}-abc123"
    stale.mkdir(mode=0o700)
    (stale / "oom").write_text("")
    live = tmp_path / f"drhost-worker-{os.getppid()}-def456"
    live.mkdir()
    foreign = tmp_path / f"drhost-worker-{dead}-foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep")
    link = tmp_path / f"drhost-worker-{dead}-link"
    link.symlink_to(precious)
    plain = tmp_path / f"drhost-worker-{dead}-file"
    plain.write_text("")
    unrelated = tmp_path / f"drhost-worker-{dead}"
    unrelated.mkdir()

    removed = remove_stale_worker_dirs(str(tmp_path))

    assert removed == [stale.name]
    assert not stale.exists()
    for kept in (live, foreign, link, plain, unrelated, precious / "data"):
        assert os.path.lexists(kept), kept
    assert (precious / "data").read_text() == "keep"


def test_an_unreadable_temp_directory_removes_nothing_and_raises_nothing(tmp_path: Path) -> None:
    """A temp directory that cannot be listed is not an error for a run: nothing is removed."""
    assert remove_stale_worker_dirs(str(tmp_path / "missing")) == []
