"""``drhost doctor --target NAME``: prove, before a run, that a target can be worked on.

Each check is one real action on the target through the transport a run would use: log in, become the
configured user, find the tools the remote protocol and the steps need, and look at the install root and the
free disk space there. Nothing is changed on the target: drhost's own job files go to a scratch directory
under /tmp, removed at the end.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RefusedError
from .i18n import Translate
from .transport import TRANSPORTS, TargetSession, TransportError

__all__ = ["REMOTE_TOOLS", "TargetCheck", "check_target"]

#: What the detached-job protocol and the department plugins run on a target (operator-guide: "What a target
#: needs").
REMOTE_TOOLS = ("sh", "env", "setsid", "kill", "head", "tail", "sha256sum", "cat", "date", "mkdir", "mv", "rm",
                "cp", "chmod", "printf", "sleep", "df", "tar", "gzip")


@dataclass(frozen=True)
class TargetCheck:
    """One check: what was checked, whether it passed, and what was seen (safe to show: no secret)."""

    name: str
    ok: bool
    detail: str

    def line(self, t: Translate = lambda message: message) -> str:
        return "  " + (t("ok  {check}: {detail}") if self.ok else t("FAIL {check}: {detail}")).format(
            check=self.name, detail=self.detail)


def _run(session: TargetSession, script: str, timeout: float = 30.0) -> tuple[int, str, str]:
    result = session.run(["/bin/sh", "-c", script], timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def _checks(session: TargetSession, target: Mapping[str, Any], required_bytes: int | None) -> list[TargetCheck]:
    found = []
    started = time.monotonic()
    status, out, err = _run(session, "id -un; id -u")
    words = out.split()
    if status != 0 or len(words) != 2:
        return [TargetCheck("login", False, f"`id` failed (exit {status}): {err.strip() or out.strip()}")]
    found.append(TargetCheck("login", True, f"{TRANSPORTS[str(target['transport'])].where(target)}: commands run "
                                            f"as {words[0]} (uid {words[1]}), {time.monotonic() - started:.2f} s"))
    helper = session.remote_helper()
    if helper is not None:
        # Not a failure either way: without the helper each command is a session of its own, only slower.
        found.append(TargetCheck("helper", True, helper))
    if target.get("become"):
        wanted = str(target.get("become_user", "root"))
        found.append(TargetCheck("become", words[0] == wanted,
                                 f"{target['become']} to {wanted}: " + ("works" if words[0] == wanted else
                                                                        f"commands run as {words[0]} instead")))
    probe = " ".join(f"command -v {shlex.quote(tool)} >/dev/null || echo {shlex.quote(tool)};" for tool in REMOTE_TOOLS)
    status, out, _ = _run(session, f"{probe} sleep 0.01 || echo 'sleep 0.01'; [ -r /proc/self/stat ] || echo /proc")
    missing = out.split()
    found.append(TargetCheck("tools", status == 0 and not missing,
                             f"missing: {', '.join(missing)}" if missing else
                             f"{len(REMOTE_TOOLS)} found, fractional sleep, /proc"))
    root = str(target["root"])
    q = shlex.quote(root)
    status, out, err = _run(session, f"if [ -d {q} ]; then [ -w {q} ] && echo writable || echo read-only; "
                                     f"else echo missing; fi")
    state = out.strip()
    found.append(TargetCheck("root", state == "writable",
                             f"{root} is {state or 'unknown: ' + err.strip()}"
                             + (" for the user commands run as" if state == "read-only" else "")))
    # df of the deepest existing directory: the root itself if it exists.
    status, out, err = _run(session, f"p={q}; while [ ! -d \"$p\" ]; do p=$(dirname \"$p\"); done; "
                                     "df -Pk \"$p\" | tail -n 1")
    fields = out.split()
    if status != 0 or len(fields) < 4 or not fields[3].isdigit():
        found.append(TargetCheck("disk", False, f"df failed (exit {status}): {err.strip() or out.strip()}"))
    else:
        free = int(fields[3]) * 1024
        enough = required_bytes is None or free >= required_bytes
        need = f", the package needs {required_bytes / 2**20:.0f} MiB" if required_bytes is not None else ""
        found.append(TargetCheck("disk", enough, f"{free / 2**20:.0f} MiB free on {fields[-1]}{need}"))
    return found


def check_target(name: str, target: Mapping[str, Any], config: Mapping[str, Any], *,
                 required_bytes: int | None = None) -> list[TargetCheck]:
    """Every check of target ``name``, in order; a check that cannot run (login refused, host unreachable)
    ends the list with its reason."""
    kind = TRANSPORTS.get(str(target.get("transport")))
    if kind is None:
        return [TargetCheck("transport", False, f"transport {target.get('transport')!r} is not built in")]
    run_id = f"doctor-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    # drhost's own files go to a scratch directory, not under the root: a missing root must stay missing.
    scratch = f"/tmp/.{run_id}"
    session: TargetSession | None = None
    try:
        session = kind.connect(name, {**target, "root": scratch}, config, run_id=run_id, run_dir=None,
                               on_network=None)
        return _checks(session, target, required_bytes)
    except (TransportError, RefusedError) as exc:
        return [TargetCheck("login" if not isinstance(exc, RefusedError) or "sudo" not in str(exc) else "become",
                            False, str(exc))]
    finally:
        if session is not None:
            with contextlib.suppress(TransportError, RefusedError):
                session.remove(scratch, recursive=True)
            session.close()


def all_ok(checks: Sequence[TargetCheck]) -> bool:
    return all(check.ok for check in checks)
