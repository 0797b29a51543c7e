"""The ``DRHOST_*`` environment variables drhost reads, checked once before a command runs.

Each is read where it is used (``state_root``, the description cache, retry waits, plugin discovery, failpoints),
often deep inside a run or in a worker. A bad value found there would surface as a traceback, or be silently
ignored, after the run had started; checked here, it is one line naming the variable before anything is touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import EnvironmentVariableError, phrase
from .failpoints import ENV as FAILPOINT_ENV
from .failpoints import LOG_ENV as FAILPOINT_LOG_ENV
from .failpoints import parse_spec
from .i18n import N_
from .plugins import ALLOW_ENV
from .policy import INSTANT_RETRIES_ENV
from .state import CACHE_ENV

STATE_ENV = "DRHOST_STATE_DIR"

#: Longest path accepted from the environment: the kernel's PATH_MAX.
PATH_LIMIT = 4096

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_environment(environ: Mapping[str, str] | None = None, *, state: bool = False) -> None:
    """Refuse (:class:`EnvironmentVariableError`, exit 2) the first ``DRHOST_*`` variable drhost cannot use.

    ``state``: the command keeps state, so the state directory must be usable even when no variable names it.
    """
    env = os.environ if environ is None else environ
    retries = env.get(INSTANT_RETRIES_ENV)
    if retries not in (None, "", "0", "1"):
        raise EnvironmentVariableError(INSTANT_RETRIES_ENV, retries,
                                       N_("1 (retries do not wait) or 0 (they do; the same as unset)"))
    allowed = env.get(ALLOW_ENV)
    if allowed:
        for name in allowed.split(","):
            if name.strip() and not _PLUGIN_NAME.fullmatch(name.strip()):
                raise EnvironmentVariableError(ALLOW_ENV, allowed, f"a comma-separated list of plugin names "
                                               f"(letters, digits, '_', '.', '-'); {name.strip()!r} is not one")
    spec = env.get(FAILPOINT_ENV)
    if spec:
        try:
            parse_spec(spec)
        except ValueError:
            raise EnvironmentVariableError(FAILPOINT_ENV, spec, N_("NAME[@N][+SECONDS] with N >= 1 and SECONDS >= 0 "
                                                                   "(a test-only variable: unset it)")) from None
    log = env.get(FAILPOINT_LOG_ENV)
    if log:
        _check_path(FAILPOINT_LOG_ENV, log, directory=False)
    cache = env.get(CACHE_ENV)
    if cache:
        _check_path(CACHE_ENV, cache, directory=True)
    explicit = env.get(STATE_ENV)
    if explicit:
        _check_path(STATE_ENV, explicit, directory=True)
    elif state:
        xdg = env.get("XDG_STATE_HOME")
        if xdg:
            _check_path("XDG_STATE_HOME", str(Path(xdg) / "drhost"), directory=True, shown=xdg)
        elif env.get("HOME"):
            _check_path("HOME", str(Path(env["HOME"]) / ".local" / "state" / "drhost"), directory=True,
                        shown=env["HOME"])


def _check_path(variable: str, value: str, *, directory: bool, shown: str | None = None) -> None:
    """``value`` is (or can be created as) a directory, or a file in one, that this user can write."""
    text = value if shown is None else shown

    def refuse(expected: str) -> EnvironmentVariableError:
        return EnvironmentVariableError(variable, text, expected)

    kind = phrase("a directory") if directory else phrase("a file")
    if len(value) > PATH_LIMIT:
        raise refuse(phrase("the path of {kind} of at most {limit} characters", kind=kind, limit=PATH_LIMIT))
    if _CONTROL.search(value):
        raise refuse(phrase("the path of {kind}, without control characters", kind=kind))
    path = Path(value)
    try:
        if path.exists():
            if directory and not path.is_dir():
                raise refuse(phrase("{kind} (drhost's state or cache lives in it); {value} is not a directory",
                                    kind=kind, value=value))
            if not directory and path.is_dir():
                raise refuse(phrase("{kind}; {value} is a directory", kind=kind, value=value))
            if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
                raise refuse(phrase("{kind} this user can write; {value} is not writable", kind=kind, value=value))
            return
        parent = next((p for p in path.absolute().parents if p.exists()), None)
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES on the way: the path is unusable as given
        raise refuse(phrase("the path of {kind}: {why}", kind=kind, why=exc.strerror or exc)) from None
    if parent is None or not parent.is_dir():
        raise refuse(phrase("the path of {kind}; {parent} is not a directory, so {value} cannot be created",
                            kind=kind, parent=parent, value=value))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise refuse(phrase("the path of {kind} this user can create; {parent} is not writable", kind=kind,
                            parent=parent))
