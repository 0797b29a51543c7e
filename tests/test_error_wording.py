"""Errors in the operator's language: raise sites that word a message in English only may not multiply.

An error raised with ``SomeError.worded("template {field}", field=...)`` is said in the operator's language
(tests/test_message_catalogue.py holds its translation to its template). An error raised with an English
f-string or string is said in English in every language. The modules that still have such raise sites are
listed below with how many; a module may lose them (lower its number here), never gain one: new code words
its errors with ``.worded``.
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
                        "FileNotFoundError", "PermissionError", "StopIteration", "TimeoutError"}

#: Raise sites with an English-only message, per module (issue 17, part 6: 163 in all; the refusals an
#: operator meets starting, resuming or inspecting a run were worded first).
ENGLISH_ONLY = {
    "drhost/authoring/_scaffold.py": 5, "drhost/cli/_errors.py": 2, "drhost/cli/_plugins.py": 1,
    "drhost/config/_ansible.py": 28, "drhost/config/_ssh_config.py": 7, "drhost/context.py": 4,
    "drhost/demo/install.py": 12, "drhost/orchestrator/_rollout.py": 3, "drhost/orchestrator/_target_lock.py": 1,
    "drhost/packaging/build.py": 1, "drhost/packaging/manifest.py": 9, "drhost/state/_runs.py": 1,
    "drhost/supervisor/_bundle.py": 4, "drhost/supervisor/_cgroups.py": 3, "drhost/supervisor/_confine.py": 3,
    "drhost/supervisor/_factory.py": 1, "drhost/supervisor/_podman.py": 5, "drhost/testing/_fake.py": 2,
    "drhost/testing/_install.py": 6, "drhost/testing/_plugin_test.py": 1, "drhost/transport/_base.py": 1,
    "drhost/transport/_become.py": 4, "drhost/transport/_local.py": 8, "drhost/transport/_remote_jobs.py": 8,
    "drhost/transport/_sftp_upload.py": 3, "drhost/transport/_ssh.py": 28, "drhost/transport/_ssh_connect.py": 6,
    "drhost/watchdog/_history.py": 6,
}


def _english_only(node: ast.Raise) -> bool:
    call = node.exc
    if not isinstance(call, ast.Call) or not call.args:
        return False
    name = call.func.id if isinstance(call.func, ast.Name) else None
    if name is None or name in _NOT_OPERATOR_FACING:
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


def test_no_module_gains_an_english_only_error() -> None:
    """A raise with an English f-string or string (not .worded) in a module beyond its listed count fails."""
    grown = {module: (count, ENGLISH_ONLY.get(module, 0)) for module, count in english_only_sites().items()
             if count > ENGLISH_ONLY.get(module, 0)}
    assert grown == {}, ("raise these errors with SomeError.worded(template, **fields) and translate the template "
                         f"(found, allowed): {grown}")


def test_the_walk_finds_english_only_raises_and_not_worded_ones() -> None:
    """The walk counts `raise X(f"...")` and `raise X("...")`, and not `raise X.worded(...)` nor ValueError."""
    tree = ast.parse('raise RefusedError(f"no {x}")\nraise StateError("no")\nraise RefusedError.worded("no {x}", x=1)\n'
                     'raise ValueError(f"bad {x}")\n')
    assert [_english_only(node) for node in ast.walk(tree) if isinstance(node, ast.Raise)] == [True, True, False,
                                                                                                 False]
