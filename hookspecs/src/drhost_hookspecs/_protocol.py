"""The JSON-lines protocol between the host and a sandboxed worker.

One JSON object per line; nothing is ever pickled. Both sides bound the size of
a line so that a flood or a giant message is an error, not an exhausted host.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from ._errors import Cancelled, SkipStep, StepFailed, UpToDate
from ._faults import InjectedCrash

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
PROTOCOL_VERSION = 1

#: message type -> required keys and their JSON types (the schema of the protocol)
MESSAGE_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    # worker -> host
    "hello": {"pid": int, "protocol": int},
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
