"""A TCP proxy on loopback that breaks connections on purpose (the toxiproxy model, in threads).

``TcpProxy(upstream_host, upstream_port)`` listens on a free 127.0.0.1 port; each accepted client gets its
own connection to the upstream. Faults, changeable at any time and applied to open connections too:

- ``limit_data(n)``: a connection is cut once ``n`` bytes went client→server (exactly ``n`` are forwarded,
  counted from the connection's start, like toxiproxy's ``limit_data``): the client's socket is closed,
  the server gets a FIN after the ``n`` bytes (not a RST, so it keeps everything it received).
  ``limit_data(None)`` lifts it.
- ``set_latency(seconds, direction)``: every chunk is delivered ``seconds`` after it arrived, without
  limiting throughput (a delay line, not a sleep per read).
- ``blackhole(True, direction)``: data is read and dropped; connections stay open (a frozen peer, a
  silently dropping firewall). ``blackhole(False)`` resumes forwarding of later data.
- ``cut()``: close every open connection now.

Directions: ``"up"`` is client→server, ``"down"`` server→client, ``"both"``.
Counters ``bytes_up`` / ``bytes_down`` total what was forwarded; ``connections`` counts accepted clients.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from types import TracebackType

_DIRECTIONS = {"up": ("up",), "down": ("down",), "both": ("up", "down")}


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Link:
    """One proxied client connection: two sockets, two delay lines, four threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.closed = threading.Event()
        self.sent_up = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        for direction, source, target in (("up", self.client, self.server), ("down", self.server, self.client)):
            line: collections.deque[tuple[float, bytes]] = collections.deque()
            ready = threading.Condition()
            threading.Thread(target=self._read, args=(direction, source, line, ready), daemon=True).start()
            threading.Thread(target=self._write, args=(direction, target, line, ready), daemon=True).start()

    def close(self, *, drain_server: bool = False) -> None:
        """Close both sides. ``drain_server``: end the server's stream with a FIN after what was forwarded
        and read its replies until it closes (<= 10 s: a loaded server takes its time), so no RST makes it drop
        data it has not read yet."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.client,) if drain_server else (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        if drain_server:
            threading.Thread(target=self._drain_server, daemon=True).start()
        self.proxy._forget(self)

    def _drain_server(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_WR)
            self.server.settimeout(10)
            while self.server.recv(65536):
                pass
        with contextlib.suppress(OSError):
            self.server.close()

    def _read(
        self,
        direction: str,
        source: socket.socket,
        line: collections.deque[tuple[float, bytes]],
        ready: threading.Condition,
    ) -> None:
        try:
            while not self.closed.is_set():
                try:
                    data = source.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if direction in self.proxy._blackholed:
                    continue
                with ready:
                    line.append((time.monotonic() + self.proxy._latency[direction], data))
                    ready.notify()
        finally:
            with ready:
                line.append((0.0, b""))  # end of stream: the writer closes the link after what is queued
                ready.notify()

    def _write(
        self,
        direction: str,
        target: socket.socket,
        line: collections.deque[tuple[float, bytes]],
        ready: threading.Condition,
    ) -> None:
        try:
            while not self.closed.is_set():
                with ready:
                    while not line:
                        ready.wait(0.2)
                        if self.closed.is_set():
                            return
                    due, data = line.popleft()
                if not data:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if direction == "up" and not self._pass_up(target, data):
                    return
                if direction == "down":
                    target.sendall(data)
                    self.proxy._count("down", len(data))
        except OSError:
            pass
        finally:
            self.close()

    def _pass_up(self, target: socket.socket, data: bytes) -> bool:
        limit = self.proxy._limit_up
        if limit is not None and self.sent_up + len(data) >= limit:
            data = data[: max(0, limit - self.sent_up)]
            target.sendall(data)
            self.sent_up += len(data)
            self.proxy._count("up", len(data))
            self.close(drain_server=True)
            return False
        target.sendall(data)
        self.sent_up += len(data)
        self.proxy._count("up", len(data))
        return True


class TcpProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_host:upstream_port``, with faults on demand."""

    def __init__(self, upstream_host: str, upstream_port: int, listen_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(64)
        self.host = listen_host
        self.port = int(self._listener.getsockname()[1])
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._limit_up: int | None = None
        self._latency = {"up": 0.0, "down": 0.0}
        self._blackholed: set[str] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0

    # -- faults -------------------------------------------------------------------------------------
    def limit_data(self, limit: int | None) -> None:
        self._limit_up = limit

    def set_latency(self, seconds: float, direction: str = "both") -> None:
        for name in _DIRECTIONS[direction]:
            self._latency[name] = seconds

    def blackhole(self, enabled: bool = True, direction: str = "both") -> None:
        for name in _DIRECTIONS[direction]:
            if enabled:
                self._blackholed.add(name)
            else:
                self._blackholed.discard(name)

    def cut(self) -> None:
        for link in self.open_links():
            link.close()

    def reset(self) -> None:
        """Lift every fault (open connections stay)."""
        self.limit_data(None)
        self.set_latency(0.0)
        self.blackhole(False)

    def open_links(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._accept, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            _nodelay(client)
            _nodelay(server)
            link = _Link(self, client, server)
            with self._lock:
                self._links.add(link)
                self.connections += 1
            link.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _count(self, direction: str, size: int) -> None:
        with self._lock:
            if direction == "up":
                self.bytes_up += size
            else:
                self.bytes_down += size
