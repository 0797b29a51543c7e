"""``drhost_hookspecs`` exports only what a plugin author uses, each name documented.

The author surface is ``drhost_hookspecs.__all__``; the worker runtime (protocol, fault
injection, confinement) is the private ``drhost_hookspecs._runtime``. A name added to
``__all__`` fails here until it has a docstring and an entry in docs/plugin-hooks.md.

What counts as a docstring:

- a class or function: its own ``__doc__``, written in the source — not inherited, and not
  the one ``dataclasses`` or ``enum`` generate for a class without one;
- any other value (a constant, a pluggy marker), which cannot carry a docstring of its own:
  a ``#:`` doc-comment (the Sphinx convention) on the line above its assignment. A constant
  that is a string, a number or a tuple of them must also have its value stated in the
  paragraph of docs/plugin-hooks.md that names it, so the reference cannot go stale.
"""

from __future__ import annotations

import ast
import enum
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import drhost_hookspecs
from drhost_hookspecs import _runtime

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugin-hooks.md"
PACKAGE = Path(drhost_hookspecs.__file__).resolve().parent
PUBLIC = sorted(drhost_hookspecs.__all__)


def _is_code(value: object) -> bool:
    return inspect.isclass(value) or inspect.isroutine(value)


CODE = [name for name in PUBLIC if _is_code(getattr(drhost_hookspecs, name))]
VALUES = [name for name in PUBLIC if not _is_code(getattr(drhost_hookspecs, name))]


def _plain_items(value: object) -> tuple[object, ...] | None:
    """A constant's value(s) when it is a string, a number or a tuple of them; else None (a marker...)."""
    items = value if isinstance(value, tuple) else (value,)
    return items if all(isinstance(item, (str, int, float)) for item in items) else None


CONSTANTS = [name for name in VALUES if _plain_items(getattr(drhost_hookspecs, name)) is not None]


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _own_docstring(value: object) -> str:
    """The docstring written for ``value`` itself; '' when it has none or only a generated one."""
    if inspect.isclass(value):
        text = vars(value).get("__doc__") or ""
        name = value.__name__
        # dataclasses fills a missing docstring with the signature, "Name(field: type, ...)".
        if re.fullmatch(rf"{re.escape(name)}\(.*\)", text.strip(), re.S):
            return ""
        # enum gives a class without a docstring a stock one, depending on the Python version.
        if issubclass(value, enum.Enum) and text in ("An enumeration.", enum.Enum.__doc__):
            return ""
        return text.strip()
    return (getattr(value, "__doc__", None) or "").strip()


def _doc_comment(name: str) -> str:
    """The ``#:`` comment above ``name``'s module-level assignment in drhost_hookspecs (outside the runtime)."""
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.parse(source).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                comment: list[str] = []
                line = node.lineno - 2
                while line >= 0 and lines[line].lstrip().startswith("#:"):
                    comment.insert(0, lines[line].lstrip()[2:].strip())
                    line -= 1
                return " ".join(comment).strip()
    return ""


def _paragraph_naming(doc: str, name: str) -> str:
    """The paragraphs (blank-line separated) of the doc that name ``name`` in code."""
    pattern = re.compile(rf"`@?{re.escape(name)}(?![A-Za-z0-9_])")
    return "\n\n".join(block for block in re.split(r"\n\s*\n", doc) if pattern.search(block))


def test_the_surface_is_split_as_documented() -> None:
    """The author surface and the runtime are both non-empty, so the tests below check something."""
    assert CODE and VALUES and CONSTANTS and _runtime.__all__


@pytest.mark.parametrize("name", CODE)
def test_every_public_class_and_function_has_a_written_docstring(name: str) -> None:
    """Every class or function in ``__all__`` has its own written docstring (not inherited, not generated)."""
    assert _own_docstring(getattr(drhost_hookspecs, name)), f"drhost_hookspecs.{name} has no docstring of its own"


@pytest.mark.parametrize("name", VALUES)
def test_every_public_value_has_a_doc_comment(name: str) -> None:
    """Every other value in ``__all__`` (constant, marker) has a ``#:`` doc-comment above its assignment."""
    assert _doc_comment(name), f"drhost_hookspecs.{name}: no '#:' doc-comment above its assignment in {PACKAGE}"


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_is_in_the_reference(doc: str, name: str) -> None:
    """Every name in ``__all__`` is named as code (in backticks) in docs/plugin-hooks.md."""
    assert _paragraph_naming(doc, name), f"{name} is not named in backticks in {DOC}"


@pytest.mark.parametrize("name", CONSTANTS)
def test_every_public_constant_has_its_value_in_the_reference(doc: str, name: str) -> None:
    """A constant that is a string, number or tuple of them has its value(s) in the doc paragraph naming it."""
    items = _plain_items(getattr(drhost_hookspecs, name)) or ()
    paragraph = _paragraph_naming(doc, name)
    missing = [item for item in items if str(item) not in paragraph]
    assert not missing, f"{name}: the paragraph of {DOC.name} that names it does not state {missing}"


def test_no_runtime_name_is_public() -> None:
    """No name of the runtime's face is in ``drhost_hookspecs.__all__`` or defined in the runtime and exported."""
    assert not set(_runtime.__all__) & set(PUBLIC)
    from_runtime = [name for name in PUBLIC
                    if getattr(getattr(drhost_hookspecs, name), "__module__", "").startswith(_runtime.__name__)]
    assert not from_runtime, f"defined in {_runtime.__name__} but public: {from_runtime}"


def test_importing_the_author_surface_does_not_load_the_runtime() -> None:
    """``import drhost_hookspecs`` (and ``from drhost_hookspecs import *``) loads no module of the runtime."""
    code = ("import sys; from drhost_hookspecs import *; "
            "print(sorted(m for m in sys.modules if m.startswith('drhost_hookspecs._runtime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", f"the author surface loads the runtime: {out.stdout.strip()}"


def test_the_worker_module_launchers_use_is_in_the_runtime() -> None:
    """``WORKER_MODULE``, what every launcher runs with ``python -m``, is a module of the runtime package."""
    spec = importlib.util.find_spec(_runtime.WORKER_MODULE)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().parent == Path(_runtime.__file__).resolve().parent
