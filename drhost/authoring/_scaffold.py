"""``drhost plugin new NAME --class CLASS``: write a complete plugin distribution to start from.

The generated plugin is small but real: a read-only precheck, a non-retryable
upgrade step with its cleanup and rollback, a config schema and a verification,
with unit tests that run it against a temporary directory and tests that run it
through drhost (the pytest fixtures of ``drhost.testing.pytest_plugin``) on a
disposable target. An author replaces the marker file with their own work and
keeps the shape.

The templates are the files of a working plugin under ``templates/plugin``
(package data, shipped in the wheel). Its names are placeholders that keep every
file valid as it stands -- ``drplugin_scaffold_name`` is an importable module,
``PluginClass.BUSINESS`` a real member -- so drhost's own ``ruff check .`` and
``mypy`` check the templates in place, with the generated plugin's ruff rules
(the template's pyproject.toml is the closest ruff config there). Everything
generated depends only on the arguments (no dates, no user names, fixed file
order), so two runs with the same arguments write identical bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from drhost_hookspecs import PluginClass

from ..errors import WordedError, phrase

__all__ = ["PLUGIN_CLASSES", "ScaffoldError", "ScaffoldResult", "new_plugin"]

#: The values ``--class`` accepts, in the order the docs list them.
PLUGIN_CLASSES: tuple[str, ...] = tuple(c.value for c in PluginClass)

# Lowercase so the entry-point name, the distribution name and the INI section
# [plugin:NAME] all read the same; no '-' at the end or twice in a row, because a
# distribution name must end with a letter or digit and "a--b" would normalise to
# "a-b" on PyPI while staying "a--b" as the entry point.
_NAME = re.compile(r"[a-z](?:[a-z0-9]|-(?=[a-z0-9]))*")
_NAME_LENGTH = (3, 40)
_NAME_EXPECTED = phrase(
    "{low} to {high} characters: lowercase letters, digits and single '-' between them, starting with a letter "
    "(for example 'acme-audit')", low=_NAME_LENGTH[0], high=_NAME_LENGTH[1]
)
# The department lands inside Python and TOML string literals: no quotes or backslashes.
_DEPARTMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}")
_DEPARTMENT_EXPECTED = phrase("1 to 40 characters: letters, digits, ' ', '.', '_' or '-', starting with a letter or "
                              "digit")

# The template's placeholders and what each stands for. Replaced in one pass of one pattern (longest first,
# so the distribution's name is not taken for the plugin's name inside it): a replacement is never scanned
# again, whatever the department says.
_PLACEHOLDERS = {
    "drhost-plugin-scaffold-name": "distribution",
    "drplugin_scaffold_name": "module",
    "scaffold-name": "name",
    "Scaffold Department": "department",
    "scaffold-class": "plugin_class",
    "PluginClass.BUSINESS": "class_member",
}
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in sorted(_PLACEHOLDERS, key=len, reverse=True)))
# Listed rather than walked: a cache or editor file left next to the templates must never end up in a plugin.
_TEMPLATE_FILES = (
    "pyproject.toml",
    "README.md",
    "src/drplugin_scaffold_name/__init__.py",
    "src/drplugin_scaffold_name/py.typed",
    "tests/test_drplugin_scaffold_name.py",
    "tests/test_in_drhost.py",
)


class ScaffoldError(WordedError):
    """The arguments of ``drhost plugin new`` cannot give a plugin; the message says what was expected."""


@dataclass(frozen=True)
class ScaffoldResult:
    """What :func:`new_plugin` wrote.

    ``files`` are the written files (each under ``directory``), sorted by their
    path relative to it.
    """

    directory: Path
    distribution: str
    module: str
    files: tuple[Path, ...]


def _check_name(name: str) -> None:
    low, high = _NAME_LENGTH
    if not (low <= len(name) <= high and _NAME.fullmatch(name)):
        raise ScaffoldError.worded("plugin name {name}: expected {expected}", name=repr(name),
                                   expected=_NAME_EXPECTED)


def _check_class(plugin_class: str) -> PluginClass:
    if plugin_class not in PLUGIN_CLASSES:
        raise ScaffoldError.worded("plugin class {plugin_class}: expected one of {known}",
                                   plugin_class=repr(plugin_class), known=", ".join(PLUGIN_CLASSES))
    return PluginClass(plugin_class)


def _check_department(department: str) -> None:
    if not _DEPARTMENT.fullmatch(department):
        raise ScaffoldError.worded("department {department}: expected {expected}", department=repr(department),
                                   expected=_DEPARTMENT_EXPECTED)


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ScaffoldError.worded("target directory {directory}: exists and is not a directory; expected a new or "
                                   "empty directory", directory=directory)
    if any(directory.iterdir()):
        raise ScaffoldError.worded("target directory {directory}: exists and is not empty; expected a new or empty "
                                   "directory (nothing in it was changed)", directory=directory)


def _render(template: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[_PLACEHOLDERS[m.group(0)]], template)


def _template(relative: str) -> str:
    found = resources.files(__package__) / "templates" / "plugin"
    for part in relative.split("/"):
        found = found / part
    return found.read_bytes().decode("utf-8")


def new_plugin(name: str, plugin_class: str, directory: Path, *, department: str = "my-department") -> ScaffoldResult:
    """Write the distribution ``drhost-plugin-NAME`` (module ``drplugin_NAME``) at ``directory``.

    ``directory`` must not exist or be empty. Raises :class:`ScaffoldError`,
    before writing anything, for a bad name, class, department or directory.
    """
    _check_name(name)
    cls = _check_class(plugin_class)
    _check_department(department)
    _check_directory(directory)
    module = "drplugin_" + name.replace("-", "_")
    distribution = f"drhost-plugin-{name}"
    values = {
        "name": name,
        "module": module,
        "distribution": distribution,
        "department": department,
        "plugin_class": cls.value,
        "class_member": f"PluginClass.{cls.name}",
    }
    contents = {_render(relative, values): _template(relative) for relative in _TEMPLATE_FILES}
    written: list[Path] = []
    for relative in sorted(contents):
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        # Bytes, not text mode: the platform's newline translation must not make two runs differ.
        path.write_bytes(_render(contents[relative], values).encode("utf-8"))
        written.append(path)
    return ScaffoldResult(directory=directory, distribution=distribution, module=module, files=tuple(written))
