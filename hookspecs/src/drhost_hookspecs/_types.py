"""Value types shared by the host and plugins."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import Context

#: Bumped when a hookspec changes incompatibly. A plugin declares the version it was
#: written against in :class:`PluginInfo`; the host refuses plugins it cannot serve.
HOOK_API_VERSION = 1


class Stage(str, enum.Enum):
    """The five stages every target goes through, in this order."""

    PRECHECK = "precheck"
    BACKUP = "backup"
    TRANSFER = "transfer"
    UPGRADE = "upgrade"
    POSTCHECK = "postcheck"

    @classmethod
    def ordered(cls) -> tuple[Stage, ...]:
        return (cls.PRECHECK, cls.BACKUP, cls.TRANSFER, cls.UPGRADE, cls.POSTCHECK)

    def __str__(self) -> str:
        return self.value


class PluginClass(str, enum.Enum):
    """Trust class of a plugin; it selects isolation, limits and failure policy."""

    CORE = "core"
    BUSINESS = "business"
    THIRD_PARTY = "third_party"
    DATABASE = "database"

    def __str__(self) -> str:
        return self.value


class Category(str, enum.Enum):
    """What a step mostly waits on; it shapes the timeout diagnosis and suggestion."""

    NETWORK = "network"
    DATABASE = "database"
    FILE = "file"
    SERVICE = "service"
    PLUGIN = "plugin"

    def __str__(self) -> str:
        return self.value


class VerifyPhase(str, enum.Enum):
    """When ``drhost_verify`` is asked: after a stage completed, or after it was rolled back."""

    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"

    def __str__(self) -> str:
        return self.value


#: The placeholder for the target's install root in ``PluginInfo.paths`` and ``PluginInfo.commands``.
ROOT_PLACEHOLDER = "{root}"
#: At most this many entries in ``PluginInfo.paths`` and in ``PluginInfo.commands`` each.
MAX_DECLARED = 64
#: At most this many characters per entry (PATH_MAX).
MAX_DECLARED_LENGTH = 4096


def _declared_error(plugin: str, message: str) -> Exception:
    from ._plugin import PluginDefinitionError  # _plugin imports this module

    return PluginDefinitionError(plugin, "drhost_plugin_info", message)


def _declared_path(plugin: str, field_name: str, index: int, value: object) -> str:
    """``value`` checked as an absolute target path (``{root}/...`` allowed) and normalised."""
    where = f"PluginInfo.{field_name}[{index}] {value!r}"
    if not isinstance(value, str):
        raise _declared_error(plugin, f"{where}: expected a string, found {type(value).__name__}")
    if not value or len(value) > MAX_DECLARED_LENGTH:
        raise _declared_error(plugin, f"{where}: expected 1 to {MAX_DECLARED_LENGTH} characters")
    if "\0" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _declared_error(plugin, f"{where}: contains a NUL or control character")
    rest = value[len(ROOT_PLACEHOLDER):] if value.startswith(ROOT_PLACEHOLDER) else value
    if "{" in rest or "}" in rest:
        raise _declared_error(plugin, f"{where}: the only placeholder is {ROOT_PLACEHOLDER}, at the start")
    if not rest.startswith("/") and rest != "":
        raise _declared_error(plugin, f"{where}: expected an absolute path (/... or {ROOT_PLACEHOLDER}/...)")
    if ".." in rest.split("/"):
        raise _declared_error(plugin, f"{where}: '..' is not allowed")
    prefix = ROOT_PLACEHOLDER if value.startswith(ROOT_PLACEHOLDER) else ""
    normal = "/" + "/".join(part for part in rest.split("/") if part not in ("", "."))
    if prefix:
        return prefix if normal == "/" else prefix + normal
    if normal == "/":
        raise _declared_error(plugin, f"{where}: '/' would allow every path; declare the directories the plugin "
                                      f"needs")
    return normal


def _declared_command(plugin: str, index: int, value: object) -> str:
    """``value`` checked as a command: a bare name (looked up on the target's PATH) or an absolute path."""
    if isinstance(value, str) and "/" not in value and "{" not in value:
        where = f"PluginInfo.commands[{index}] {value!r}"
        if not value or len(value) > 255:
            raise _declared_error(plugin, f"{where}: expected a name of 1 to 255 characters")
        if value in (".", "..") or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise _declared_error(plugin, f"{where}: expected a command name (no spaces or control characters) "
                                          f"or an absolute path")
        return value
    command = _declared_path(plugin, "commands", index, value)
    if command == ROOT_PLACEHOLDER:
        raise _declared_error(plugin, f"PluginInfo.commands[{index}] {value!r}: the install root is not a command")
    return command


def _declared(plugin: str, field_name: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise _declared_error(plugin, f"PluginInfo.{field_name}: expected a list or tuple of strings, found "
                                      f"{type(values).__name__}")
    if len(values) > MAX_DECLARED:
        raise _declared_error(plugin, f"PluginInfo.{field_name}: {len(values)} entries, at most {MAX_DECLARED}")
    checked = [_declared_command(plugin, i, v) if field_name == "commands" else
               _declared_path(plugin, field_name, i, v) for i, v in enumerate(values)]
    return tuple(dict.fromkeys(checked))


@dataclass(frozen=True)
class PluginInfo:
    """Who a plugin is. Returned by ``drhost_plugin_info``.

    ``paths``: absolute paths on the target outside the product's install root that the
    plugin's file operations (``ctx.write_text``, ``read_text``, ``exists``, ``remove``, the
    target path of ``put``) may touch, each a directory (everything below it) or a file;
    ``{root}`` at the start stands for the target's install root. Everything else outside the
    install root is refused. ``commands``: the ``argv[0]`` values a ``third_party`` plugin may
    pass to ``ctx.run`` (a bare name looked up on the target's PATH, or an absolute path,
    ``{root}/...`` allowed), matched exactly; other classes may declare them too (shown, and
    checked by plugin-test) but are not limited by them.
    """

    name: str
    department: str
    plugin_class: PluginClass
    api_version: int = HOOK_API_VERSION
    description: str = ""
    paths: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists are accepted from plugin authors; stored normalised as tuples.
        object.__setattr__(self, "paths", _declared(self.name, "paths", self.paths))
        object.__setattr__(self, "commands", _declared(self.name, "commands", self.commands))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "department": self.department,
            "plugin_class": str(self.plugin_class),
            "api_version": self.api_version,
            "description": self.description,
            "paths": list(self.paths),
            "commands": list(self.commands),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PluginInfo:
        """The info as a describe worker sent it, validated again on the host's side."""
        return cls(
            name=str(data["name"]),
            department=str(data["department"]),
            plugin_class=PluginClass(data["plugin_class"]),
            api_version=int(data["api_version"]),
            description=str(data.get("description", "")),
            paths=data.get("paths", ()),
            commands=data.get("commands", ()),
        )


StepCallable = Callable[["Context"], None]


@dataclass(frozen=True)
class Step:
    """One unit of work a plugin contributes to a stage.

    ``retryable`` is a promise: running the step again, after a success or a partial
    run, leaves the target as one successful run would. A step that cannot promise
    that must say ``retryable=False`` and provide ``cleanup`` (undo a partial run so
    the stage can start again) and ``rollback`` (undo a completed or partial run so
    the target returns to the old version). Both compensations must tolerate being
    called after a partial run, and more than once.
    """

    name: str
    run: StepCallable
    retryable: bool
    timeout_s: float
    category: Category
    timeout_key: str = ""
    order: int = 50
    description: str = ""
    cleanup: StepCallable | None = None
    rollback: StepCallable | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"step name {self.name!r}: expected letters, digits, '_' or '-'")
        if self.timeout_s <= 0:
            raise ValueError(f"step {self.name!r}: timeout_s must be > 0, got {self.timeout_s!r}")
        # Accept "database" as well as Category.DATABASE from plugin authors.
        object.__setattr__(self, "category", Category(self.category))


@dataclass(frozen=True)
class StepDescription:
    """The JSON-safe description of a :class:`Step`, as the host sees it."""

    name: str
    retryable: bool
    timeout_s: float
    category: Category
    timeout_key: str
    order: int
    description: str
    has_cleanup: bool
    has_rollback: bool

    @classmethod
    def of(cls, stage: Stage, step: Step) -> StepDescription:
        return cls(
            name=step.name,
            retryable=step.retryable,
            timeout_s=float(step.timeout_s),
            category=step.category,
            timeout_key=step.timeout_key or f"{stage.value}.{step.name}",
            order=step.order,
            description=step.description,
            has_cleanup=step.cleanup is not None,
            has_rollback=step.rollback is not None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "retryable": self.retryable,
            "timeout_s": self.timeout_s,
            "category": str(self.category),
            "timeout_key": self.timeout_key,
            "order": self.order,
            "description": self.description,
            "has_cleanup": self.has_cleanup,
            "has_rollback": self.has_rollback,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepDescription:
        return cls(
            name=str(data["name"]),
            retryable=bool(data["retryable"]),
            timeout_s=float(data["timeout_s"]),
            category=Category(data["category"]),
            timeout_key=str(data["timeout_key"]),
            order=int(data["order"]),
            description=str(data.get("description", "")),
            has_cleanup=bool(data["has_cleanup"]),
            has_rollback=bool(data["has_rollback"]),
        )


@dataclass(frozen=True)
class RunResult:
    """What ``ctx.run`` returns."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class TargetInfo:
    """The target a step works on. Paths are paths on the target."""

    name: str
    host: str
    transport: str
    install_root: str
    work_dir: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PackageInfo:
    """The upgrade package of this run.

    ``local_path`` is on the controller (``ctx.put`` reads it there); ``remote_path``
    is where the transfer stage puts it on the target.
    """

    product: str
    version: str
    upgrades_from: tuple[str, ...]
    local_path: str
    remote_path: str
    sha256: str
    size: int
    manifest: Mapping[str, Any] = field(default_factory=dict)
