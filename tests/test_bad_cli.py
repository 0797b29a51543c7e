"""Bad input to the command line as a whole: arguments, environment variables, report paths, internal errors.

Every case: the right exit code, one ``drhost: error:`` line naming the argument or variable and its value, no
traceback, nothing on stdout but (with ``--json``) exactly one JSON object, and no file changed — neither the
target's nor the state directory's.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import tree_digest
from drhost.cli import _main
from drhost.cli import main as drhost_main
from drhost.config import load_config
from drhost.demo import install
from drhost.orchestrator import create_run
from drhost.packaging import build_package
from drhost.plan import Plan
from drhost_hookspecs import PackageInfo

Drhost = Callable[..., subprocess.CompletedProcess[str]]

LONG = "x" * 100_000


@dataclass
class World:
    """A real drproduct target, an inventory naming it, a created run, and a regular file to misuse."""

    tmp: Path
    state: Path
    root: Path
    inventory: Path
    file: Path
    run: str

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, inv=self.inventory, file=self.file, run=self.run)

    def digest(self) -> dict[str, Any]:
        # The whole tmp dir: target, state dir (no run dir, no report, no debug log), inventory and the rest.
        return tree_digest(self.tmp)


@pytest.fixture
def world(tmp_path: Path, state_dir: Path) -> World:
    root = tmp_path / "target"
    install.install_fresh(build_package("1.0.0", tmp_path), root, install.free_port())
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:t1]\ntransport = local\nroot = {root}\n")
    config = load_config(overrides=["target.t1.transport=local", f"target.t1.root={root}"])
    package = PackageInfo("drproduct", "2.0.0", ("1.0.0",), str(tmp_path / "pkg.tar.gz"), "", "0" * 64, 0)
    state = create_run(config=config.data, config_files=[], plan=Plan((), ()), package=package)
    state.close()  # as a controller does when its run ends: the state is all in state.db, no -wal left
    plain = tmp_path / "plain-file"
    plain.write_text("not a directory\n")
    return World(tmp_path, state_dir, root, inventory, plain, state.run_id)


@dataclass(frozen=True)
class Case:
    argv: list[str]
    code: int
    names: list[str]
    env: dict[str, str] = field(default_factory=dict)


def check(world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: Case,
          *, as_json: bool) -> dict[str, Any] | None:
    """Run ``case`` in-process and assert everything a bad input must give; the JSON object when asked for."""
    for key, value in case.env.items():
        monkeypatch.setenv(key, world.fill(value))
    before = world.digest()
    code = drhost_main([world.fill(a) for a in case.argv])
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert "Traceback" not in out + err and "\x1b" not in out + err
    (line,) = [x for x in err.splitlines() if x.startswith("drhost: ")]
    assert line.startswith("drhost: error: ") and len(line) < 1500
    for name in case.names:
        assert world.fill(name) in line, (name, line)
    assert world.digest() == before
    if not as_json:
        assert out == ""
        return None
    body: dict[str, Any] = json.loads(out)  # the whole of stdout is one JSON document
    assert set(body) == {"error", "exit_code"} and body["exit_code"] == code
    assert body["error"]["message"] in line and body["error"]["type"]
    return body


BAD_ARGUMENTS = {
    "unknown-command": Case(["upgrad"], 2, ["'upgrad'"]),
    "unknown-option": Case(["status", "--bogus"], 2, ["--bogus"]),
    "forks-not-a-number": Case(["upgrade", "-i", "{inv}", "--forks", "many"], 2, ["--forks", "'many'"]),
    "on-failure-not-a-choice": Case(["resume", "{run}", "--on-failure", "maybe"], 2, ["--on-failure", "'maybe'"]),
    "plugin-new-without-class": Case(["plugin", "new", "acme-audit"], 2, ["--class"]),
    "run-id-100kB": Case(["status", LONG], 2, ["argument RUN", "100000", "xxxx"]),
    "config-path-100kB": Case(["config", "check", LONG], 2, ["argument FILES", "100000"]),
    "inventory-path-100kB": Case(["upgrade", "-i", LONG], 2, ["argument --inventory", "100000"]),
    "set-100kB": Case(["plan", "-i", "{inv}", "--set", "run.forks=" + "9" * 100_000], 2,
                      ["argument --set", "100010", "run.forks=999"]),
    "report-out-into-a-missing-directory": Case(["report", "{run}", "--out", "{tmp}/nowhere/r.html"], 2,
                                                ["--out", "{tmp}/nowhere/r.html", "does not exist"]),
    "report-out-at-a-directory": Case(["report", "{run}", "--out", "{tmp}"], 2, ["--out", "'{tmp}'",
                                                                                 "is a directory"]),
    "report-out-empty": Case(["report", "{run}", "--out", ""], 2, ["--out", "''", "empty"]),
    "report-out-under-a-file": Case(["report", "{run}", "--out", "{file}/r.html"], 2, ["--out", "{file}/r.html"]),
    "plugins-lock-out-under-a-file": Case(["plugins", "lock", "--out", "{file}/sub/p.lock"], 2,
                                          ["--out", "{file}/sub/p.lock", "'{file}' is not a directory"]),
    "plugins-lock-out-at-a-directory": Case(["plugins", "lock", "--out", "{tmp}"], 2, ["--out", "is a directory"]),
    "plugins-lock-out-empty": Case(["plugins", "lock", "--out", ""], 2, ["--out", "''", "empty"]),
    "package-build-out-is-a-file": Case(["package", "build", "2.0.0", "--out", "{file}"], 2,
                                        ["--out", "'{file}'", "expected a directory"]),
    "setting-not-a-number": Case(["doctor", "--set", "run.forks=x"], 2, ["run.forks", "'x'"]),
}

BAD_ENVIRONMENT = {
    "instant-retries-banana": Case(["status", "{run}"], 2, ["DRHOST_INSTANT_RETRIES", "'banana'"],
                                   {"DRHOST_INSTANT_RETRIES": "banana"}),
    "state-dir-is-a-file": Case(["status"], 2, ["DRHOST_STATE_DIR", "'{file}'", "not a directory"],
                                {"DRHOST_STATE_DIR": "{file}"}),
    "state-dir-under-a-file": Case(["upgrade", "-i", "{inv}"], 2, ["DRHOST_STATE_DIR", "'{file}/state'",
                                                                   "cannot be created"],
                                   {"DRHOST_STATE_DIR": "{file}/state"}),
    "state-dir-too-long": Case(["status"], 2, ["DRHOST_STATE_DIR", "4096 characters"],
                               {"DRHOST_STATE_DIR": "/" + "d" * 5000}),
    "state-dir-with-an-escape": Case(["status"], 2, ["DRHOST_STATE_DIR", "\\x1b[2J", "control characters"],
                                     {"DRHOST_STATE_DIR": "{tmp}/\x1b[2J"}),
    "cache-dir-is-a-file": Case(["plugins", "list"], 2, ["DRHOST_CACHE_DIR", "'{file}'"],
                                {"DRHOST_CACHE_DIR": "{file}"}),
    "failpoint-malformed": Case(["status", "{run}"], 2, ["DRHOST_FAILPOINT", "'state.write@zero'", "NAME[@N]"],
                                {"DRHOST_FAILPOINT": "state.write@zero"}),
    "failpoint-log-is-a-directory": Case(["status", "{run}"], 2, ["DRHOST_FAILPOINT_LOG", "is a directory"],
                                         {"DRHOST_FAILPOINT_LOG": "{tmp}"}),
    "load-plugins-not-names": Case(["plugins", "list"], 2, ["DRHOST_LOAD_PLUGINS", "\\x1b[31m"],
                                   {"DRHOST_LOAD_PLUGINS": "dr-core,\x1b[31m"}),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_a_bad_argument_is_one_line_naming_it(world: World, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    """A bad argument is one error line naming the argument and its value, exit 2, and nothing changes."""
    check(world, capsys, monkeypatch, case, as_json=False)
    assert not (world.state / "runs" / world.run / "report.html").exists()


@pytest.mark.parametrize("case", BAD_ENVIRONMENT.values(), ids=BAD_ENVIRONMENT.keys())
def test_a_bad_environment_variable_is_one_line_naming_it(world: World, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    """A DRHOST_* variable drhost cannot use is refused by name with its value (escaped), exit 2, nothing made."""
    check(world, capsys, monkeypatch, case, as_json=False)


JSON_ERRORS = {
    "upgrade": (Case(["upgrade", "--json", "-i", "{inv}", "--forks", "many"], 2, ["--forks"]),
                {"type": "UsageError", "argument": "--forks"}),
    "plan": (Case(["plan", "--json", "-i", "{inv}", "--set", "run.forks=x"], 2, ["run.forks"]),
             {"type": "ConfigError", "file": "--set", "key": "run.forks", "value": "x"}),
    "resume": (Case(["resume", "--json", "nosuch-run"], 7, ["'nosuch-run'"]), {"type": "StateError"}),
    "rollback": (Case(["rollback", "{run}", "--json", "--on-failure", "maybe"], 2, ["'maybe'"]),
                 {"type": "UsageError", "argument": "--on-failure"}),
    "status": (Case(["status", "--json", LONG], 2, ["RUN"]), {"type": "UsageError", "argument": "RUN"}),
    "doctor": (Case(["doctor", "--json", "-c", "{tmp}/missing.ini"], 2, ["{tmp}/missing.ini"]),
               {"type": "ConfigError", "file": "{tmp}/missing.ini"}),
    "plugins-list": (Case(["plugins", "list", "--json"], 2, ["DRHOST_CACHE_DIR"], {"DRHOST_CACHE_DIR": "{file}"}),
                     {"type": "EnvironmentVariableError", "variable": "DRHOST_CACHE_DIR", "value": "{file}"}),
    "plugin-test": (Case(["plugin-test", "--json", "{tmp}/no-such-plugin"], 2, ["{tmp}/no-such-plugin"]),
                    {"type": "SubjectError"}),
    "doctor-value-not-utf8": (Case(["doctor", "--json", "--set", "run.forks=\udcff"], 2, ["run.forks", "\\udcff"]),
                              {"type": "ConfigError", "key": "run.forks", "value": "\\udcff"}),
    "no-command": (Case(["--json"], 2, ["COMMAND"]), {"type": "UsageError"}),
    "unknown-command": (Case(["upgrad", "--json"], 2, ["'upgrad'"]), {"type": "UsageError"}),
}


@pytest.mark.parametrize(("case", "expected"), JSON_ERRORS.values(), ids=JSON_ERRORS.keys())
def test_with_json_an_error_is_one_json_object(world: World, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, case: Case,
                                               expected: dict[str, str]) -> None:
    """With --json, every command's error is exactly one JSON object on stdout: error data and exit_code."""
    body = check(world, capsys, monkeypatch, case, as_json=True)
    assert body is not None
    for key, value in expected.items():
        assert body["error"][key] == world.fill(value), body


def test_an_interrupt_with_json_is_one_json_object_with_exit_6(
        world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C keeps its exit code (6), and with --json still ends as one JSON object."""
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_main, "cmd_status", interrupted)
    code = drhost_main(["status", world.run, "--json"])
    out, err = capsys.readouterr()
    assert code == 6 and err.strip() == "drhost: interrupted"
    assert json.loads(out) == {"error": {"message": "interrupted", "type": "KeyboardInterrupt"}, "exit_code": 6}


def test_an_unexpected_exception_in_process_is_one_line_and_a_private_log(
        world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception nobody expected: exit 1, one line with its type and a 0600 debug log holding the traceback."""
    def broken(args: object) -> int:
        raise ZeroDivisionError("division by zero\nin a bug")

    monkeypatch.setattr(_main, "cmd_status", broken)
    code = drhost_main(["status", world.run])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("drhost: internal error: ZeroDivisionError: division by zero in a bug (details: ")
    log = Path(line.rsplit("(details: ", 1)[1].rstrip(")"))
    assert log.parent == world.state / "debug" and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


# --- real processes: what reaches the terminal -------------------------------------------------------------

_FORCED = """
import sys
import drhost.cli._main as m
def broken(args):
    raise {exception}("forced for the test")
m.cmd_status = broken
sys.argv = ["drhost", *sys.argv[1:]]
sys.exit(m.main())
"""


def _forced_internal_error(env: dict[str, str], *args: str, exception: str = "RuntimeError",
                           ) -> subprocess.CompletedProcess[str]:
    # A real drhost process whose status command raises: the test replaces the function in that process, so no
    # variable or option can make a production drhost do this.
    return subprocess.run([sys.executable, "-c", _FORCED.format(exception=exception), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def test_a_forced_internal_error_reaches_the_terminal_as_one_line(world: World) -> None:
    """In a real process, an unexpected exception prints one line and the log path, never a traceback (exit 1)."""
    before = tree_digest(world.root)
    proc = _forced_internal_error({"DRHOST_STATE_DIR": str(world.state)}, "status", world.run)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("drhost: internal error: RuntimeError: forced for the test (details: ")
    (log,) = (world.state / "debug").iterdir()
    assert str(log) in line and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "in broken\nRuntimeError: forced for the test" in log.read_text()
    assert tree_digest(world.root) == before


def test_a_forced_internal_error_with_json_and_no_state_dir_logs_to_the_temp_dir(world: World) -> None:
    """When the state dir does not exist the debug log goes to the temp dir (creating no state dir), and --json
    still gets one JSON object naming the log."""
    state, tmpdir = world.tmp / "not-yet", world.tmp / "tmpdir"
    tmpdir.mkdir()
    proc = _forced_internal_error({"DRHOST_STATE_DIR": str(state), "TMPDIR": str(tmpdir)}, "status", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    body = json.loads(proc.stdout)
    assert body["exit_code"] == 1 and body["error"]["type"] == "InternalError"
    assert body["error"]["exception"] == "RuntimeError" and body["error"]["message"] == "forced for the test"
    log = Path(body["error"]["debug_log"])
    assert log.parent == tmpdir and stat.S_IMODE(log.stat().st_mode) == 0o600 and "Traceback" in log.read_text()
    assert not state.exists()


def test_a_broken_pipe_that_is_not_stdout_is_not_taken_for_success(world: World) -> None:
    """BrokenPipeError from anything but a closed stdout is an internal error (exit 1), not a quiet exit 0."""
    proc = _forced_internal_error({"DRHOST_STATE_DIR": str(world.state)}, "status", world.run,
                                  exception="BrokenPipeError")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("drhost: internal error: BrokenPipeError: forced for the test (details: ")


def test_a_real_process_refuses_a_100kb_run_id_without_a_traceback(drhost: Drhost, world: World) -> None:
    """A 100 kB run id on a real command line is one line naming the argument and its length, exit 2."""
    before = world.digest()
    proc = drhost("resume", LONG)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "argument RUN" in line and "100000" in line and len(line) < 1000
    assert world.digest() == before


def test_a_real_process_refuses_a_bad_failpoint_before_importing_anything_fails(drhost: Drhost, world: World) -> None:
    """A malformed test-only DRHOST_FAILPOINT (read when drhost is imported) is one line, exit 2, no traceback."""
    before = world.digest()
    proc = drhost("status", world.run, "--json", env={"DRHOST_FAILPOINT": "x@y"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "DRHOST_FAILPOINT='x@y'" in proc.stderr
    body = json.loads(proc.stdout)
    assert body["exit_code"] == 2 and body["error"]["variable"] == "DRHOST_FAILPOINT"
    assert world.digest() == before


def test_a_real_process_prints_a_usage_error_as_json(drhost: Drhost, world: World) -> None:
    """An argparse usage error under --json is one JSON object on stdout (exit 2), the line on stderr."""
    proc = drhost("upgrade", "--json", "-i", str(world.inventory), "--forks", "0x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    body = json.loads(proc.stdout)
    assert body == {"error": {"message": body["error"]["message"], "type": "UsageError", "argument": "--forks"},
                    "exit_code": 2}
    assert "'0x'" in body["error"]["message"] and proc.stderr.startswith("drhost: error: upgrade: argument --forks")


def test_report_without_out_writes_inside_the_run_directory(drhost: Drhost, world: World) -> None:
    """drhost report RUN writes RUN_DIR/report.html (in the state dir) and nothing in the working directory."""
    work = world.tmp / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "drhost", "report", world.run], capture_output=True, text=True,
                          timeout=120, cwd=work, env={**os.environ, "DRHOST_STATE_DIR": str(world.state)})
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == world.state / "runs" / world.run / "report.html"
    assert list(work.iterdir()) == []
