"""docs/plugin-authoring.md says what the code does, and its quick start works as written."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from drhost.testing import CHECKS, pytest_plugin
from drhost_hookspecs import Context, _spec
from state_rows import read_state

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugin-authoring.md"


def _table(marker: str) -> dict[str, str]:
    """The two-column table after ``<!-- marker: ... -->``: first cell (backticks off) -> second cell."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"<!-- {marker}:")
    rows: dict[str, str] = {}
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if set(cells[0]) <= {"-"} or cells[0] in ("hook", "member", "check"):
            continue
        rows[cells[0].strip("`")] = cells[1]
    return rows


def _first_line(obj: object) -> str:
    return (inspect.getdoc(obj) or "").splitlines()[0]


def test_hook_table_matches_the_hookspecs() -> None:
    """Every hookspec is in the guide's hook table with its docstring's first line, and nothing else is."""
    specs = {name: _first_line(f) for name, f in inspect.getmembers(_spec, inspect.isfunction)
             if name.startswith("drhost_") and hasattr(f, "drhost_spec")}
    assert _table("hooks") == specs


def test_context_table_matches_the_context_protocol() -> None:
    """Every Context method and property is in the guide with its docstring's first line."""
    members = {f"ctx.{name}": _first_line(value) for name, value in vars(Context).items()
               if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}
    assert _table("context") == members


def test_check_table_matches_plugin_test() -> None:
    """Every plugin-test check is documented with its rule, in the order reports list them."""
    table = _table("checks")
    assert list(table) == list(CHECKS)
    assert {name: rule.replace("`", "") for name, rule in table.items()} == CHECKS


def test_every_fixture_of_the_pytest_plugin_is_documented() -> None:
    """Each drhost_* fixture the pytest plugin provides appears in the guide's fixture table."""
    fixtures = {name for name, value in vars(pytest_plugin).items()
                if (name.startswith("drhost_") and callable(value) and hasattr(value, "_fixture_function_marker"))
                or (name.startswith("drhost_") and type(value).__name__ == "FixtureFunctionDefinition")}
    assert fixtures, "no fixtures found: the introspection is wrong"
    text = GUIDE.read_text(encoding="utf-8")
    assert [f for f in sorted(fixtures) if f"| `{f}` |" not in text] == []


def _quickstart() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    block = text[text.index("<!-- quickstart:"):]
    body = block[block.index("```sh\n") + 6:]
    return [line for line in body[:body.index("```")].splitlines() if line.strip()]


@pytest.mark.podman
@pytest.mark.slow
def test_quick_start_takes_a_new_plugin_into_a_demo_upgrade(tmp_path: Path) -> None:
    """The quick start, run line by line in a fresh environment, ends with the new plugin's step in a demo run."""
    venv = tmp_path / "venv"
    # Without a pip of its own (ensurepip costs 3 s of CPU): the new environment sees drhost, its dependencies
    # and pip as installed here; what the guide installs goes into the new environment only, so the rest of
    # the suite never sees the new plugin.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "drhost-under-test.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n", encoding="utf-8")
    bin_dir = venv / "bin"
    (bin_dir / "drhost").write_text(f"#!/bin/sh\nexec {bin_dir / 'python'} -m drhost \"$@\"\n", encoding="utf-8")
    (bin_dir / "drhost").chmod(0o755)
    work = tmp_path / "author"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "DRHOST_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path), "PYTHONPATH": ""}
    env.pop("PYTHONHOME", None)
    env.pop("PIP_NO_BUILD_ISOLATION", None)  # pip as an author runs it: builds in an isolated environment
    cwd = work
    outputs: dict[str, str] = {}
    for line in _quickstart():
        if line.startswith("cd "):
            cwd = cwd / line[3:].strip()
            continue
        proc = subprocess.run(["sh", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{line!r} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs[line.split()[0] + " " + line.split()[1]] = proc.stdout
    assert re.search(r"^acme-audit\s+0\.1\.0\s+audit\s+business\s+process\s+ok", outputs["drhost plugins"], re.M)
    assert "0 failed" in outputs["drhost plugin-test"]
    assert list((cwd / "dist").glob("drhost_plugin_acme_audit-0.1.0-py3-none-any.whl"))
    # pip installed into the new environment, never into the one running the suite.
    assert list(site.glob("drhost_plugin_acme_audit-0.1.0.dist-info"))
    assert not list(Path(sysconfig.get_paths()["purelib"]).glob("drhost_plugin_acme_audit-*"))
    runs = sorted((tmp_path / "state" / "runs").iterdir())
    body = read_state(runs[-1])
    assert body["status"] == "succeeded"
    for target in body["targets"].values():
        step = target["steps"]["upgrade/acme-audit/record_upgrade"]
        assert step["status"] == "done", step
