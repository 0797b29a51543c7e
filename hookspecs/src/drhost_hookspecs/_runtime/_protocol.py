"""The JSON-lines protocol between the host and a sandboxed worker.

One JSON object per line; nothing is ever pickled. Both sides bound the size of
a line so that a flood or a giant message is an error, not an exhausted host.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from .._errors import Cancelled, SkipStep, StepFailed, UpToDate
from ._faults import InjectedCrash

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
PROTOCOL_VERSION = 1

#: message type -> required keys and their JSON types (the schema of the protocol)
MESSAGE_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    # worker -> host
    # "protocol" (int) is required too, but checked by the host's handshake, which names a stale worker.
    "hello": {"pid": int},
    "fatal": {"error": dict},
    "request": {"id": int, "call_id": int, "method": str, "args": dict},
    "notify": {"call_id": int, "method": str, "args": dict},
    "result": {"id": int, "state": dict},
    "error": {"id": int, "error": dict, "state": dict},
    # host -> worker
    "call": {"id": int, "op": str, "ctx": dict},
    "reply": {"id": int},
    "cancel": {"id": int},
    "shutdown": {},
}
#: Fields the schema allows to be anything JSON (still required).
_FREE_FIELDS = {"result": ("result",)}
MESSAGE_KEYS = {kind: (*fields, *_FREE_FIELDS.get(kind, ())) for kind, fields in MESSAGE_SCHEMA.items()}


class ProtocolError(Exception):
    """A message that is not valid JSON, too large, or not of a known shape."""


#: What a plugin's state and results may hold; said in every refusal.
JSON_VALUES = "state and results must be JSON values (str, int, float, bool, None, list, dict)"


def _kind(value: object) -> str:
    """How a refusal names a value's type: ``a socket``, ``an Event``, ``a set``."""
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def json_problem(value: Any, where: str) -> str | None:
    """Why ``value`` is not a strict JSON value, naming where in it (``ctx.state['conn'] is a socket``); or None.

    Strict: NaN and the infinities are refused (JSON has no such numbers, and the run's state, journal and
    ``--json`` output must parse anywhere); so are object keys that are not strings (JSON would turn them into
    strings behind the plugin's back) and cycles. Tuples are accepted as arrays (they come back as lists).
    """
    stack: list[tuple[Any, str, tuple[int, ...]]] = [(value, where, ())]
    while stack:
        item, path, parents = stack.pop()
        if item is None or isinstance(item, (str, bool, int)):
            continue
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return f"{path} is {item!r}, which is not JSON (no NaN or Infinity)"
            continue
        if isinstance(item, (dict, list, tuple)):
            if id(item) in parents:
                return f"{path} contains itself (a cycle), which is not JSON"
            inner = (*parents, id(item))
            if isinstance(item, dict):
                for key, child in reversed(list(item.items())):
                    if not isinstance(key, str):
                        return f"{path} has the key {key!r}, {_kind(key)}: JSON object keys are strings"
                    stack.append((child, f"{path}[{key!r}]", inner))
            else:
                stack.extend((child, f"{path}[{i}]", inner) for i, child in reversed(list(enumerate(item))))
            continue
        return f"{path} is {_kind(item)}, which is not JSON"
    return None


def call_label(plugin: str, op: str, *, step: str | None = None, stage: str | None = None) -> str:
    """Which call a message is about: ``plugin 'x' step 'backup-db'``, ``plugin 'x' rollback of stage 'upgrade'``."""
    if step:
        return f"plugin {plugin!r} step {step!r}" + (f" ({op.replace('_', ' ')})" if op != "run_step" else "")
    return f"plugin {plugin!r} {op.replace('_', ' ')}" + (f" of stage {stage!r}" if stage else "")


def not_json_message(who: str, problem: str) -> str:
    """The one refusal for a value that is not JSON: ``plugin 'x' step 'y': ctx.state['conn'] is a socket, ...``."""
    return f"{who}: {problem}; {JSON_VALUES}"


def encode(message: dict[str, Any], *, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
    if len(data) > limit:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {limit}")
    return data


def decode(line: bytes, *, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    if len(line) > limit:
        raise ProtocolError(f"message of {len(line)}+ bytes exceeds the limit of {limit}")
    if not line.endswith(b"\n"):
        raise ProtocolError("message cut off before its end of line")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}; starts with {line[:80]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, found {type(message).__name__}")
    kind = message.get("type")
    if kind not in MESSAGE_KEYS:
        raise ProtocolError(f"unknown message type {kind!r}")
    missing = [key for key in MESSAGE_KEYS[kind] if key not in message]
    if missing:
        raise ProtocolError(f"{kind} message lacks {', '.join(missing)}")
    for key, expected in MESSAGE_SCHEMA[kind].items():
        value = message[key]
        # bool is an int to Python, never to the protocol.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ProtocolError(f"{kind} message: {key} must be {getattr(expected, '__name__', expected)}, "
                                f"found {type(value).__name__}")
    return message


def error_to_json(exc: BaseException) -> dict[str, Any]:
    """Describe an exception raised by plugin code, for the host."""
    kind = "exception"
    retryable = True
    if isinstance(exc, StepFailed):
        kind, retryable = "step_failed", exc.retryable
    elif isinstance(exc, SkipStep):
        kind = "skip"
    elif isinstance(exc, UpToDate):
        kind = "up_to_date"
    elif isinstance(exc, Cancelled):
        kind = "cancelled"
    elif isinstance(exc, MemoryError):
        kind = "memory"
    elif isinstance(exc, InjectedCrash):
        kind = "crash"
    message = str(exc) or type(exc).__name__
    return {
        "kind": kind,
        "type": type(exc).__name__,
        "message": message,
        "retryable": retryable,
        "version": getattr(exc, "version", None),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
    }
