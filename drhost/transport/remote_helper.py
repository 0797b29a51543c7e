"""drhost's remote helper: the program drhost runs on a target, once per connection, over one SSH channel.

It is sent as text when the connection is made (never installed) and runs with the target's own ``python3``,
from the standard library alone (Python 3.6 or later: long-term-support distributions still ship it). It reads
one JSON request a line from its stdin and answers one JSON line each on its stdout:

    {"id": 7, "command": "...", "stdin": "<base64>"}  ->  {"id": 7, "rc": 0, "out": "<base64>", "err": "<base64>"}

``command`` is the very command line drhost would otherwise send as an SSH exec request, and it runs the way
sshd runs one (``/bin/sh -c``), so everything drhost does on a target means the same with or without the
helper; what the helper saves is the SSH session and the login shell sshd sets up for every command. Requests
run side by side (a thread each), answered in the order they end. A command killed by a signal answers
``rc`` -1, as sshd's exit-signal does.

Three requests do the detached-job protocol's work (drhost/transport/_remote_jobs.py) here, in the same job
directory with the same files, instead of in a shell script each: ``job_start`` (make the job's directory,
start the same wrapper in a session of its own, wait for it as long as asked: the helper is its parent and
waits on it rather than polling with ``sleep`` processes), ``job_poll`` and ``job_output``. A job started
here is polled, read and stopped by the shell scripts just as well, and the other way round. ``hash_follow``
hashes an upload's file as its bytes arrive, so that the verification of an upload overlaps its transfer.

When its stdin ends (drhost closed the channel, or the connection dropped) the helper exits; commands still
running are not waited for. drhost's detached jobs (drhost/transport/_remote_jobs.py) run in their own
session, so a dropped connection stops neither them nor their bookkeeping: a new connection starts a new
helper, which finds them by their job directories, as it would without a helper.

This file is not imported by drhost (drhost/transport/_helper.py reads it as text): nothing here may import
drhost.
"""

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Dict

PROTOCOL = 1
#: Exactly the wrapper of _remote_jobs.start_and_wait (a test compares them): pid, the command, its exit code.
WRAPPER = (
    "echo $$ > pid\n"
    "/bin/sh ./cmd < in > out 2> err\n"
    "echo $? > rc\n"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _tail(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read()
    except OSError:
        return b""


def _group_alive(pgid: int) -> bool:
    # As the scripts' ``kill -0 -PG``: any refusal counts as gone.
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _private_dirs(path: str) -> None:
    """``umask 077; mkdir -p``: every directory made is 0700."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent and not os.path.isdir(parent):
        _private_dirs(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def _outputs(path: str, limit: int) -> Dict[str, Any]:
    """The last ``limit`` bytes of a job's stdout and stderr."""
    return {"out": _b64(_tail(os.path.join(path, "out"), limit)), "err": _b64(_tail(os.path.join(path, "err"), limit))}


def _finished(path: str, rc: bytes, limit: int) -> Dict[str, Any]:
    """A finished job's answer; its directory goes (as the start script does)."""
    answer = dict(_outputs(path, limit), state="exited", rc=int(rc.strip()))
    shutil.rmtree(path, ignore_errors=True)
    return answer


def job_start(request: Dict[str, Any]) -> Dict[str, Any]:
    job_dir, path = request["job_dir"], request["path"]
    _private_dirs(job_dir)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return {"state": "already"}  # a retried start: re-attach, never run twice
    _write(os.path.join(path, "cmd"), request["cmd"].encode("utf-8"))
    _write(os.path.join(path, "in"), base64.b64decode(request.get("stdin") or ""))
    _write(os.path.join(path, "started"), f"{int(time.time())}\n".encode("ascii"))
    proc = subprocess.Popen(["/bin/sh", "-c", "umask 077\n" + WRAPPER], cwd=path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                            start_new_session=True)
    try:
        proc.wait(timeout=max(0.0, float(request.get("wait_s") or 0)))
    except subprocess.TimeoutExpired:
        # Still running: reap it when it ends (a zombie would pass for a live job), and report its group.
        threading.Thread(target=proc.wait, daemon=True).start()
    deadline = time.monotonic() + 5
    while not _read(os.path.join(path, "pid")).strip() and time.monotonic() < deadline:
        time.sleep(0.001)
    rc = _read(os.path.join(path, "rc"))
    if rc.strip():
        return _finished(path, rc, int(request["limit"]))
    return {"state": "running", "pid": proc.pid}


def job_poll(request: Dict[str, Any]) -> Dict[str, Any]:
    path = request["path"]
    if not os.path.isdir(path):
        return {"state": "missing"}
    pid_text = _read(os.path.join(path, "pid")).strip()
    pgid = int(pid_text) if pid_text.isdigit() else None
    deadline = time.monotonic() + max(0.0, float(request.get("wait_s") or 0))
    pause = 0.001
    while (not _read(os.path.join(path, "rc")).strip() and pgid is not None and _group_alive(pgid)
           and time.monotonic() < deadline):
        time.sleep(pause)
        pause = min(0.05, pause * 2)
    rc = _read(os.path.join(path, "rc")).strip()
    if rc:
        return {"state": "exited", "rc": int(rc), "pid": pgid}
    if pgid is None:
        return {"state": "starting"}
    if _group_alive(pgid):
        return {"state": "running", "pid": pgid}
    rc = _read(os.path.join(path, "rc")).strip()  # it may have ended between the two looks
    if rc:
        return {"state": "exited", "rc": int(rc), "pid": pgid}
    return {"state": "gone", "pid": pgid}


def job_output(request: Dict[str, Any]) -> Dict[str, Any]:
    path, limit = request["path"], int(request["limit"])
    if not os.path.isdir(path):
        raise OSError(f"no job directory {path}")
    answer = _outputs(path, limit)
    if request.get("remove"):
        shutil.rmtree(path, ignore_errors=True)
    return answer


def hash_follow(request: Dict[str, Any]) -> Dict[str, Any]:
    """The sha256 of the first ``size`` bytes of ``path``, read as they arrive (an upload writes them in
    order): hashing overlaps the transfer instead of following it. Gives up when no byte came for
    ``idle_s`` (the upload stopped: drhost hashes the whole file afresh after a resumed one)."""
    path, size, idle_s = request["path"], int(request["size"]), float(request.get("idle_s") or 30)
    digest = hashlib.sha256()
    done = 0
    last_progress = time.monotonic()
    pause = 0.001
    with open(path, "rb") as handle:
        while done < size:
            data = handle.read(min(1 << 20, size - done))
            if data:
                digest.update(data)
                done += len(data)
                last_progress = time.monotonic()
                pause = 0.001
                continue
            if time.monotonic() - last_progress > idle_s:
                raise OSError(f"{path}: no new bytes for {idle_s:.0f} s at {done} of {size}")
            time.sleep(pause)
            pause = min(0.02, pause * 2)
    return {"sha256": digest.hexdigest(), "bytes": done}


OPERATIONS = {"job_start": job_start, "job_poll": job_poll, "job_output": job_output, "hash_follow": hash_follow}


def main() -> None:
    requests = sys.stdin.buffer
    answers = sys.stdout.buffer
    lock = threading.Lock()

    def answer(message: Dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")
        with lock:
            answers.write(data)
            answers.flush()

    def run(request: Dict[str, Any]) -> None:
        ident = request.get("id")
        operation = OPERATIONS.get(request.get("op", ""))
        if operation is not None:
            try:
                answer(dict(operation(request), id=ident))
            except Exception as exc:  # a request it cannot do is answered, never the end of the helper
                answer({"id": ident, "error": f"{type(exc).__name__}: {exc}"})
            return
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", request["command"]], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
            out, err = proc.communicate(base64.b64decode(request.get("stdin") or ""))
            rc = proc.returncode if proc.returncode >= 0 else -1
            answer({"id": ident, "rc": rc, "out": base64.b64encode(out).decode("ascii"),
                    "err": base64.b64encode(err).decode("ascii")})
        except Exception as exc:  # a request it cannot run is answered, never the end of the helper
            answer({"id": ident, "error": f"{type(exc).__name__}: {exc}"})

    answer({"ready": PROTOCOL, "python": "{}.{}.{}".format(*sys.version_info[:3]), "pid": os.getpid()})
    for line in requests:
        try:
            request = json.loads(line.decode("utf-8"))
        except ValueError as exc:
            answer({"id": None, "error": f"not a request: {exc}"})
            continue
        threading.Thread(target=run, args=(request,), daemon=True).start()


if __name__ == "__main__":  # as drhost starts it: the text run by ``python3 -c``
    main()
