"""A disposable drproduct target: a real 1.0.0 install with its daemon running, gone when closed."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from types import TracebackType

import psutil

from drhost_hookspecs import PackageInfo

from ..demo import install
from ..demo.environment import FROM_VERSION, TO_VERSION, demo_package
from ..packaging import read_package
from ._snapshot import Snapshot, processes_inside, take_snapshot

#: Jobs seeded into the catalog: enough rows that a lost or duplicated one shows.
SEED_JOBS = 25


def _processes_under(root: Path) -> list[psutil.Process]:
    """Processes running inside ``root`` (the snapshot's rule), as processes that can be signalled."""
    found = []
    for pid, _ in processes_inside(root):
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return found


class DisposableTarget:
    """drproduct 1.0.0 installed under ``base`` and running, ready to be upgraded to 2.0.0.

    Closing it stops the daemon and ends every process still running inside the
    install root, so a test or a ``plugin-test`` run leaves nothing behind.
    """

    def __init__(self, base: Path, state_root: Path, *, seed_jobs: int = SEED_JOBS) -> None:
        self.base = base
        self.root = base / "opt" / "drproduct"
        self.from_package = demo_package(state_root, FROM_VERSION)
        self.to_package = demo_package(state_root, TO_VERSION)
        self.root.mkdir(parents=True)
        self.port = install.free_port()
        install.install_from_golden(self.from_package, self.root, self.port, golden_dir=state_root / "golden",
                                    seed_jobs=seed_jobs)
        install.start(self.root)
        self._closed = False

    @property
    def package(self) -> PackageInfo:
        """The package a run against this target installs (2.0.0)."""
        return read_package(self.to_package).info()

    def snapshot(self) -> Snapshot:
        """Files, catalog, service and processes of the target, as compared by plugin-test."""
        return take_snapshot(self.root)

    def version(self) -> str | None:
        return install.installed_version(self.root)

    def inventory(self) -> dict[str, str]:
        """The target as an inventory entry (local transport)."""
        return {"transport": "local", "root": str(self.root), "host": "localhost"}

    def leftover_processes(self) -> list[str]:
        """Command lines of processes still running inside the install root, the daemon excepted."""
        daemon = self._daemon_pid()
        return [command for pid, command in processes_inside(self.root) if pid != daemon]

    def _daemon_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "drproductd.pid").read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Stop the daemon (whichever release runs) and end everything left running in the root."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(install.InstallError):  # a broken release cannot stop its daemon; the sweep can
            install.stop(self.root)
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            left = _processes_under(self.root)
            if not left:
                return
            for proc in left:
                try:
                    proc.send_signal(sig)
                except psutil.Error:
                    continue
            psutil.wait_procs(left, timeout=wait)

    def __enter__(self) -> DisposableTarget:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


__all__ = ["SEED_JOBS", "DisposableTarget"]
