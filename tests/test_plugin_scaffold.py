"""drhost plugin new: bad input is refused; the generated plugin lints, type-checks, installs and passes its tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pip_helpers import pip_build_flags

from drhost.authoring import PLUGIN_CLASSES, ScaffoldError, new_plugin

NAME = "acme-audit"
MODULE = "drplugin_acme_audit"
#: The longest name and department the generator accepts: the generated lines must stay within the linter's limit.
LONG_NAME = "l" + "o" * 38 + "g"
LONG_DEPARTMENT = "D" * 40
#: pip, ruff, mypy and pytest on a small project; generous because CI may be busy.
TOOL_TIMEOUT_S = 300


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with a file's bytes (None for a directory)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def run(argv: Sequence[str], cwd: Path, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)


def class_plugin(plugin_class: str) -> str:
    return "class-" + plugin_class.replace("_", "-")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme-audit, as an author gets it."""
    directory = tmp_path_factory.mktemp("generated") / NAME
    new_plugin(NAME, "business", directory, department="audit")
    return directory


@pytest.fixture(scope="module")
def site(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme-audit and one plugin per class, installed by pip into one target directory."""
    base = tmp_path_factory.mktemp("install")
    sources = [base / "sources" / NAME]
    # A copy: pip builds in the source tree (build/, egg-info), and the generated tests should
    # run in a tree as the author has it.
    new_plugin(NAME, "business", sources[0], department="audit")
    assert tree(sources[0]) == tree(generated)
    for plugin_class in PLUGIN_CLASSES:
        sources.append(base / "sources" / class_plugin(plugin_class))
        new_plugin(class_plugin(plugin_class), plugin_class, sources[-1])
    target = base / "site"
    done = run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                *pip_build_flags(), "--target", str(target), *map(str, sources)], cwd=base)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.fixture(scope="module")
def long_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("long") / LONG_NAME
    new_plugin(LONG_NAME, "third_party", directory, department=LONG_DEPARTMENT)
    return directory


@pytest.mark.parametrize("name", ["ab", "l" * 41, "1audit", "-audit", "Acme-audit", "acme_audit", "acme audit",
                                  "acme-", "acme--audit", "acme.audit", "äcme", "acme\n", ""])
def test_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    """A name that is not 3-40 lowercase letters, digits and single inner '-' is refused, naming it and the rule."""
    with pytest.raises(ScaffoldError) as caught:
        new_plugin(name, "business", tmp_path / "plugin")
    assert f"plugin name {name!r}: expected 3 to 40 characters" in str(caught.value)
    assert not (tmp_path / "plugin").exists()


@pytest.mark.parametrize("plugin_class", ["Business", "vendor", "third-party", ""])
def test_unknown_class_is_refused(tmp_path: Path, plugin_class: str) -> None:
    """A class other than core, business, database or third_party is refused, naming it and the known ones."""
    with pytest.raises(ScaffoldError) as caught:
        new_plugin(NAME, plugin_class, tmp_path / "plugin")
    message = str(caught.value)
    assert f"plugin class {plugin_class!r}: expected one of " in message
    assert all(known in message for known in ("core", "business", "database", "third_party"))
    assert not (tmp_path / "plugin").exists()


@pytest.mark.parametrize("department", ["", "ops\"dept", "ops\\dept", "x" * 41, " ops"])
def test_bad_department_is_refused(tmp_path: Path, department: str) -> None:
    """A department that cannot sit inside a string literal, or is empty or too long, is refused."""
    with pytest.raises(ScaffoldError) as caught:
        new_plugin(NAME, "business", tmp_path / "plugin", department=department)
    assert f"department {department!r}: expected 1 to 40 characters" in str(caught.value)
    assert not (tmp_path / "plugin").exists()


def test_non_empty_directory_is_refused_untouched(tmp_path: Path) -> None:
    """A target directory with anything in it is refused, and nothing in it changes."""
    directory = tmp_path / "plugin"
    (directory / "src").mkdir(parents=True)
    (directory / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    before = tree(directory)
    with pytest.raises(ScaffoldError) as caught:
        new_plugin(NAME, "business", directory)
    assert f"target directory {directory}: exists and is not empty" in str(caught.value)
    assert tree(directory) == before


def test_file_as_directory_is_refused(tmp_path: Path) -> None:
    """A file where the distribution should go is refused and left as it was."""
    path = tmp_path / "plugin"
    path.write_text("notes\n")
    with pytest.raises(ScaffoldError) as caught:
        new_plugin(NAME, "business", path)
    assert f"target directory {path}: exists and is not a directory" in str(caught.value)
    assert path.read_text() == "notes\n"


def test_generated_files(tmp_path: Path) -> None:
    """An empty directory gets exactly the distribution's files, and the result names them."""
    directory = tmp_path / "plugin"
    directory.mkdir()
    result = new_plugin(NAME, "business", directory)
    expected = ["README.md", "pyproject.toml", f"src/{MODULE}/__init__.py", f"src/{MODULE}/py.typed",
                f"tests/test_{MODULE}.py", "tests/test_in_drhost.py"]
    assert [p for p, content in tree(directory).items() if content is not None] == expected
    assert (result.directory, result.distribution, result.module) == (directory, f"drhost-plugin-{NAME}", MODULE)
    assert result.files == tuple(directory / p for p in expected)


def test_pyproject_declares_the_plugin(generated: Path) -> None:
    """pyproject.toml: setuptools, Python >= 3.10, hookspecs, the entry point, src layout, py.typed, drhost_plugin."""
    tomllib: Any = pytest.importorskip("tomllib")
    data = tomllib.loads((generated / "pyproject.toml").read_text())
    project = data["project"]
    assert data["build-system"]["build-backend"] == "setuptools.build_meta"
    assert (project["name"], project["requires-python"]) == (f"drhost-plugin-{NAME}", ">=3.10")
    assert [d for d in project["dependencies"] if d.startswith("drhost-hookspecs")]
    assert project["entry-points"] == {"drhost.plugins": {NAME: MODULE}}
    assert data["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert data["tool"]["setuptools"]["package-data"] == {MODULE: ["py.typed"]}
    assert data["tool"]["pytest"]["ini_options"]["drhost_plugin"] == NAME


def test_every_template_file_is_generated() -> None:
    """The scaffold writes every file of its template plugin, and only those (caches and editor files aside)."""
    from drhost.authoring import _scaffold

    templates = Path(_scaffold.__file__).parent / "templates" / "plugin"
    found = sorted(p.relative_to(templates).as_posix() for p in templates.rglob("*")
                   if p.is_file() and not any(part.startswith((".", "__pycache__")) for part in p.parts))
    assert found == sorted(_scaffold._TEMPLATE_FILES)


def test_no_placeholder_is_left(long_plugin: Path) -> None:
    """No placeholder of the templates survives in a generated plugin, in its files or their paths."""
    from drhost.authoring import _scaffold

    for relative, content in tree(long_plugin).items():
        text = relative + ("" if content is None else content.decode("utf-8"))
        assert [p for p in _scaffold._PLACEHOLDERS if p in text] == [], relative


def test_generation_is_deterministic(tmp_path: Path) -> None:
    """Generating the same plugin twice gives byte-identical files."""
    first, second = tmp_path / "first", tmp_path / "second"
    new_plugin(NAME, "database", first, department="dba")
    new_plugin(NAME, "database", second, department="dba")
    assert tree(first) == tree(second)


def test_generated_code_passes_ruff(long_plugin: Path) -> None:
    """ruff finds nothing in the generated src/ and tests/, even with the longest name and department."""
    done = run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests"], cwd=long_plugin)
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_code_passes_mypy_strict(long_plugin: Path, tmp_path: Path) -> None:
    """mypy --strict finds nothing in the generated src/ and tests/."""
    done = run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy"), "src", "tests"],
               cwd=long_plugin)
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_tests_pass_against_the_installed_plugin(generated: Path, site: Path) -> None:
    """Once installed, all generated tests pass with plain pytest, the drhost-run ones too; none is skipped."""
    done = run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"], cwd=generated, site=site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failed" not in done.stdout and "skipped" not in done.stdout and "error" not in done.stdout
    ran = {line.split("::")[-1] for line in done.stdout.splitlines() if line.startswith("PASSED tests/test_in_drhost")}
    assert ran == {"test_precheck_passes_in_the_plugins_isolation",
                   "test_upgrade_writes_the_marker_and_rollback_removes_it",
                   "test_record_upgrade_with_the_hosts_context"}


def test_entry_point_is_discoverable(site: Path) -> None:
    """The installed distribution shows its plugin in the entry-point group drhost.plugins."""
    script = ("import importlib.metadata, json; "
              "print(json.dumps({e.name: e.value for e in importlib.metadata.entry_points(group='drhost.plugins')}))")
    done = run([sys.executable, "-c", script], cwd=site, site=site)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[NAME] == MODULE


@pytest.fixture(scope="module")
def installed_infos(site: Path) -> dict[str, dict[str, Any]]:
    """drhost_plugin_info() of each class plugin, imported from the install in a fresh interpreter."""
    modules = {class_plugin(c): "drplugin_" + class_plugin(c).replace("-", "_") for c in PLUGIN_CLASSES}
    script = (
        "import importlib, json, sys\n"
        "found = {}\n"
        "for name, module in json.loads(sys.argv[1]).items():\n"
        "    plugin = importlib.import_module(module)\n"
        "    found[name] = {**plugin.drhost_plugin_info().to_json(), 'file': plugin.__file__}\n"
        "print(json.dumps(found))\n"
    )
    done = run([sys.executable, "-c", script, json.dumps(modules)], cwd=site, site=site)
    assert done.returncode == 0, done.stderr
    infos: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return infos


@pytest.mark.parametrize("plugin_class", PLUGIN_CLASSES)
def test_plugin_info_reports_the_class(installed_infos: dict[str, dict[str, Any]], site: Path,
                                       plugin_class: str) -> None:
    """A plugin generated with --class CLASS reports CLASS and its own name, from the installed copy."""
    info = installed_infos[class_plugin(plugin_class)]
    assert (info["name"], info["plugin_class"], info["department"]) == (
        class_plugin(plugin_class), plugin_class, "my-department")
    assert Path(info["file"]).is_relative_to(site)


def test_cli_creates_the_distribution_and_refuses_bad_input_without_traceback(tmp_path: Path) -> None:
    """`drhost plugin new NAME --class CLASS` writes the distribution; a bad name or a used directory exits 2
    with the reason and no traceback."""
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "drhost", "plugin", "new", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=60)

    made = cli("acme-audit", "--class", "database")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "drhost-plugin-acme-audit" / "src" / "drplugin_acme_audit" / "__init__.py").is_file()
    assert "created drhost-plugin-acme-audit" in made.stdout
    for args, says in ((("Bad_Name", "--class", "core"), "plugin name 'Bad_Name'"),
                       (("acme-audit", "--class", "core"), "exists and is not empty")):
        refused = cli(*args)
        assert refused.returncode == 2 and says in refused.stderr and "Traceback" not in refused.stderr


def test_cli_refuses_a_bad_name_in_the_operators_language(tmp_path: Path) -> None:
    """With LANG=zh_CN.UTF-8 `drhost plugin new` refuses a bad name in Chinese through the CLI's usual error line,
    quoting the name as given; in English the line is unchanged, and the exit code (2) is the same in both."""
    def cli(lang: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LANG": lang, "LC_ALL": "", "LC_MESSAGES": ""}
        return subprocess.run([sys.executable, "-m", "drhost", "plugin", "new", "Bad_Name", "--class", "core"],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
                              stdin=subprocess.DEVNULL)

    english, chinese = cli("C"), cli("zh_CN.UTF-8")
    assert english.returncode == chinese.returncode == 2
    assert english.stderr == ("drhost: error: plugin name 'Bad_Name': expected 3 to 40 characters: lowercase letters, "
                              "digits and single '-' between them, starting with a letter (for example 'acme-audit')\n")
    assert chinese.stderr == ("drhost: 错误: 插件名 'Bad_Name': 期望 3 到 40 个字符: 小写字母, 数字, "
                              "以及夹在其间的单个 '-', 以字母开头 (例如 'acme-audit')\n")
    assert english.stdout == chinese.stdout == "" and not list(tmp_path.iterdir())
