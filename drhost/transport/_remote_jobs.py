"""Detached remote commands: started in their own session/process group, tracked by a job directory.

A paramiko timeout (or a dropped connection) does not stop a remote command, and a command must not die with
the connection either. So every command runs detached (``setsid``) with its output, exit code and process
group id in files of its job directory ``{job_dir}/{job_id}``::

    cmd      the command line that runs (every word shlex-quoted)
    in       its stdin           out, err   its stdout / stderr
    pid      the process group id (= pid of the detached wrapper shell), one write of a few bytes
    started  start time (epoch seconds)
    rc       exit code, one write of a few bytes when the command has ended (empty = not yet)
    stopped  what stop_job did (termed / killed) when it ended the group

Every remote command here is a short ``/bin/sh -c`` script with an explicit environment (``env -i``), so the
login shell's rc files cannot change what runs. Each function makes exactly one remote call through
``exec_fn(command, stdin, timeout) -> (exit status, stdout, stderr)``. Nothing is written locally.

Starting is idempotent: the job directory is created with a plain ``mkdir``, so a start retried after a
dropped connection re-attaches to the job that already exists instead of running it twice.
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ._base import TransportError

ExecFn = Callable[[str, bytes | None, float], tuple[int, bytes, bytes]]

OUTPUT_LIMIT = 1024 * 1024
#: The target's interpreter for the remote helper when the inventory does not name one (``remote_helper``).
DEFAULT_PYTHON = "python3"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ALREADY_STARTED = 17
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_JOB_ID = re.compile(r"[A-Za-z0-9._-]+\Z")

# Prints the live (non-zombie) members of process group $1, read from /proc (no procps needed). The command
# name in /proc/PID/stat may contain spaces and ')': the fields we want follow the last ") ".
_MEMBERS_FN = r"""members() {
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null < "$f" || continue
    rest=${line##*) }
    set -- $rest
    [ "$1" != Z ] && [ "$3" = "$PG" ] && { p=${f#/proc/}; printf '%s ' "${p%/stat}"; }
  done
  return 0
}
"""


def shell_command(script: str) -> str:
    """The command line sent to the SSH server: ``script`` run by ``/bin/sh`` with a minimal environment
    (whatever the login shell sets up is thrown away by ``env -i``)."""
    return f'exec env -i PATH={DEFAULT_PATH} HOME="$HOME" /bin/sh -c {shlex.quote(script)}'


#: The job's stdout and stderr both go through the channel's stdout, framed by their sizes: the channel's
#: stderr also carries whatever the account's login shell prints (rc files of bash are read before any
#: command sshd runs), which must never be taken for the job's own output.
_FRAMED_OUTPUT = ("tail -c {limit} out > .out.tail; tail -c {limit} err > .err.tail; "
                  "echo \"$(wc -c < .out.tail) $(wc -c < .err.tail)\"; cat .out.tail .err.tail")


def _unframe(data: bytes) -> tuple[bytes, bytes]:
    header, _, body = data.partition(b"\n")
    sizes = header.split()
    if len(sizes) != 2 or not all(size.isdigit() for size in sizes):
        raise TransportError.worded("job output not framed as expected: {data}", data=repr(data[:80]))
    out_size, err_size = int(sizes[0]), int(sizes[1])
    if len(body) < out_size + err_size:
        # Never hand a plugin a cut-off output as if it were the whole: JSON would fail far from the cause.
        raise TransportError.worded("job output arrived incomplete: {got} of {expected} bytes", got=len(body),
                                    expected=out_size + err_size)
    return body[:out_size], body[out_size : out_size + err_size]


#: What runs detached in the job's directory: records its process group, runs the command, records its exit code
#: (the remote helper starts the very same text: drhost/transport/remote_helper.py). ``pid`` and ``rc`` are each
#: written by one ``write`` of a few bytes into a file the redirection has just created empty, so a reader sees
#: the file empty or whole (every reader takes an empty one for a missing one: ``[ -s rc ]``, ``.strip()``), as
#: it would have seen it missing or whole through a temporary file and ``mv`` — which cost two more processes,
#: 2.3 of the 6.2 ms of CPU a job takes on the target (measured over 200 jobs).
WRAPPER = (
    "echo $$ > pid\n"
    "/bin/sh ./cmd < in > out 2> err\n"
    "echo $? > rc\n"
)


def new_job_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"


def _job_path(job_dir: str, job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"bad job id {job_id!r}")
    return f"{job_dir.rstrip('/')}/{job_id}"


def command_line(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> str:
    """The line the detached wrapper runs: cd, then ``env -i`` with exactly ``env``, then argv."""
    if not argv or not all(isinstance(word, str) for word in argv):
        raise TransportError.worded("argv must be a non-empty list of strings, got {argv}",
                                    init={"category": "plugin"}, argv=repr(argv))
    for name in env:
        if not _ENV_NAME.match(name):
            raise TransportError.worded("bad environment variable name {name}", init={"category": "plugin"},
                                        name=repr(name))
    assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in env.items())
    words = " ".join(shlex.quote(word) for word in argv)
    # "command" keeps a first word containing '=' from being taken as one more assignment by env.
    first = "command " if "=" in argv[0] else ""
    return f"cd -- {shlex.quote(cwd or '/')} || exit 126\nexec env -i {assignments} {first}{words}\n"


def start_job(
    exec_fn: ExecFn,
    job_dir: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None = None,
    input: str | None = None,
    *,
    job_id: str | None = None,
    timeout: float = 30.0,
) -> tuple[str, bool]:
    """Start ``argv`` detached on the target; returns (job id, True) once its process group id is recorded, or
    (job id, False) if a job with that id already exists (a retried start: re-attach, never re-run)."""
    result = start_and_wait(exec_fn, job_dir, argv, env, cwd, input, job_id=job_id, timeout=timeout)
    return result.job_id, result.started


@dataclass(frozen=True)
class StartResult:
    """A started job; ``returncode``/``stdout``/``stderr`` are set when it ended within the start's wait."""

    job_id: str
    started: bool
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""


def start_and_wait(
    exec_fn: ExecFn,
    job_dir: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None = None,
    input: str | None = None,
    *,
    job_id: str | None = None,
    timeout: float = 30.0,
    wait_s: float = 0.0,
    limit: int = OUTPUT_LIMIT,
) -> StartResult:
    """Start ``argv`` detached and, in the same remote call, wait up to ``wait_s`` for it to end.

    A short command (most are) then costs one session on the target instead of three: its exit code and
    output come back with the start, and its job directory is removed. A longer one is still running,
    detached, and is polled as usual. The job never depends on this call's connection.
    """
    job_id = job_id or new_job_id()
    path = _job_path(job_dir, job_id)
    q = shlex.quote
    script = (
        "umask 077\n"
        f"mkdir -p -- {q(job_dir)} || exit 1\n"
        f"mkdir -- {q(path)} 2>/dev/null || exit {_ALREADY_STARTED}\n"
        f"cd -- {q(path)} || exit 1\n"
        f"printf '%s' {q(command_line(argv, env, cwd))} > cmd || exit 1\n"
        + ("cat > in || exit 1\n" if input is not None else ": > in || exit 1\n")
        + "date +%s > started\n"
        f"setsid /bin/sh -c {q(WRAPPER)} < /dev/null > /dev/null 2>&1 &\n"
        "i=0\n"
        "while [ ! -s pid ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done\n"
        "cat pid\n"
        f"n=0; while [ ! -s rc ] && [ $n -lt {max(0, int(wait_s / 0.01))} ]; do sleep 0.01; n=$((n+1)); done\n"
        # Only a finished job reports (and loses) its output here; a running one is left alone.
        f"if [ -s rc ]; then echo \"rc $(cat rc)\"; {_FRAMED_OUTPUT.format(limit=int(limit))}; "
        f"cd / && rm -rf -- {q(path)}; fi\n"
    )
    status, out, err = exec_fn(shell_command(script), input.encode("utf-8") if input is not None else None,
                               timeout + wait_s)
    if status == _ALREADY_STARTED:
        return StartResult(job_id, False)
    first, _, rest = out.partition(b"\n")
    if status != 0 or not first.strip().isdigit():
        raise TransportError.worded(
            "cannot start {command} on the target (exit {status}): {stderr}", init={"category": "file"},
            command=repr(argv[0]), status=status, stderr=err.decode("utf-8", "replace").strip(),
        )
    second, _, output = rest.partition(b"\n")
    words = second.split()
    if len(words) == 2 and words[0] == b"rc" and words[1].lstrip(b"-").isdigit():
        stdout, stderr = _unframe(output)
        return StartResult(job_id, True, int(words[1]), stdout, stderr)
    return StartResult(job_id, True)


#: One of the remote helper's own operations: (request, timeout) -> answer (drhost/transport/remote_helper.py);
#: raises HelperRefused when the helper answered that it could not do it.
HelperFn = Callable[[dict[str, object], float], dict[str, object]]


class HelperRefused(Exception):
    """The remote helper answered a job operation with an error (the message is the helper's)."""


def start_and_wait_helper(request_fn: HelperFn, job_dir: str, argv: Sequence[str], env: Mapping[str, str],
                          cwd: str | None = None, input: str | None = None, *, job_id: str, timeout: float = 30.0,
                          wait_s: float = 0.0, limit: int = OUTPUT_LIMIT) -> StartResult:
    """:func:`start_and_wait` done by the remote helper: the same job directory, files and wrapper; the helper
    waits on the wrapper it started instead of polling for its files with a ``sleep`` process a turn."""
    try:
        answer = request_fn({"op": "job_start", "job_dir": job_dir, "path": _job_path(job_dir, job_id),
                             "cmd": command_line(argv, env, cwd), "wait_s": wait_s, "limit": int(limit),
                             "stdin": base64.b64encode(input.encode("utf-8")).decode("ascii") if input is not None
                             else ""}, timeout + wait_s)
    except HelperRefused as exc:
        raise TransportError.worded("cannot start {command} on the target: {why}", init={"category": "file"},
                                    command=repr(argv[0]), why=str(exc)) from None
    state = answer.get("state")
    if state == "already":
        return StartResult(job_id, False)
    if state == "exited":
        return StartResult(job_id, True, int(str(answer["rc"])), base64.b64decode(str(answer["out"])),
                           base64.b64decode(str(answer["err"])))
    return StartResult(job_id, True)


def poll_helper(request_fn: HelperFn, job_dir: str, job_id: str, *, timeout: float = 30.0,
                wait_s: float = 0.0) -> JobStatus:
    """:func:`poll` done by the remote helper (it waits for the job without a process a turn)."""
    try:
        answer = request_fn({"op": "job_poll", "path": _job_path(job_dir, job_id), "wait_s": wait_s},
                            timeout + wait_s)
    except HelperRefused as exc:
        raise TransportError.worded("cannot poll job {job}: {stderr}", job=job_id, stderr=str(exc)) from None
    pid = answer.get("pid")
    pgid = int(str(pid)) if pid is not None else None
    if answer.get("state") == "exited":
        return JobStatus("exited", int(str(answer["rc"])), pgid)
    return JobStatus(str(answer.get("state")), None, pgid)


def read_output_helper(request_fn: HelperFn, job_dir: str, job_id: str, *, limit: int = OUTPUT_LIMIT,
                       timeout: float = 60.0, remove: bool = False) -> tuple[bytes, bytes]:
    """:func:`read_output` done by the remote helper."""
    try:
        answer = request_fn({"op": "job_output", "path": _job_path(job_dir, job_id), "limit": int(limit),
                             "remove": remove}, timeout)
    except HelperRefused as exc:
        raise TransportError.worded("cannot read the output of job {job}: {stderr}", job=job_id,
                                    stderr=str(exc)) from None
    return base64.b64decode(str(answer["out"])), base64.b64decode(str(answer["err"]))


@dataclass(frozen=True)
class JobStatus:
    """``state`` is running, exited (``returncode`` set), starting (no pid recorded yet), gone (ended without
    an exit code: killed) or missing (no such job directory)."""

    state: str
    returncode: int | None = None
    pgid: int | None = None


def poll(exec_fn: ExecFn, job_dir: str, job_id: str, *, timeout: float = 30.0, wait_s: float = 0.0) -> JobStatus:
    """One remote call: the exit code if written, else whether the process group is alive.

    With ``wait_s`` the target itself waits (up to that long, in 50 ms steps) for the job to end before it
    answers: a short command is seen done at once, a long one costs one call per ``wait_s`` instead of one
    per poll interval. Every remote call costs a new session on the target (≈ 0.1 s on a loaded VM).
    """
    path = shlex.quote(_job_path(job_dir, job_id))
    rounds = max(0, int(wait_s / 0.05))
    script = (
        f"cd -- {path} 2>/dev/null || {{ echo missing; exit 0; }}\n"
        "pg=$(cat pid 2>/dev/null)\n"
        f"n=0; while [ ! -s rc ] && [ -n \"$pg\" ] && kill -0 -\"$pg\" 2>/dev/null && [ $n -lt {rounds} ]; do "
        "sleep 0.05; n=$((n+1)); done\n"
        'if [ -s rc ]; then echo "exited $(cat rc) $pg"\n'
        'elif [ -z "$pg" ]; then echo starting\n'
        'elif kill -0 -"$pg" 2>/dev/null; then echo "running $pg"\n'
        'elif [ -s rc ]; then echo "exited $(cat rc) $pg"\n'
        'else echo "gone $pg"; fi\n'
    )
    status, out, err = exec_fn(shell_command(script), None, timeout)
    words = out.decode("ascii", "replace").split()
    if status != 0 or not words:
        raise TransportError.worded("cannot poll job {job}: {stderr}", job=job_id,
                                    stderr=err.decode("utf-8", "replace").strip())
    state = words[0]
    if state == "exited" and len(words) >= 2 and words[1].lstrip("-").isdigit():
        return JobStatus("exited", int(words[1]), int(words[2]) if len(words) > 2 else None)
    pgid = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
    return JobStatus(state, None, pgid)


def read_output(exec_fn: ExecFn, job_dir: str, job_id: str, *, limit: int = OUTPUT_LIMIT,
                timeout: float = 60.0, remove: bool = False) -> tuple[bytes, bytes]:
    """The last ``limit`` bytes of the job's stdout and stderr; with ``remove``, the job's directory goes too."""
    path = shlex.quote(_job_path(job_dir, job_id))
    script = f"cd -- {path} || exit 1\n{_FRAMED_OUTPUT.format(limit=int(limit))}\n"
    if remove:
        script += f"cd / && rm -rf -- {path}\n"
    status, out, err = exec_fn(shell_command(script), None, timeout)
    if status != 0:
        raise TransportError.worded("cannot read the output of job {job}: {stderr}", job=job_id,
                                    stderr=err.decode("utf-8", "replace").strip())
    return _unframe(out)


def remove_job(exec_fn: ExecFn, job_dir: str, job_id: str, *, timeout: float = 30.0) -> None:
    exec_fn(shell_command(f"rm -rf -- {shlex.quote(_job_path(job_dir, job_id))}"), None, timeout)


@dataclass(frozen=True)
class StopResult:
    """What :func:`stop_job` did: ``how`` is termed (left within the grace), killed (needed SIGKILL),
    not-running (nothing to stop) or unknown (no pid recorded); ``remaining`` lists pids still alive
    afterwards (empty when the stop is confirmed)."""

    how: str
    remaining: tuple[int, ...] = ()

    @property
    def confirmed(self) -> bool:
        return not self.remaining


def stop_job(exec_fn: ExecFn, job_dir: str, job_id: str, grace_s: float, *, confirm_s: float = 10.0) -> StopResult:
    """TERM the job's process group, wait up to ``grace_s``, KILL what is left, then confirm (by scanning
    /proc on the target) that no process of the group remains. One remote call."""
    path = shlex.quote(_job_path(job_dir, job_id))
    ticks, confirm_ticks = max(1, int(grace_s * 20)), max(1, int(confirm_s * 20))
    script = (
        _MEMBERS_FN
        + f"cd -- {path} 2>/dev/null || {{ echo unknown; exit 0; }}\n"
        "PG=$(cat pid 2>/dev/null)\n"
        'case "$PG" in ""|*[!0-9]*) echo unknown; exit 0;; esac\n'
        'if [ -z "$(members)" ]; then how=not-running; else\n'
        '  kill -TERM -"$PG" 2>/dev/null\n'
        f"  i=0; while [ -n \"$(members)\" ] && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done\n"
        '  if [ -n "$(members)" ]; then how=killed; kill -KILL -"$PG" 2>/dev/null; else how=termed; fi\n'
        "fi\n"
        f"i=0; while [ -n \"$(members)\" ] && [ $i -lt {confirm_ticks} ]; do\n"
        '  kill -KILL -"$PG" 2>/dev/null; sleep 0.05; i=$((i+1)); done\n'
        'echo "$how" > stopped\n'
        'echo "$how $(members)"\n'
    )
    status, out, err = exec_fn(shell_command(script), None, grace_s + confirm_s + 30)
    words = out.decode("ascii", "replace").split()
    if status != 0 or not words:
        raise TransportError.worded("cannot stop job {job}: {stderr}", job=job_id,
                                    stderr=err.decode("utf-8", "replace").strip())
    return StopResult(words[0], tuple(int(word) for word in words[1:] if word.isdigit()))


def running_jobs_script(job_dir: str) -> str:
    """A read-only ``/bin/sh`` script listing the jobs under ``job_dir`` whose process group still has a live
    member, one line each: ``job_id pgid started LINE`` (LINE: the ``exec env -i …`` line of its ``cmd``, cut to
    4000 characters). Nothing is stopped: this is evidence for a manual procedure, not an action."""
    return (
        f"cd -- {shlex.quote(job_dir)} 2>/dev/null || exit 0\n"
        "for job in *; do\n"
        '  [ -d "$job" ] || continue\n'
        '  PG=$(cat "$job/pid" 2>/dev/null)\n'
        '  case "$PG" in ""|*[!0-9]*) continue;; esac\n'
        '  [ -s "$job/rc" ] && continue\n'
        '  kill -0 -"$PG" 2>/dev/null || continue\n'
        '  printf \'%s %s %s %s\\n\' "$job" "$PG" "$(cat "$job/started" 2>/dev/null || echo 0)" '
        '"$(tail -n 1 "$job/cmd" 2>/dev/null | cut -c1-4000)"\n'
        "done\n"
    )


@dataclass(frozen=True)
class RunningJob:
    """A job whose process group is alive on the target (from :func:`running_jobs_script`)."""

    job_id: str
    pgid: int
    started: int
    command: str

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.started)) if self.started else "?"
        return f"job {self.job_id} (process group {self.pgid}, since {since}): {self.command}"


def _argv_of(line: str) -> str:
    """The command a ``cmd`` line runs, without ``exec env -i`` and the environment (see command_line)."""
    try:
        words = shlex.split(line)
    except ValueError:
        return line[:200]
    if words[:3] == ["exec", "env", "-i"]:
        words = words[3:]
    while words and _ENV_NAME.match(words[0].split("=", 1)[0]) and "=" in words[0]:
        words = words[1:]
    if words[:1] == ["command"]:
        words = words[1:]
    return shlex.join(words)[:200]


def parse_running_jobs(out: bytes) -> list[RunningJob]:
    found: list[RunningJob] = []
    for line in out.decode("utf-8", "replace").splitlines():
        words = line.split(" ", 3)
        if len(words) == 4 and _JOB_ID.match(words[0]) and words[1].isdigit() and words[2].isdigit():
            found.append(RunningJob(words[0], int(words[1]), int(words[2]), _argv_of(words[3])))
    return found
