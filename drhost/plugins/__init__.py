"""Plugin discovery, listing, the description cache and the plugin lock."""

from ._gate import check_registry, check_run
from ._lock import LockEntry, PluginLock, PluginLockError, find_lock, read_lock, write_lock, write_path
from ._registry import ALLOW_ENV, PluginRecord, Registry, discover

__all__ = [
    "ALLOW_ENV",
    "LockEntry",
    "PluginLock",
    "PluginLockError",
    "PluginRecord",
    "Registry",
    "check_registry",
    "check_run",
    "discover",
    "find_lock",
    "read_lock",
    "write_lock",
    "write_path",
]
