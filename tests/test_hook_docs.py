"""docs/plugin-hooks.md must stay in step with drhost_hookspecs.

The hook reference is what plugin authors read; these tests fail as soon as a
hookspec or a Context method changes without the doc following. The public names
(``__all__``: docstring, entry in the doc, no runtime) are tests/test_author_surface.py's.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from drhost_hookspecs import Context, _spec

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugin-hooks.md"


class _Written:
    """An annotation shown exactly as written in the source (``from __future__ import annotations``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _as_written(annotation: object) -> object:
    return _Written(annotation) if isinstance(annotation, str) else annotation


def render(func: object, *, drop_self: bool = False) -> str:
    """``name(params) -> return`` as inspect.signature renders it, string annotations unquoted."""
    sig = inspect.signature(func)  # type: ignore[arg-type]
    params = [p.replace(annotation=_as_written(p.annotation)) for p in sig.parameters.values()]
    if drop_self:
        params = [p for p in params if p.name != "self"]
    sig = sig.replace(parameters=params, return_annotation=_as_written(sig.return_annotation))
    return f"{func.__name__}{sig}"  # type: ignore[attr-defined]


def hookspecs() -> list[object]:
    return [
        f
        for name, f in inspect.getmembers(_spec, inspect.isfunction)
        if name.startswith("drhost_") and hasattr(f, "drhost_spec")
    ]


def context_methods() -> list[str]:
    return sorted(
        name
        for name, value in vars(Context).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    )


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _headings(doc: str) -> list[str]:
    return [line for line in doc.splitlines() if line.startswith("#")]


def test_hookspecs_are_found() -> None:
    """The spec module still has hookspecs to document (guards the other tests against finding none)."""
    assert len(hookspecs()) >= 8


@pytest.mark.parametrize("spec", hookspecs(), ids=lambda f: f.__name__)
def test_every_hookspec_has_a_heading_with_its_exact_signature(doc: str, spec: object) -> None:
    """Every hookspec has a heading line in docs/plugin-hooks.md containing its exact signature in backticks."""
    wanted = f"`{render(spec)}`"
    assert any(wanted in line for line in _headings(doc)), f"no heading containing {wanted} in {DOC}"


@pytest.mark.parametrize("spec", hookspecs(), ids=lambda f: f.__name__)
def test_every_hook_section_states_firstresult_correctly(doc: str, spec: object) -> None:
    """Every hook's section says "firstresult: yes" or "firstresult: no", matching the hookspec marker."""
    name = spec.__name__  # type: ignore[attr-defined]
    match = re.search(rf"^#+ .*`{name}\(.*?$(.*?)(?=^#{{1,3}} )", doc + "\n## end", re.S | re.M)
    assert match, f"no section for {name}"
    wanted = "yes" if spec.drhost_spec["firstresult"] else "no"  # type: ignore[attr-defined]
    assert f"firstresult: {wanted}" in match.group(1), f"{name}: section must say 'firstresult: {wanted}'"


@pytest.mark.parametrize("method", context_methods())
def test_every_context_method_is_documented(doc: str, method: str) -> None:
    """Every Context protocol method has a heading with ``ctx.`` and its exact signature (a property: its name)."""
    value = vars(Context)[method]
    shown = method if isinstance(value, property) else render(value, drop_self=True)
    wanted = f"`ctx.{shown}`"
    assert any(wanted in line for line in _headings(doc)), f"no heading containing {wanted} in {DOC}"


@pytest.mark.parametrize("attribute", sorted(Context.__annotations__))
def test_every_context_attribute_is_documented(doc: str, attribute: str) -> None:
    """Every attribute of the Context protocol (run_id, target, ...) has a heading naming ``ctx.ATTRIBUTE``."""
    assert any(f"`ctx.{attribute}" in line for line in _headings(doc)), f"no heading for ctx.{attribute}"
