"""Rollback that works, or says exactly what is left: recovery, the inconsistent state and its procedure,
against the real demo product."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import demo_roots, run_json, whole_version

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

Drhost = Callable[..., subprocess.CompletedProcess[str]]


def test_rollback_without_its_backup_ends_inconsistent_with_a_procedure_and_finishes_after_the_fix(
        drhost: Drhost, state_dir: Path, tmp_path: Path, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """The catalog backup removed before rollback: recovery runs the stage again, fails again, the target is
    marked inconsistent with evidence and a manual procedure naming the backup; with the backup back in place
    drhost rollback completes and the target is whole at 1.0.0."""
    aborted = drhost("upgrade", "--demo", "--demo-targets", "1", "--keep", "--json", "--on-failure", "abort",
                     "--set", "plugin.dr-database.fault=verify_data:fail")
    assert aborted.returncode == 5, aborted.stderr[-2000:]
    run_id = run_json(aborted)["run_id"]
    (root,) = demo_roots(state_dir)
    backup = root / "backup" / run_id / "catalog.db"
    kept = tmp_path / "catalog.db"
    shutil.move(backup, kept)

    failed = drhost("rollback", run_id, "--plain")
    assert failed.returncode == 4, failed.stderr[-3000:]
    assert "recovery: rollback of the stage failed or did not verify; running it once more" in failed.stderr
    assert "INCONSISTENT" in failed.stderr
    assert f"restore the catalog: {root}/current/bin/drproduct-db --root {root} restore --from {backup}" \
        in failed.stderr
    assert whole_version(root, fresh_seed_jobs).startswith("mixed")
    status = json.loads(drhost("status", run_id, "--json").stdout)
    (target,) = status["targets"]
    assert target["status"] == "inconsistent" and target["consistent"].startswith("NO")
    assert target["next"].startswith("follow the manual procedure")
    evidence = json.loads(Path(target["evidence"]).read_text())
    assert evidence["failed_stages"] == ["upgrade"] and evidence["procedure"] == target["manual_procedure"]
    assert any("no backup" in error for error in evidence["errors"])

    shutil.move(kept, backup)  # the operator puts the backup back, as the procedure says
    finished = drhost("rollback", run_id, "--json")
    assert finished.returncode == 3, finished.stderr[-3000:]
    assert run_json(finished)["targets"]["dr-demo-1"]["status"] == "rolled_back"
    assert whole_version(root, fresh_seed_jobs) == "1.0.0"
