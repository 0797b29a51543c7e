"""Resumable, pipelined, checksummed upload of one file over SFTP.

The file goes to ``REMOTE.part``; an existing ``.part`` is kept when its bytes are a prefix of the local
file (the target hashes them, we hash ours) and the upload resumes after it. Writes are pipelined: up to
``window`` write requests are in flight before the oldest acknowledgement is awaited, so the upload runs at
the speed of the link and the ciphers, not at one round trip per request. The finished ``.part`` is hashed
on the target and compared with the local sha256 before it is renamed over ``REMOTE``.

paramiko's own pipelined ``SFTPFile.write`` caps requests at 32 KiB and never bounds the number of
requests in flight; this module sends its own write requests (up to :data:`MAX_WRITE_REQUEST` bytes,
the ``max-write-length`` OpenSSH's sftp-server reports) through the client's request queue and reads
each acknowledgement in order, so a failed write is raised, not dropped.

The socket under the transport must have TCP_NODELAY (docs: DESIGN §5); create it yourself and pass it to
``paramiko.Transport``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import paramiko
from paramiko.sftp import CMD_WRITE, int64

from ._base import TransportError

#: Largest data payload of one SFTP write request: OpenSSH's sftp-server accepts messages of up to
#: 256 KiB and advertises ``max-write-length`` 261120 (255 KiB) in ``limits@openssh.com``.
MAX_WRITE_REQUEST = 255 * 1024

RemoteSha256 = Callable[[str, "int | None"], str]
Progress = Callable[[int, int], None]
#: ``hash_while(path, size)``: start hashing ``path`` on the target as its first ``size`` bytes arrive; returns
#: a function that waits for that hash (None if it could not be had).
HashWhile = Callable[[str, int], Callable[[], "str | None"]]


class UploadError(TransportError):
    """The upload did not end with a verified file; ``category`` is ``file`` for a checksum failure."""

    def __init__(
        self, message: str, *, category: str = "file", local_sha256: str = "", remote_sha256: str = ""
    ) -> None:
        super().__init__(message, category=category)
        self.local_sha256 = local_sha256
        self.remote_sha256 = remote_sha256


@dataclass(frozen=True)
class UploadReport:
    """What one :func:`upload_resumable` call did."""

    bytes_total: int
    #: Payload bytes written over SFTP by this call, over all attempts.
    bytes_sent: int
    #: Bytes of an existing ``.part`` that were verified and kept (0 when none or restarted).
    resumed_from: int
    #: Send-and-verify rounds: 1, or more when the target's checksum did not match.
    attempts: int
    duration_s: float
    #: ``bytes_sent`` per second of ``duration_s``, in MB/s (10^6 bytes).
    mb_per_s: float
    sha256: str


def sha256_command(path: str, length: int | None = None) -> str:
    """The POSIX sh line that prints the sha256 of ``path`` (of its first ``length`` bytes if given)."""
    quoted = shlex.quote(path)
    return f"sha256sum < {quoted}" if length is None else f"head -c {int(length)} < {quoted} | sha256sum"


def _local_sha256(handle: BinaryIO, length: int, block: int = 1024 * 1024) -> hashlib._Hash:
    digest = hashlib.sha256()
    handle.seek(0)
    left = length
    while left > 0:
        data = handle.read(min(block, left))
        if not data:
            break
        digest.update(data)
        left -= len(data)
    return digest


class KnownHashes:
    """The sha256 of local files already sent whole, by what identifies their content: device, inode, size,
    mtime and ctime (ns). A package uploaded to a hundred targets is hashed on the first few, not a hundred
    times. Any write to the file changes its ctime, which no one can set back, so a changed file is hashed
    afresh; an upload whose file changed while it was sent is not remembered."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, ...], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def identity(handle: BinaryIO) -> tuple[int, ...]:
        st = os.fstat(handle.fileno())
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, identity: tuple[int, ...]) -> str | None:
        with self._lock:
            return self._known.get(identity)

    def forget(self, identity: tuple[int, ...]) -> None:
        with self._lock:
            self._known.pop(identity, None)

    def remember(self, identity: tuple[int, ...], sha256: str) -> None:
        with self._lock:
            if len(self._known) >= 256:  # a run sends a handful of files; never grow without bound
                self._known.clear()
            self._known[identity] = sha256


KNOWN_HASHES = KnownHashes()


def _remote_size(sftp: paramiko.SFTPClient, path: str) -> int | None:
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        return None
    if attrs.st_mode is not None and not stat.S_ISREG(attrs.st_mode):
        raise UploadError.worded("{path} exists and is not a regular file", init={"category": "file"}, path=path)
    return int(attrs.st_size or 0)


def _send(
    sftp: paramiko.SFTPClient,
    local: BinaryIO,
    part: str,
    *,
    start: int,
    total: int,
    digest: hashlib._Hash | None,
    chunk_size: int,
    window: int,
    progress: Progress | None,
    opened: Callable[[], None] | None = None,
) -> int:
    """Write local[start:] to ``part`` at the same offsets, ``window`` requests in flight; feed ``digest``
    (None: the file's hash is already known).
    ``opened()`` is called once ``part`` is open (and, for a fresh upload, empty)."""
    client = cast(Any, sftp)  # request queue of SFTPClient: not in the type stubs
    request = max(1, min(chunk_size, MAX_WRITE_REQUEST))
    mode = "r+b" if start else "wb"
    remote = sftp.open(part, mode)
    try:
        if opened is not None:
            opened()
        handle = cast(Any, remote).handle
        in_flight: collections.deque[tuple[int, int]] = collections.deque()  # (request number, end offset)
        offset = start
        local.seek(start)
        while offset < total:
            data = local.read(min(request, total - offset))
            if not data:
                raise UploadError.worded("local file shrank during upload at byte {offset}",
                                         init={"category": "file"}, offset=offset)
            if digest is not None:
                digest.update(data)
            num = client._async_request(type(None), CMD_WRITE, handle, int64(offset), data)
            offset += len(data)
            in_flight.append((num, offset))
            while len(in_flight) >= window:
                num, acked = in_flight.popleft()
                client._read_response(num)  # raises IOError on a failed write
                if progress is not None:
                    progress(acked, total)
        while in_flight:
            num, acked = in_flight.popleft()
            client._read_response(num)
            if progress is not None:
                progress(acked, total)
    finally:
        remote.close()
    return total - start


def upload_resumable(
    sftp: paramiko.SFTPClient,
    local_path: str,
    remote_path: str,
    *,
    remote_sha256: RemoteSha256,
    progress: Progress | None = None,
    chunk_size: int = 256 * 1024,
    window: int = 32,
    attempts: int = 2,
    hash_while: HashWhile | None = None,
) -> UploadReport:
    """Upload ``local_path`` to ``remote_path`` through ``remote_path + ".part"``, resuming a valid part.

    ``remote_sha256(path, n)`` returns the hex sha256 of the first ``n`` bytes of ``path`` on the target
    (the whole file for ``None``), e.g. by running ``head -c N FILE | sha256sum``. A ``.part`` whose
    prefix hash differs from the local file's, or that is longer than it, is restarted from byte 0.
    After sending, the whole ``.part`` is hashed on the target; on a mismatch the part is deleted and
    sent again, up to ``attempts`` rounds in all, then :class:`UploadError` (category ``file``) names both
    hashes. On success the part is renamed over ``remote_path`` (``posix-rename@openssh.com``).
    ``progress(done, total)`` gets acknowledged bytes on the target, including a resumed prefix.
    ``hash_while``: the target hashes the part as it arrives (the remote helper), so the verification costs
    no time after the transfer; a hash it could not give, or one that differs, is checked again with
    ``remote_sha256`` before anything is concluded, so only a hash of the whole file decides.
    Network failures surface as paramiko's / the socket's exceptions; call again on a new transport to
    resume.
    """
    if window < 1 or chunk_size < 1 or attempts < 1:
        raise ValueError("window, chunk_size and attempts must be at least 1")
    part = remote_path + ".part"
    began = time.monotonic()
    sent = 0
    resumed_from = 0
    with open(local_path, "rb") as local:
        total = local.seek(0, 2)
        identity = KNOWN_HASHES.identity(local)
        for attempt in range(1, attempts + 1):
            start = 0
            digest = hashlib.sha256()
            existing = _remote_size(sftp, part) if attempt == 1 else None
            if existing and existing <= total:
                prefix = _local_sha256(local, existing)
                if remote_sha256(part, existing) == prefix.hexdigest():
                    start = resumed_from = existing
                    digest = prefix
            known = KNOWN_HASHES.get(identity) if start == 0 else None
            if progress is not None:
                progress(start, total)
            following: list[Callable[[], str | None]] = []

            def follow(into: list[Callable[[], str | None]] = following) -> None:
                if hash_while is not None:
                    into.append(hash_while(part, total))

            sent += _send(
                sftp,
                local,
                part,
                start=start,
                total=total,
                digest=None if known is not None else digest,
                chunk_size=chunk_size,
                window=window,
                progress=progress,
                opened=follow,
            )
            if known is not None:
                local_hash = known
            else:
                local_hash = digest.hexdigest()
                if start == 0 and KNOWN_HASHES.identity(local) == identity:
                    KNOWN_HASHES.remember(identity, local_hash)
            followed = following[0]() if following else None
            target_hash = followed if followed == local_hash else remote_sha256(part, None)
            if target_hash == local_hash:
                sftp.posix_rename(part, remote_path)
                duration = time.monotonic() - began
                return UploadReport(
                    bytes_total=total,
                    bytes_sent=sent,
                    resumed_from=resumed_from,
                    attempts=attempt,
                    duration_s=duration,
                    mb_per_s=sent / duration / 1e6 if duration > 0 else 0.0,
                    sha256=local_hash,
                )
            sftp.remove(part)
            resumed_from = 0
            KNOWN_HASHES.forget(identity)  # the next round hashes what it sends
    raise UploadError.worded(
        "{path}: sha256 on the target {remote_sha256} differs from the local {local_sha256} after {attempts} "
        "attempt(s)",
        init={"category": "file", "local_sha256": local_hash, "remote_sha256": target_hash},
        path=remote_path, remote_sha256=target_hash, local_sha256=local_hash, attempts=attempts,
    )
