"""drhost.testing.FakeContext: the whole Context protocol, with compatible signatures, and what it records."""

from __future__ import annotations

import inspect
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drhost.testing import FakeContext
from drhost_hookspecs import Cancelled, Context, StepFailed

#: Protocol machinery every Protocol class has; not members a plugin calls.
_NOT_MEMBERS = {"_is_protocol", "_is_runtime_protocol", "__protocol_attrs__", "__non_callable_proto_members__",
                "__abstractmethods__", "__parameters__", "__orig_bases__", "__annotations__", "__dict__",
                "__weakref__", "__module__", "__doc__", "__init__", "__subclasshook__", "__class_getitem__",
                "__init_subclass__", "__slots__", "__qualname__", "__static_attributes__", "__firstlineno__",
                "__annotate_func__", "__annotations_cache__", "_abc_impl"}


def protocol_members() -> dict[str, Any]:
    """Every member of the Context protocol: its annotated attributes (as None) and its methods and properties."""
    members: dict[str, Any] = dict.fromkeys(Context.__annotations__)
    members.update({name: value for name, value in vars(Context).items() if name not in _NOT_MEMBERS})
    return members


def test_protocol_is_introspected() -> None:
    """The introspection finds the Context's attributes, methods and property (so an empty result cannot pass)."""
    assert {"run_id", "target", "package", "config", "state", "run", "put", "checkpoint", "cancelled"} <= set(
        protocol_members())


def test_every_protocol_member_is_implemented(tmp_path: Path) -> None:
    """FakeContext has every member of the Context protocol, and is a Context at runtime."""
    with FakeContext(tmp_path / "root") as ctx:
        assert [name for name in protocol_members() if not hasattr(ctx, name)] == []
        assert isinstance(ctx, Context)


def test_methods_have_the_protocols_signatures() -> None:
    """Each protocol method takes the same parameters (names, kinds, defaults) in FakeContext."""
    for name, member in protocol_members().items():
        if isinstance(member, property):
            assert isinstance(getattr(FakeContext, name), property), name
        elif callable(member):
            expected = inspect.signature(member)
            found = inspect.signature(getattr(FakeContext, name))
            shape = [(p.name, p.kind, p.default) for p in expected.parameters.values()]
            assert [(p.name, p.kind, p.default) for p in found.parameters.values()] == shape, name
            assert str(found.return_annotation) == str(expected.return_annotation), name


def test_defaults_describe_a_local_target(tmp_path: Path) -> None:
    """Without arguments beyond the root: a local target there, a 2.0.0 package from 1.0.0, empty config and state."""
    ctx = FakeContext(tmp_path / "root", config={"k": 1})
    assert (ctx.target.install_root, ctx.target.transport, ctx.run_id) == (str(tmp_path / "root"), "local", "test-run")
    assert (ctx.package.version, ctx.package.upgrades_from) == ("2.0.0", ("1.0.0",))
    assert dict(ctx.config) == {"k": 1} and dict(ctx.state) == {} and not ctx.cancelled


def test_temporary_root_is_made_and_removed() -> None:
    """With no install root a temporary one is made, and removed when the context closes."""
    with FakeContext() as ctx:
        root = ctx.root
        assert root.is_dir() and ctx.target.install_root == str(root)
    assert not root.exists()


def test_given_root_is_kept_at_close(tmp_path: Path) -> None:
    """An install root the test passed in is left in place by close()."""
    FakeContext(tmp_path / "root").close()
    assert (tmp_path / "root").is_dir()


def test_files_behave_as_the_local_transport(tmp_path: Path) -> None:
    """write_text (parents, mode), read_text, exists, remove behave as the host's local transport."""
    ctx = FakeContext(tmp_path)
    path = str(tmp_path / "a" / "b.txt")
    ctx.write_text(path, "one\n", mode=0o600)
    assert ctx.read_text(path) == "one\n" and ctx.exists(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(StepFailed):
        ctx.remove(str(tmp_path / "a"))
    ctx.remove(str(tmp_path / "a"), recursive=True)
    ctx.remove(str(tmp_path / "a"))
    assert not ctx.exists(path)
    with pytest.raises(StepFailed):
        ctx.read_text(path)


def test_put_copies_and_reports_progress(tmp_path: Path) -> None:
    """put copies a local file to the target path and reports its bytes as progress."""
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 10)
    ctx = FakeContext(tmp_path / "root")
    ctx.put(str(source), str(ctx.root / "in" / "dst.bin"))
    assert (ctx.root / "in" / "dst.bin").read_bytes() == b"x" * 10
    assert ctx.progress_reports[-1] == (10, 10, "bytes")


def test_run_runs_unscripted_commands_and_records_them(tmp_path: Path) -> None:
    """An unscripted command runs on this machine; every argv is recorded; check=True raises on failure."""
    ctx = FakeContext(tmp_path)
    assert ctx.run(["sh", "-c", "echo out"]).stdout == "out\n"
    assert ctx.run(["sh", "-c", "exit 3"], check=False).returncode == 3
    with pytest.raises(StepFailed) as caught:
        ctx.run(["sh", "-c", "echo boom >&2; exit 4"])
    assert "exited 4" in caught.value.message and "boom" in caught.value.message
    assert ctx.commands[0] == ("sh", "-c", "echo out") and len(ctx.commands) == 3


def test_run_refuses_a_shell_string(tmp_path: Path) -> None:
    """argv must be a list of strings, as the host requires."""
    with pytest.raises(TypeError):
        FakeContext(tmp_path).run("echo hi")


def test_scripted_results_answer_instead_of_running(tmp_path: Path) -> None:
    """A scripted prefix answers matching commands (the latest script wins, ``times`` limits it), nothing runs."""
    ctx = FakeContext(tmp_path, run_unscripted=False)
    ctx.script("systemctl", returncode=3, stderr="inactive")
    once = ctx.script("systemctl", "is-active", stdout="active\n", times=1)
    assert ctx.run(["systemctl", "is-active", "drproductd"]).stdout == "active\n"
    assert ctx.run(["systemctl", "is-active", "drproductd"], check=False).returncode == 3
    with pytest.raises(StepFailed):
        ctx.run(["systemctl", "status"])
    assert once.answered == [("systemctl", "is-active", "drproductd")]
    with pytest.raises(AssertionError, match="unscripted command"):
        ctx.run(["rm", "-rf", "/"])


def test_log_progress_checkpoint_and_calls_are_recorded(tmp_path: Path) -> None:
    """log, progress and checkpoint are kept in order, and every call appears in ``calls``."""
    ctx = FakeContext(tmp_path)
    ctx.log("hello")
    ctx.log("careful", level="warning")
    ctx.progress(1, 4, "files")
    ctx.state["n"] = 1
    ctx.checkpoint()
    ctx.state["n"] = 2
    assert ctx.logs == [("info", "hello"), ("warning", "careful")]
    assert ctx.logged == ["info: hello", "warning: careful"]
    assert ctx.progress_reports == [(1, 4, "files")] and ctx.checkpoints == [{"n": 1}]
    assert [call.method for call in ctx.calls] == ["log", "log", "progress", "checkpoint"]
    assert ctx.calls[1].args == {"message": "careful", "level": "warning"}


def test_checkpoint_refuses_a_state_that_is_not_json(tmp_path: Path) -> None:
    """A state the host could not save (a set here) fails checkpoint(), not retryable."""
    ctx = FakeContext(tmp_path)
    ctx.state["bad"] = {1, 2}
    with pytest.raises(StepFailed) as caught:
        ctx.checkpoint()
    assert not caught.value.retryable and ctx.checkpoints == []


def test_sleep_is_recorded_and_can_be_instant(tmp_path: Path) -> None:
    """sleep is recorded; with real_sleep=False it returns at once."""
    ctx = FakeContext(tmp_path, real_sleep=False)
    started = time.monotonic()
    ctx.sleep(30)
    assert time.monotonic() - started < 5 and ctx.slept == [30]


def test_stop_cancels_every_call(tmp_path: Path) -> None:
    """After stop() the context reports cancelled, and sleep, run and file calls raise Cancelled."""
    ctx = FakeContext(tmp_path)
    ctx.stop()
    assert ctx.cancelled
    for call in (lambda: ctx.sleep(30), lambda: ctx.run(["true"]), lambda: ctx.exists(str(tmp_path))):
        with pytest.raises(Cancelled):
            call()


def test_stop_ends_a_running_command(tmp_path: Path) -> None:
    """stop() from another thread ends a command ctx.run is waiting for, with Cancelled."""
    ctx = FakeContext(tmp_path)
    threading.Timer(0.2, ctx.stop).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        ctx.run(["sleep", "30"])
    assert time.monotonic() - started < 10


def test_a_command_over_its_timeout_fails_the_step(tmp_path: Path) -> None:
    """A command that outlives its own timeout fails the step (it was not stopped by the host)."""
    with pytest.raises(StepFailed):
        FakeContext(tmp_path).run(["sleep", "30"], timeout=0.2)


def test_fixture_gives_a_fake_context_under_tmp_path(drhost_fake_context: FakeContext, tmp_path: Path) -> None:
    """The drhost_fake_context fixture is a FakeContext whose install root is under the test's tmp_path."""
    assert isinstance(drhost_fake_context, FakeContext)
    assert drhost_fake_context.root.is_relative_to(tmp_path) and drhost_fake_context.root.is_dir()
