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


@dataclass(frozen=True)
class PluginInfo:
    """Who a plugin is. Returned by ``drhost_plugin_info``."""

    name: str
    department: str
    plugin_class: PluginClass
    api_version: int = HOOK_API_VERSION
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "department": self.department,
            "plugin_class": str(self.plugin_class),
            "api_version": self.api_version,
            "description": self.description,
        }


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
