"""Paths, configuration and small helpers shared by every drproduct tool."""
from __future__ import annotations

import argparse
import configparser
import json
import os
import sys

# Every tool is a short-lived process run dozens of times per upgrade: modules only annotations need (typing) or
# only one command needs are not imported at start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

PRODUCT = "drproduct"


class UsageError(Exception):
    """Bad input from the operator: reported as one line on stderr, exit 2."""


class Failure(Exception):
    """The operation could not be done: reported as one line on stderr, exit 1."""


class Release:
    """The release directory a tool runs from, and what its builder stamped into it."""

    def __init__(self, release_dir: str) -> None:
        self.dir = release_dir
        self.version = _read_stamp(release_dir, "VERSION")
        schema = _read_stamp(release_dir, "SCHEMA")
        try:
            self.schema = int(schema)
        except ValueError:
            raise Failure(f"{release_dir}/SCHEMA: expected an integer, found {schema!r}") from None
        self.major = int(self.version.split(".")[0])
        self.series = f"{self.major}.x"

    def migrations(self) -> list[tuple[int, str]]:
        """(number, path) of every migration shipped with this release, in order."""
        mdir = os.path.join(self.dir, "migrations")
        found = []
        for name in sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []:
            head = name.split("_", 1)[0]
            if name.endswith(".sql") and head.isdigit():
                found.append((int(head), os.path.join(mdir, name)))
        return found


def _read_stamp(release_dir: str, name: str) -> str:
    path = os.path.join(release_dir, name)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        raise Failure(f"{path} missing: this tool is not running from a built release") from None


class Root:
    """An install root R (see docs/product.md for its layout)."""

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise UsageError(f"unknown root {path}: no such directory")
        self.path = os.path.abspath(path)

    def p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def ini_path(self) -> str:
        return self.p("etc", "drproduct.ini")

    @property
    def license_path(self) -> str:
        return self.p("etc", "license.lic")

    @property
    def service_path(self) -> str:
        return self.p("etc", "services", "drproductd.json")

    @property
    def pid_path(self) -> str:
        return self.p("run", "drproductd.pid")

    @property
    def log_path(self) -> str:
        return self.p("log", "drproductd.log")

    def ini(self) -> configparser.ConfigParser:
        cp = configparser.ConfigParser()
        if not os.path.isfile(self.ini_path):
            raise Failure(f"{self.ini_path} missing")
        try:
            cp.read(self.ini_path, encoding="utf-8")
        except configparser.Error as exc:
            raise Failure(f"{self.ini_path}: {str(exc).splitlines()[0]}") from None
        return cp

    def port(self) -> int:
        raw = self.ini().get("service", "port", fallback=None)
        if raw is None:
            raise Failure(f"{self.ini_path}: [service] port missing")
        try:
            port = int(raw)
        except ValueError:
            raise Failure(f"{self.ini_path}: [service] port: expected an integer, found {raw!r}") from None
        if not 0 < port < 65536:
            raise Failure(f"{self.ini_path}: [service] port: expected 1..65535, found {port}")
        return port

    def catalog_path(self) -> str:
        rel = self.ini().get("catalog", "path", fallback="data/catalog.db")
        return rel if os.path.isabs(rel) else self.p(rel)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old or the new content, never a torn file, even across a crash."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    # Unique per process and exclusive: no tempfile import (and its random/shutil) for one file name.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def emit(obj: Any) -> None:
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


class _HelpFormatter(argparse.HelpFormatter):
    # A fixed width: argparse builds a formatter for every add_argument, and asking the terminal's width
    # imports shutil (and with it bz2 and lzma) into every run of every tool.
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit 2, as every other input error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}\n")
        sys.exit(2)


def run_tool(prog: str, body: Any, argv: list[str], release_dir: str) -> int:
    """Run a tool body; turn expected failures into one stderr line and the contract's exit code."""
    try:
        rc = body(argv, release_dir)
        return 0 if rc is None else int(rc)
    except UsageError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    except Failure as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: operators get one line, never a traceback
        sys.stderr.write(f"{prog}: {type(exc).__name__}: {exc}\n")
        return 1


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (containers may have no reaping init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def pid_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None
