"""Errors in the operator's language: no raise site words its message in English only.

An error raised with ``SomeError.worded("template {field}", field=...)`` is said in the operator's language
(tests/test_message_catalogue.py holds its translation to its template). An error raised with an English
f-string or string would be said in English in every language: new code words its errors with ``.worded``, and
this walk fails on one that does not (issue 17, part 6: 163 such sites were worded).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import drhost

SOURCE = Path(drhost.__file__).parent
#: Exceptions for programming errors and internal signalling, never shown to an operator as they are.
_NOT_OPERATOR_FACING = {"ValueError", "TypeError", "KeyError", "OSError", "RuntimeError", "NotImplementedError",
                        "AssertionError", "SystemExit", "AttributeError", "IndexError", "LookupError",
                        "FileNotFoundError", "PermissionError", "StopIteration", "TimeoutError", "ConnectionError",
                        # The SSH transport's "reconnect and retry": always caught in ``_retrying`` and said as
                        # a worded TransportError naming the cause.
                        "_ConnectionLost",
                        # The remote helper's: HelperLost is turned into _ConnectionLost where it is caught;
                        # HelperUnavailable's reason is the detail of doctor's "helper" line and a debug.log
                        # warning (data, like the other checks' details), and the run goes on without it.
                        "HelperLost", "HelperUnavailable"}
#: Errors whose first argument is not their message: they are worded from parts (the key, what was expected as
#: an ``N_``/``phrase`` id, what was found) where they are said, like ConfigError.
_WORDED_FROM_PARTS = {"RolloutError"}
#: ``StepFailed`` is the plugin author's exception (drhost_hookspecs): drhost raises it *inside* a plugin's
#: step (a failed ``ctx.run``, a refused ``ctx.put``), and what the plugin lets through crosses the sandbox as
#: the step's own text, which the plugin may catch, reword or re-raise. It stays the plugin's words: English.
_SAID_TO_THE_PLUGIN = {"StepFailed"}


def _english_only(node: ast.Raise) -> bool:
    call = node.exc
    if not isinstance(call, ast.Call) or not call.args:
        return False
    name = call.func.id if isinstance(call.func, ast.Name) else None
    if name is None or name in _NOT_OPERATOR_FACING | _WORDED_FROM_PARTS | _SAID_TO_THE_PLUGIN:
        return False
    first = call.args[0]
    return isinstance(first, ast.JoinedStr) or (isinstance(first, ast.Constant) and isinstance(first.value, str))


def english_only_sites() -> Counter[str]:
    found: Counter[str] = Counter()
    for path in sorted(SOURCE.rglob("*.py")):
        if "product" in path.parts or "templates" in path.parts:
            continue  # the demo product and the scaffold's templates are not drhost speaking
        where = str(path.relative_to(SOURCE.parent))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and _english_only(node):
                found[where] += 1
    return found


def test_no_raise_site_words_its_message_in_english_only() -> None:
    """A raise with an English f-string or string (not .worded) of an operator-facing error fails, naming where."""
    found = dict(english_only_sites())
    assert found == {}, ("raise these errors with SomeError.worded(template, **fields) and translate the template: "
                         f"{found}")


def test_the_walk_finds_english_only_raises_and_not_worded_ones() -> None:
    """The walk counts `raise X(f"...")` and `raise X("...")`, and not `raise X.worded(...)` nor ValueError."""
    tree = ast.parse('raise RefusedError(f"no {x}")\nraise StateError("no")\nraise RefusedError.worded("no {x}", x=1)\n'
                     'raise ValueError(f"bad {x}")\n')
    assert [_english_only(node) for node in ast.walk(tree) if isinstance(node, ast.Raise)] == [True, True, False,
                                                                                                 False]
