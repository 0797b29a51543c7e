"""The plugin lock: runs take exactly the locked plugins (distribution, version, class, entry point, file digest).

The real ``drhost`` command with throwaway plugin distributions that have a RECORD, as pip writes it; the lock
lives where an operator's would (STATE_ROOT/plugins.lock, the test's own state dir).
"""

from __future__ import annotations

import importlib
import json
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drhost.config import load_config
from drhost.errors import RefusedError
from drhost.plugins import LockEntry, check_run, read_lock, write_lock
from drhost.plugins._registry import installed_plugins
from drhost_hookspecs import PluginClass
from plugin_factory import make_plugin, simple_plugin

DrhostCLI = Callable[..., subprocess.CompletedProcess[str]]


def rows(drhost: DrhostCLI) -> dict[str, dict[str, Any]]:
    proc = drhost("plugins", "list", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return {row["name"]: row for row in json.loads(proc.stdout)}


def lock(drhost: DrhostCLI, *args: str) -> subprocess.CompletedProcess[str]:
    proc = drhost("plugins", "lock", *args)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 7, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.mark.integration
@pytest.mark.podman
def test_a_locked_set_runs_and_a_changed_file_refuses_the_upgrade(
        drhost: DrhostCLI, site: Path, state_dir: Path) -> None:
    """Lock, plan runs; a byte changed in a locked plugin: upgrade refuses (exit 7) naming the digest change."""
    make_plugin(site, "zz-locked", simple_plugin("zz-locked"), record=True)
    made = lock(drhost)
    assert made.returncode == 0, made.stderr
    path = state_dir / "plugins.lock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["format"] == 1 and set(data["plugins"]) == {"dr-core", "dr-database", "dr-catalog", "dr-monitoring",
                                                              "zz-locked"}
    assert data["plugins"]["zz-locked"] == {
        "distribution": "zz_locked", "version": "0.1", "class": "business", "entry_point": "zz_locked",
        "digest": installed_plugins()["zz-locked"][0].digest}
    listed = rows(drhost)
    assert {row["lock"] for row in listed.values()} == {"ok"}
    # The lock vouches for each plugin's class: described in that class's sandbox, core in the business one.
    assert listed["dr-core"]["described_in"] == "process" and listed["zz-locked"]["described_in"] == "process"
    assert drhost("plan", "--demo").returncode == 0

    module = site / "zz_locked.py"
    original = module.read_text()
    module.write_text(original + "\nprint('one more line')\n")
    message = refused(drhost("upgrade", "--demo", "--json"))
    assert f"plugin lock {path}: zz-locked: digest changed (locked sha256:" in message
    assert "re-run 'drhost plugins lock' if this change is intended" in message
    assert rows(drhost)["zz-locked"]["lock"].startswith("changed: digest changed (locked sha256:")
    module.write_text(original)
    assert drhost("plan", "--demo").returncode == 0


@pytest.mark.integration
@pytest.mark.podman
def test_an_extra_plugin_is_refused_unless_disabled(drhost: DrhostCLI, site: Path, state_dir: Path) -> None:
    """A plugin installed after the lock: plan refuses (exit 7) naming it and '-p no:NAME'; with -p no:NAME it runs."""
    assert lock(drhost).returncode == 0
    make_plugin(site, "zz-extra", simple_plugin("zz-extra"), record=True)
    listed = rows(drhost)
    assert listed["zz-extra"]["lock"] == "not in lock"
    # Not vouched for: described as untrusted (third_party: a container where podman works).
    assert listed["zz-extra"]["described_in"] == ("container" if shutil.which("podman") else "process")
    message = refused(drhost("plan", "--demo"))
    assert "extra plugin 'zz-extra' (dist zz_extra 0.1) is not in the lock" in message
    assert "disable it with -p no:zz-extra" in message
    assert drhost("plan", "--demo", "-p", "no:zz-extra").returncode == 0


@pytest.mark.integration
def test_a_locked_plugin_that_is_gone_is_refused(drhost: DrhostCLI, site: Path, state_dir: Path) -> None:
    """A plugin in the lock but no longer installed: plan refuses (exit 7) naming it."""
    make_plugin(site, "zz-gone", simple_plugin("zz-gone"), record=True)
    assert lock(drhost).returncode == 0
    shutil.rmtree(site / "zz_gone-0.1.dist-info")
    (site / "zz_gone.py").unlink()
    assert rows(drhost)["zz-gone"]["status"] == "missing"
    assert "zz-gone: locked (zz_gone 0.1) but not installed" in refused(drhost("plan", "--demo"))


@pytest.mark.integration
def test_a_class_other_than_the_locked_one_breaks_the_plugin(drhost: DrhostCLI, site: Path, state_dir: Path) -> None:
    """A plugin that declares another class than its lock entry is broken naming both; plan refuses naming both."""
    make_plugin(site, "zz-shifty", simple_plugin("zz-shifty"), record=True)
    assert lock(drhost).returncode == 0
    path = state_dir / "plugins.lock"
    data = json.loads(path.read_text())
    data["plugins"]["zz-shifty"]["class"] = "database"
    path.write_text(json.dumps(data))
    row = rows(drhost)["zz-shifty"]
    assert row["status"] == "broken"
    assert "declares class business" in row["error"] and "names it database" in row["error"]
    assert "zz-shifty: class changed (locked database, declared business)" in refused(drhost("plan", "--demo"))


@pytest.mark.integration
def test_no_lock_is_written_while_a_plugin_is_broken(drhost: DrhostCLI, site: Path, state_dir: Path) -> None:
    """'plugins lock' refuses (exit 7, no file) while a plugin is broken; --allow-broken leaves it out and says so."""
    make_plugin(site, "zz-broken", "raise ImportError('needs libfoo 2.0')\n", record=True)
    assert "zz-broken" in refused(lock(drhost))
    assert not (state_dir / "plugins.lock").exists()
    out = state_dir / "elsewhere" / "my.lock"
    made = lock(drhost, "--allow-broken", "--out", str(out))
    assert made.returncode == 0
    assert "left out (broken): zz-broken" in made.stdout
    assert "zz-broken" not in json.loads(out.read_text())["plugins"]


@pytest.mark.parametrize(("text", "found"), [
    ("{not json", "invalid JSON"),
    ('{"format": 2, "plugins": {}}', "format 2 (this drhost reads format 1)"),
    ('{"format": 1, "plugins": {"dr-core": {"distribution": "x"}}}', "plugin 'dr-core' without version"),
    ('[1, 2]', "a JSON list"),
])
def test_an_unusable_lock_file_is_a_clear_input_error(drhost: DrhostCLI, state_dir: Path, text: str,
                                                      found: str) -> None:
    """A lock that is not JSON or not a plugin lock: exit 2 naming the file, what was expected and what was found."""
    path = state_dir / "plugins.lock"
    path.write_text(text)
    for args in (("plugins", "list"), ("plan", "--demo")):
        proc = drhost(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert f"plugin lock {path}: expected a JSON object" in proc.stderr and found in proc.stderr


def test_a_configured_lock_that_does_not_exist_is_an_input_error(drhost: DrhostCLI, tmp_path: Path) -> None:
    """[discovery] lock names a file that is not there: exit 2 naming it (never silently 'no lock')."""
    missing = tmp_path / "nope.lock"
    proc = drhost("plugins", "list", "--set", f"discovery.lock={missing}")
    assert proc.returncode == 2 and f"plugin lock {missing} ([discovery] lock): no such file" in proc.stderr


def test_resume_and_rollback_refuse_a_run_plugin_that_differs_from_the_lock(
        site: Path, state_dir: Path) -> None:
    """check_run (resume, rollback): a run's plugin whose files changed since the lock is refused, naming it."""
    make_plugin(site, "zz-run", simple_plugin("zz-run"), record=True)
    installed = installed_plugins()["zz-run"][0]
    entry = LockEntry(name="zz-run", distribution=installed.distribution, version=installed.version,
                      plugin_class="business", entry_point=installed.value, digest=installed.digest)
    write_lock(state_dir / "plugins.lock", [entry])
    config = load_config().data
    check_run([("zz-run", PluginClass.BUSINESS)], config)
    with pytest.raises(RefusedError) as info:
        check_run([("zz-run", PluginClass.DATABASE)], config)
    assert "zz-run: class changed (locked business, declared database)" in str(info.value)
    (site / "zz_run.py").write_text((site / "zz_run.py").read_text() + "\n# patched\n")
    with pytest.raises(RefusedError) as info:
        check_run([("zz-run", PluginClass.BUSINESS)], config)
    assert "zz-run: digest changed" in str(info.value) and str(state_dir / "plugins.lock") in str(info.value)
    assert read_lock(state_dir / "plugins.lock").entries["zz-run"] == entry


def test_resume_refuses_a_run_plugin_offered_by_two_distributions(site: Path, state_dir: Path) -> None:
    """check_run without a lock: a plugin of the run that a second distribution also offers is refused naming both."""
    make_plugin(site, "zz-twice", simple_plugin("zz-twice"), record=True)
    make_plugin(site, "zz-twice", simple_plugin("zz-twice"), module="zz_impostor", version="9.9", record=True)
    with pytest.raises(RefusedError) as info:
        check_run([("zz-twice", PluginClass.BUSINESS)], load_config().data)
    assert "zz_twice 0.1" in str(info.value) and "zz_impostor 9.9" in str(info.value)


def test_the_digest_covers_every_installed_file(site: Path) -> None:
    """The digest changes when a RECORD-listed file changes or disappears, and when a module is added to the package."""
    make_plugin(site, "zz-pkg", "", module="zz_pkg_mod", record=True)
    package = site / "zzpkg"
    package.mkdir()
    (package / "__init__.py").write_text(simple_plugin("zz-pkg"))
    (site / "zz_pkg_mod-0.1.dist-info" / "entry_points.txt").write_text("[drhost.plugins]\nzz-pkg = zzpkg\n")
    importlib.invalidate_caches()

    def digest() -> str:
        return installed_plugins()["zz-pkg"][0].digest

    first = digest()
    assert first == digest()
    (package / "extra.py").write_text("x = 1\n")
    second = digest()
    assert second != first
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "extra.cpython-311.pyc").write_bytes(b"not part of it")
    assert digest() == second
    (site / "zz_pkg_mod.py").unlink()
    assert digest() not in (first, second)
