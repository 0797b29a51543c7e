"""The worker runtime: what runs a plugin in a worker, and the host's end of it.

Not for plugin authors (their surface is ``drhost_hookspecs``). It ships in the same
distribution because a worker runs ``python -m drhost_hookspecs._runtime.worker`` with the
``drhost_hookspecs`` the host installed, and a container bundle copies that package whole.
The host imports only this face: the wire protocol, fault injection, the confinement
switch, doctor's probe plugin and the ``{root}`` placeholder its Context confines paths by.
How they work: docs/architecture.md ("Worker protocol").
"""

from __future__ import annotations

from .._types import ROOT_PLACEHOLDER
from ._confine import CONFINE_ENV
from ._faults import FAULT_KINDS, FaultSpec, InjectedCrash, inject, parse_faults
from ._probe import PROBE_PLUGIN, PROBE_VALUE
from ._protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    call_label,
    decode,
    encode,
    error_to_json,
    json_problem,
    not_json_message,
)

#: What a launcher passes to ``python -m``. Not imported here: ``-m`` would then find the module
#: already loaded by its package and warn that it runs twice.
WORKER_MODULE = f"{__name__}.worker"

__all__ = [
    "CONFINE_ENV",
    "FAULT_KINDS",
    "MAX_MESSAGE_BYTES",
    "PROBE_PLUGIN",
    "PROBE_VALUE",
    "PROTOCOL_VERSION",
    "ROOT_PLACEHOLDER",
    "WORKER_MODULE",
    "FaultSpec",
    "InjectedCrash",
    "ProtocolError",
    "call_label",
    "decode",
    "encode",
    "error_to_json",
    "inject",
    "json_problem",
    "not_json_message",
    "parse_faults",
]
