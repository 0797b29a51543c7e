"""Make throwaway plugin distributions on disk (a module plus a dist-info with an entry point)."""

from __future__ import annotations

import base64
import hashlib
import textwrap
from collections.abc import Mapping
from pathlib import Path

PRELUDE = """
from drhost_hookspecs import Category, PluginClass, PluginInfo, Stage, Step, hookimpl
"""


def make_plugin(site: Path, name: str, source: str, *, module: str | None = None, version: str = "0.1",
                record: bool = False, extra_files: Mapping[str, str] | None = None) -> Path:
    """Write module ``module`` (default: ``name`` with '-' as '_') and register it as plugin ``name``.

    ``record``: also write a RECORD (as pip does) listing the module, the dist-info and ``extra_files``
    (path relative to ``site`` -> text), which are written too.
    """
    module = module or name.replace("-", "_")
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(PRELUDE + textwrap.dedent(source))
    dist = site / f"{module}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[drhost.plugins]\n{name} = {module}\n")
    for relative, text in (extra_files or {}).items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text)
    if record:
        listed = [f"{module}.py", f"{dist.name}/METADATA", f"{dist.name}/entry_points.txt", *(extra_files or {})]
        lines = []
        for relative in listed:
            data = (site / relative).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{relative},sha256={digest},{len(data)}")
        lines.append(f"{dist.name}/RECORD,,")
        (dist / "RECORD").write_text("\n".join(lines) + "\n")
    return site


def simple_plugin(name: str, plugin_class: str = "business", step_body: str = "pass") -> str:
    """Source of a valid plugin with one upgrade step whose body is ``step_body``."""
    return f"""
@hookimpl
def drhost_plugin_info():
    return PluginInfo(name={name!r}, department="test", plugin_class=PluginClass({plugin_class!r}))

def work(ctx):
{textwrap.indent(textwrap.dedent(step_body), '    ')}

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("work", work, retryable=True, timeout_s=30, category=Category.PLUGIN, order=99))
"""


def make_source_tree(directory: Path, name: str, source: str, *, version: str = "0.1.0",
                     requires: tuple[str, ...] = ("drhost-hookspecs",)) -> Path:
    """A plugin's source distribution as an author has it: pyproject.toml and one module, pip-installable."""
    module = "drplugin_" + name.replace("-", "_")
    directory.mkdir(parents=True, exist_ok=True)
    dependencies = ", ".join(f'"{r}"' for r in requires)
    (directory / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "drhost-plugin-{name}"
        version = "{version}"
        dependencies = [{dependencies}]

        [project.entry-points."drhost.plugins"]
        {name} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (directory / f"{module}.py").write_text(PRELUDE + textwrap.dedent(source))
    return directory
