"""The local transport: the target is a directory tree on the controller itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from drhost_hookspecs import RunResult

from ..errors import phrase
from ..state import atomic_write
from ._base import CommandStopped, ProgressCallback, TargetSession, TransportError

_OUTPUT_LIMIT = 1024 * 1024


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """TERM the group, wait ``grace_s``, then KILL it; returns once no member is left alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s if sig == signal.SIGTERM else 10)
            if sig == signal.SIGTERM:
                # The leader left; make sure nothing it started stays behind.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            break
        except subprocess.TimeoutExpired:
            continue
    # SIGKILL is sent, not yet acted on: confirm, so callers can rely on "stopped" meaning gone.
    deadline = time.monotonic() + 10
    while group_members(proc.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.02)


class LocalSession(TargetSession):
    """Commands run as child processes in their own process group; files are plain files."""

    def __init__(self, name: str, *, path_env: str | None = None, kill_grace_s: float = 3.0,
                 command_log: Path | None = None) -> None:
        self.name = name
        self._path_env = path_env or os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        self._grace = kill_grace_s
        #: Every command's process group leader as "pid starttime": what a later controller of the run stops
        #: if this one is killed while commands run (the start time tells a reused pid from ours).
        self._command_log = command_log
        self._log_lock = threading.Lock()

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        input: str | None = None,
        cancel: threading.Event | None = None,
    ) -> RunResult:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TransportError.worded("argv must be a non-empty list of strings, got {argv}",
                                        init={"category": "plugin"}, argv=repr(argv))
        # An explicit environment: the target's behaviour must not depend on the operator's shell.
        full_env = {"PATH": self._path_env, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": os.environ.get("HOME", "/")}
        full_env.update(env or {})
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=cwd, start_new_session=True,
            )
        except OSError as exc:
            raise TransportError.worded("cannot start {command}: {reason}", init={"category": "file"},
                                        command=repr(argv[0]), reason=exc.strerror) from None
        self._log_command(proc.pid, argv[0])
        outputs: dict[str, bytes] = {}

        def communicate() -> None:
            out, err = proc.communicate(input.encode() if input is not None else None)
            outputs["out"], outputs["err"] = out[-_OUTPUT_LIMIT:], err[-_OUTPUT_LIMIT:]

        reader = threading.Thread(target=communicate, daemon=True)
        reader.start()
        deadline = None if timeout is None else started + timeout
        while reader.is_alive():
            reader.join(0.05)
            if cancel is not None and cancel.is_set():
                stop_process_group(proc, self._grace)
                raise CommandStopped.worded("{command} stopped: step cancelled", init={"timed_out": False},
                                            command=argv[0])
            if deadline is not None and time.monotonic() > deadline:
                stop_process_group(proc, self._grace)
                raise CommandStopped.worded("{command} stopped after {seconds} s", init={"timed_out": True},
                                            command=argv[0], seconds=f"{timeout:.0f}")
        return RunResult(
            argv=tuple(argv), returncode=proc.returncode,
            stdout=outputs.get("out", b"").decode("utf-8", "replace"),
            stderr=outputs.get("err", b"").decode("utf-8", "replace"),
            duration_s=time.monotonic() - started,
        )

    def latency_ms(self) -> float | None:
        # The target is this machine: no network between controller and target.
        return 0.0

    def _log_command(self, pid: int, name: str) -> None:
        if self._command_log is None:
            return
        started = _start_time(pid)
        if started is None:
            return  # already gone
        with self._log_lock:
            self._command_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._command_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, f"{pid} {started} {os.path.basename(name)}\n".encode())
            finally:
                os.close(fd)

    def stop_leftover_commands(self) -> list[str]:
        if self._command_log is None or not self._command_log.exists():
            return []
        stopped: list[str] = []
        for line in self._command_log.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
                continue
            pid, started = int(parts[0]), int(parts[1])
            if _start_time(pid) != started or not group_members(pid):
                continue
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)
                deadline = time.monotonic() + (self._grace if sig == signal.SIGTERM else 10)
                while group_members(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not group_members(pid):
                    break
            stopped.append(phrase("{command} (process group {pid})", command=" ".join(parts[2:]) or phrase("command"),
                                  pid=pid))
        with self._log_lock:
            self._command_log.unlink(missing_ok=True)
        return stopped

    def put(self, local_path: str, remote_path: str, progress: ProgressCallback | None = None) -> None:
        target = Path(remote_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        total = os.path.getsize(local_path)
        done = 0
        with open(local_path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1024 * 1024):
                dst.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)

    def get(self, remote_path: str, local_path: str) -> None:
        shutil.copyfile(remote_path, local_path)

    def read_text(self, path: str) -> str:
        try:
            return Path(path).read_text("utf-8")
        except OSError as exc:
            raise TransportError.worded("cannot read {path}: {reason}", init={"category": "file"}, path=path,
                                        reason=exc.strerror) from None

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, text.encode("utf-8"), mode)
            os.chmod(target, mode)
        except OSError as exc:
            raise TransportError.worded("cannot write {path}: {reason}", init={"category": "file"}, path=path,
                                        reason=exc.strerror) from None

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def remove(self, path: str, recursive: bool = False) -> None:
        target = Path(path)
        try:
            if target.is_dir() and not target.is_symlink():
                if not recursive:
                    raise TransportError.worded("{path} is a directory; pass recursive=True",
                                                init={"category": "file"}, path=path)
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TransportError.worded("cannot remove {path}: {reason}", init={"category": "file"}, path=path,
                                        reason=exc.strerror) from None
