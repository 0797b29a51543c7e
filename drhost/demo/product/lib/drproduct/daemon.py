"""drproductd: the daemon. Double fork + setsid, atomic pid file, HTTP /health and /jobs."""
from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import db, license
from .common import PRODUCT, Failure, Parser, Release, Root, pid_alive, pid_cmdline, read_pid, run_tool, write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("drproductd")


def replication_problem(root: Root, release: Release) -> str | None:
    if release.major < 2:
        return None
    mode = root.ini().get("replication", "mode", fallback=None)
    if mode is None:
        return f"{root.ini_path} lacks [replication] mode (required by {release.version})"
    if mode not in ("async", "sync"):
        return f"{root.ini_path}: [replication] mode: expected async or sync, found {mode!r}"
    return None


def health(root: Root, release: Release) -> tuple[int, dict[str, Any]]:
    """Evaluated on every request so that migrations, licence and ini edits show up live."""
    problems: list[str] = []
    schema: int | None = None
    jobs: int | None = None
    try:
        conn = db.connect(root.catalog_path())
        try:
            schema = db.schema_of(conn)
            jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        finally:
            conn.close()
    except (Failure, sqlite3.Error) as exc:
        problems.append(f"catalog: {exc}")
    if schema is not None and schema != release.schema:
        problems.append(f"catalog schema {schema}, release {release.version} needs schema {release.schema}")
    try:
        problems += license.problems_for(license.load(root), release.series, root.license_path)
        rep = replication_problem(root, release)
        if rep:
            problems.append(rep)
    except Failure as exc:
        problems.append(str(exc))
    body: dict[str, Any] = {"status": "degraded" if problems else "ok", "product": PRODUCT,
                            "version": release.version, "schema": schema, "jobs": jobs, "pid": os.getpid()}
    if problems:
        body["problems"] = problems
    return (503 if problems else 200), body


def make_handler(root: Root, release: Release) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "drproductd/" + release.version

        def do_GET(self) -> None:
            try:
                if self.path == "/health":
                    code, body = health(root, release)
                elif self.path == "/jobs":
                    conn = db.connect(root.catalog_path())
                    try:
                        code, body = 200, [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
                    finally:
                        conn.close()
                else:
                    code, body = 404, {"error": f"no such path: {self.path}"}
            except Exception as exc:
                log.exception("request %s failed", self.path)
                code, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
            data = (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def _setup_logging(root: Root) -> None:
    os.makedirs(os.path.dirname(root.log_path), exist_ok=True)
    handler = logging.FileHandler(root.log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _daemonize() -> None:
    """Classic double fork: the service must not be a child of (or share a session with) its starter."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _preflight(root: Root, release: Release) -> None:
    """Everything that makes start fail, checked before forking so the starter sees the reason."""
    rep = replication_problem(root, release)
    if rep:
        raise Failure(f"refusing to start {release.version}: {rep}")
    pid = read_pid(root.pid_path)
    if pid and pid_alive(pid) and any("drproductd" in a for a in pid_cmdline(pid)):
        raise Failure(f"already running as pid {pid} ({root.pid_path})")


def _serve(root: Root, release: Release, server: ThreadingHTTPServer) -> int:
    stop = threading.Event()

    def on_term(signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # serve_forever runs in a thread because shutdown() must be called from another thread.
    worker = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    worker.start()
    log.info("drproductd %s (schema %d) serving on 127.0.0.1:%d, pid %d",
             release.version, release.schema, server.server_address[1], os.getpid())
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    # Only remove the pid file if it is still ours: a successor may already own it.
    if read_pid(root.pid_path) == os.getpid():
        os.unlink(root.pid_path)
    log.info("stopped cleanly")
    return 0


def _main(argv: list[str], release_dir: str) -> int:
    parser = Parser(prog="drproductd")
    parser.add_argument("--root", required=True)
    parser.add_argument("--foreground", action="store_true")
    args = parser.parse_args(argv)
    root = Root(args.root)
    release = Release(release_dir)
    _setup_logging(root)
    try:
        _preflight(root, release)
        port = root.port()
        ThreadingHTTPServer.allow_reuse_address = True
        try:
            # Bind before forking: a busy port is reported to whoever started us.
            server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(root, release))
        except OSError as exc:
            raise Failure(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    except Failure as exc:
        log.error("start failed: %s", exc)
        raise
    server.daemon_threads = True
    if args.foreground:
        write_atomic(root.pid_path, f"{os.getpid()}\n".encode())
        return _serve(root, release, server)

    rfd, wfd = os.pipe()
    first = os.fork()
    if first > 0:
        # The starter waits for the grandchild's "ready" so `start` exits 0 only with a pid file in place.
        os.close(wfd)
        os.waitpid(first, 0)
        with os.fdopen(rfd, "rb") as reader:
            msg = reader.read().decode("utf-8", "replace").strip()
        if msg.startswith("ready"):
            print(json.dumps({"started": True, "pid": int(msg.split()[1])}))
            return 0
        raise Failure(msg or f"daemon exited before it was ready (see {root.log_path})")
    os.close(rfd)
    try:
        _daemonize()
        write_atomic(root.pid_path, f"{os.getpid()}\n".encode())
    except BaseException as exc:
        log.exception("daemonize failed")
        os.write(wfd, (f"daemonize failed: {exc}").encode())
        os._exit(1)
    os.write(wfd, f"ready {os.getpid()}".encode())
    os.close(wfd)
    try:
        rc = _serve(root, release, server)
    except BaseException:
        log.exception("daemon crashed")
        rc = 1
    logging.shutdown()
    os._exit(rc)


def main(argv: list[str], release_dir: str) -> int:
    return run_tool("drproductd", _main, argv, release_dir)
