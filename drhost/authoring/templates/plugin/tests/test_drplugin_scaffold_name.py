"""Unit tests of the drhost plugin scaffold-name.

Its steps and hooks run in-process against a temporary directory as the target,
through ``drhost_fake_context``: a fixture of drhost's pytest plugin (loaded
wherever drhost is installed) that hands out a ``drhost.testing.FakeContext``.
It does what drhost's local transport does, on this machine and with no host,
so these tests need no product install. Before a release also run
``drhost plugin-test .``, which runs the plugin through the host, in its
class's isolation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from drhost_hookspecs import Context, LoadedPlugin, OperationName, PluginClass, Stage, StepFailed, VerifyPhase

import drplugin_scaffold_name as plugin

# Without drhost there is no drhost_fake_context: a skip that says why reads better than "fixture not found".
pytest.importorskip("drhost.testing.pytest_plugin", reason="these tests use drhost's pytest fixtures: install "
                    "the plugin into drhost's environment")


@pytest.fixture(scope="module")
def loaded() -> LoadedPlugin:
    # Registered as the host registers it: a hook whose name or arguments do not match its spec fails here.
    return LoadedPlugin(plugin.NAME, plugin)


@pytest.fixture
def ctx(drhost_fake_context: Context) -> Context:
    # Typed as the Context protocol, not drhost.testing.FakeContext, so that mypy checks these tests
    # with drhost_hookspecs alone.
    return drhost_fake_context


@pytest.fixture
def target(ctx: Context) -> Path:
    return Path(ctx.target.install_root)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with a file's bytes (None for a directory)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def marker(root: Path) -> Path:
    return root / plugin.DEFAULT_MARKER_DIR / plugin.MARKER_FILE


def run_step(loaded: LoadedPlugin, ctx: Context, stage: Stage, step: str) -> None:
    loaded.invoke("run_step", ctx, stage=stage, step=step, in_process=True)


def compensate(loaded: LoadedPlugin, ctx: Context, op: OperationName) -> None:
    loaded.invoke(op, ctx, stage=Stage.UPGRADE, step="record_upgrade", in_process=True)


def verify(loaded: LoadedPlugin, ctx: Context, phase: VerifyPhase, stage: Stage = Stage.UPGRADE) -> list[str]:
    return list(loaded.invoke("verify", ctx, stage=stage, phase=phase, in_process=True))


def test_plugin_declares_itself(loaded: LoadedPlugin) -> None:
    """The plugin reports its entry-point name, its department and its class."""
    info = loaded.info
    assert info.name == "scaffold-name"
    assert info.department == "Scaffold Department"
    assert info.plugin_class is PluginClass.BUSINESS


def test_upgrade_step_is_non_retryable_with_compensations(loaded: LoadedPlugin) -> None:
    """record_upgrade is the only upgrade step: non-retryable, so it brings cleanup and rollback."""
    (step,) = loaded.describe()["steps"]["upgrade"]
    assert (step["name"], step["retryable"], step["timeout_s"]) == ("record_upgrade", False, 60)
    assert step["has_cleanup"] and step["has_rollback"]
    assert step["timeout_key"] == "upgrade.scaffold-name.record_upgrade"


def test_precheck_step_is_retryable(loaded: LoadedPlugin) -> None:
    """check_marker_dir_writable is the only precheck step, retryable, with a key of its own."""
    (step,) = loaded.describe()["steps"]["precheck"]
    assert (step["name"], step["retryable"], step["timeout_s"]) == ("check_marker_dir_writable", True, 30)
    assert step["timeout_key"] == "precheck.scaffold-name.check_marker_dir_writable"


def test_config_schema_is_closed(loaded: LoadedPlugin) -> None:
    """The config section refuses unknown keys and documents marker_dir with its default."""
    schema = loaded.config_schema()
    assert schema is not None and schema["additionalProperties"] is False
    assert schema["properties"]["marker_dir"]["default"] == "var/scaffold-name"


def test_precheck_passes_and_changes_nothing(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """On a writable target the precheck passes and leaves the target as it was."""
    (target / "var").mkdir()
    before = tree(target)
    run_step(loaded, ctx, Stage.PRECHECK, "check_marker_dir_writable")
    assert tree(target) == before


def test_precheck_refuses_a_file_in_the_way(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """A file where the marker directory must go fails the precheck for good (not retryable)."""
    (target / "var").write_text("not a directory\n")
    with pytest.raises(StepFailed) as caught:
        run_step(loaded, ctx, Stage.PRECHECK, "check_marker_dir_writable")
    assert not caught.value.retryable and f"{target / 'var'} is not a directory" in caught.value.message


def test_record_upgrade_writes_the_version(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """record_upgrade writes the package's version to the marker file under the install root."""
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert marker(target).read_text() == ctx.package.version + "\n"


def test_record_upgrade_follows_marker_dir(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """The config key marker_dir moves the marker, relative to the install root."""
    ctx.config = {"marker_dir": "data/markers"}
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert sorted(tree(target)) == ["data", "data/markers", "data/markers/upgraded-to"]


def test_record_upgrade_is_idempotent(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """Running record_upgrade twice leaves the target, and the state, as running it once."""
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    once, state = tree(target), dict(ctx.state)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert tree(target) == once and dict(ctx.state) == state


def test_rollback_restores_a_fresh_target(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """Rollback removes the marker and the directories the step created, and nothing else."""
    (target / "var").mkdir()
    (target / "var" / "other.txt").write_text("not ours\n")
    before = tree(target)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    compensate(loaded, ctx, "rollback_step")
    assert not marker(target).exists() and tree(target) == before


def test_rollback_restores_an_earlier_marker(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """A marker left by an earlier upgrade is put back as it was, not removed."""
    marker(target).parent.mkdir(parents=True)
    marker(target).write_text("1.0.0\n")
    before = tree(target)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    compensate(loaded, ctx, "rollback_step")
    assert tree(target) == before


def test_compensations_tolerate_nothing_written(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """Cleanup and rollback, each called twice, change nothing when the step never ran."""
    before = tree(target)
    for op in ("cleanup_step", "rollback_step", "cleanup_step", "rollback_step"):
        compensate(loaded, ctx, op)
    assert tree(target) == before


def test_cleanup_lets_the_stage_start_again(loaded: LoadedPlugin, ctx: Context, target: Path) -> None:
    """After cleanup the target is as before, and the step runs again to a verified stage."""
    before = tree(target)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    compensate(loaded, ctx, "cleanup_step")
    compensate(loaded, ctx, "cleanup_step")
    assert tree(target) == before
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert verify(loaded, ctx, VerifyPhase.COMPLETED) == []


def test_verify_answers_per_phase(loaded: LoadedPlugin, ctx: Context) -> None:
    """verify reports a missing marker after the stage, and a leftover one after its rollback."""
    assert verify(loaded, ctx, VerifyPhase.COMPLETED) != []
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert verify(loaded, ctx, VerifyPhase.COMPLETED) == []
    assert verify(loaded, ctx, VerifyPhase.ROLLED_BACK) != []
    compensate(loaded, ctx, "rollback_step")
    assert verify(loaded, ctx, VerifyPhase.ROLLED_BACK) == []
    assert verify(loaded, ctx, VerifyPhase.COMPLETED, stage=Stage.PRECHECK) == []
