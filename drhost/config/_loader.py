"""Load the ops configuration: JSON defaults, INI/JSON files, then ``--set`` overrides.

Every value remembers where it came from, so that a validation error names the
file, the section and the key, what was expected and what was found.
"""

from __future__ import annotations

import configparser
import contextlib
import copy
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from drhost_hookspecs._runtime import parse_faults

from ..errors import ConfigError, DrhostError, ExitCode, Origin, has_control, message_phrase, phrase
from ..i18n import N_
from ._ansible import InventoryError, host_target, is_ansible_inventory, match_pattern, read_inventory
from ._ssh_config import DEFAULT_PATH as DEFAULT_SSH_CONFIG
from ._ssh_config import SshConfigError, target_values
from ._ssh_config import lookup as lookup_ssh_config

Path_ = tuple[str, ...]

#: INI section prefix -> (top-level key of the config, whether the section has a name)
_NAMED_SECTIONS = {"stage": "stages", "class": "classes", "plugin": "plugins", "target": "targets", "ssh": "ssh"}
_PLAIN_SECTIONS = {"run": "run", "rollout": "rollout", "timeouts": "timeouts", "watchdog": "watchdog",
                   "container": "container", "process": "process", "discovery": "discovery",
                   "package": "package"}
#: ``--set`` prefixes, which read like the INI sections they stand for
_SET_PREFIXES = {**{k: v for k, v in _NAMED_SECTIONS.items()}, **_PLAIN_SECTIONS}
#: An inventory is a few KiB; anything this large is the wrong file, and is not read into memory.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}", re.ASCII)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


class ConfigProblems(DrhostError):
    """Every problem found in a configuration (``drhost config check``), in the order found."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


class Problems:
    """Raise a problem at once, or collect them all (``config check`` lists every one)."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.found: list[ConfigError] = []

    @contextlib.contextmanager
    def each(self) -> Iterator[None]:
        """A problem raised inside is collected, and the work after the block goes on."""
        try:
            yield
        except ConfigProblems as exc:
            if not self.collect:
                raise
            self.found.extend(exc.problems)
        except ConfigError as exc:
            if not self.collect:
                raise
            self.found.append(exc)

    def add(self, error: ConfigError) -> None:
        if not self.collect:
            raise error
        self.found.append(error)

    def raise_found(self) -> None:
        if self.found:
            raise ConfigProblems(self.found)


def _read_json_resource(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files(__package__).joinpath(name).read_text("utf-8"))
    return data


def defaults() -> dict[str, Any]:
    """The built-in defaults (``drhost/config/defaults.json``)."""
    return _read_json_resource("defaults.json")


def schema() -> dict[str, Any]:
    """The JSON Schema every merged configuration must satisfy."""
    return _read_json_resource("schema.json")


@dataclass
class LoadedConfig:
    """The merged configuration and where each value came from."""

    data: dict[str, Any]
    origins: dict[Path_, Origin] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    #: Problems found while loading with ``all_problems=True`` (else the first one is raised).
    problems: Problems = field(default_factory=lambda: Problems(False))
    #: The Ansible groups of each target read from an Ansible inventory (``all`` first), for ``--limit``.
    groups_of: dict[str, list[str]] = field(default_factory=dict)

    def origin(self, path: Path_) -> Origin:
        for length in range(len(path), 0, -1):
            found = self.origins.get(path[:length])
            if found is not None:
                if length == len(path):
                    return found
                return Origin(found.file, found.section, ".".join(path[length - 1 :]))
        # A section (a target's name, say): name the file and section its keys came from.
        for known, found in self.origins.items():
            if len(known) > len(path) and known[:len(path)] == path:
                return Origin(found.file, found.section, "")
        # A key that is missing: name the section it should be in, from a sibling that is there.
        parent = path[:-1]
        for known, found in self.origins.items():
            if len(known) == len(path) and known[:-1] == parent:
                return Origin(found.file, found.section, path[-1])
        return Origin("built-in defaults", path[0] if path else "", ".".join(path[1:]))

    def get(self, *path: str, default: Any = None) -> Any:
        node: Any = self.data
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                return default
            node = node[key]
        return node


def _resolved(root: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with a local ``$ref`` (``#/$defs/NAME``: the blocks every class or stage repeats) followed."""
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
        return node
    found: Mapping[str, Any] = root["$defs"][ref.removeprefix("#/$defs/")]
    return _resolved(root, found)


def _schema_at(root: Mapping[str, Any], path: Path_) -> Mapping[str, Any] | None:
    node: Mapping[str, Any] | None = root
    for key in path:
        if node is None:
            return None
        node = _resolved(root, node)
        props = node.get("properties", {})
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]
        else:
            return None
    return None if node is None else _resolved(root, node)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(value: str, fragment: Mapping[str, Any] | None, origin: Origin) -> Any:
    """Turn an INI/``--set`` string into the type the schema asks for."""
    if fragment is None:
        return value
    kind = fragment.get("type")
    text = value.strip()
    # Only plain ASCII decimals: Python's int() and float() also take '1_000', other scripts' digits,
    # 'nan' and 'inf', none of which an operator means as a timeout or a size.
    if kind == "integer":
        if not _INTEGER.fullmatch(text):
            raise ConfigError(origin, phrase("an integer{range}", range=_range(fragment)), value)
        return int(text)
    if kind == "number":
        number = float(text) if _NUMBER.fullmatch(text) else math.nan
        if not math.isfinite(number):
            raise ConfigError(origin, phrase("a number{range}", range=_range(fragment)), value)
        return number
    if kind == "boolean":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(origin, N_("true or false"), value)
    return text


def _range(fragment: Mapping[str, Any]) -> str:
    """The bounds a numeric setting allows, as an operator reads them: ' from 1 to 1000', ' > 0 and <= 60'."""
    low = fragment.get("minimum", fragment.get("exclusiveMinimum"))
    high = fragment.get("maximum", fragment.get("exclusiveMaximum"))
    low_text = f"{'>' if 'exclusiveMinimum' in fragment else '>='} {low}" if low is not None else ""
    high_text = f"{'<' if 'exclusiveMaximum' in fragment else '<='} {high}" if high is not None else ""
    if "minimum" in fragment and "maximum" in fragment:
        return phrase(" from {low} to {high}", low=low, high=high)
    if low_text and high_text:
        return phrase(" {low} and {high}", low=low_text, high=high_text)
    return f" {low_text or high_text}" if low_text or high_text else ""


def _set(data: dict[str, Any], path: Path_, value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def _merge(base: dict[str, Any], extra: Mapping[str, Any], origins: dict[Path_, Origin], origin_of: Any,
           prefix: Path_ = ()) -> None:
    for key, value in extra.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, origins, origin_of, path)
        else:
            base[key] = copy.deepcopy(value)
            origins[path] = origin_of(path)


def _section_path(section: str, origin_file: str) -> Path_:
    if section in _PLAIN_SECTIONS:
        return (_PLAIN_SECTIONS[section],)
    prefix, sep, name = section.partition(":")
    if sep and prefix in _NAMED_SECTIONS and name:
        return (_NAMED_SECTIONS[prefix], name)
    known = ", ".join([*(f"[{k}]" for k in _PLAIN_SECTIONS), *(f"[{k}:NAME]" for k in _NAMED_SECTIONS)])
    raise ConfigError(Origin(origin_file, section, ""), phrase("a section among {known}", known=known), f"[{section}]")


def read_config_text(path: Path) -> str:
    """A config file's text, or a :class:`ConfigError` naming the file and what it is instead.

    Only a regular file is opened (a FIFO would block, a device never end), its size is bounded, and
    invalid UTF-8 is reported with the offset of the first bad byte."""
    where = Origin(str(path), "", "")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(where, N_("a readable config file"), phrase("<no such file>")) from None
    except OSError as exc:
        raise ConfigError(where, N_("a readable config file"), f"<{exc.strerror}>") from None
    if not stat.S_ISREG(info.st_mode):
        kind = N_("a directory") if stat.S_ISDIR(info.st_mode) else N_("a FIFO") if stat.S_ISFIFO(info.st_mode) \
            else N_("a socket") if stat.S_ISSOCK(info.st_mode) else N_("a device")
        raise ConfigError(where, N_("a readable config file"), phrase("<{kind}>", kind=phrase(kind)))
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(where, phrase("a config file of at most {limit} bytes", limit=MAX_CONFIG_BYTES),
                          phrase("<{size} bytes>", size=info.st_size))
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(where, N_("a readable config file"), f"<{exc.strerror}>") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(where, phrase("a config file of at most {limit} bytes", limit=MAX_CONFIG_BYTES), "<more>")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(Origin(str(path), "", f"line {line}, byte offset {exc.start}"), N_("UTF-8 text"),
                          f"<invalid byte 0x{data[exc.start]:02x}>") from None


def _load_ini(path: Path, config: LoadedConfig, root_schema: Mapping[str, Any]) -> None:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive names
    try:
        parser.read_string(read_config_text(path), source=str(path))
    except configparser.Error as exc:
        raise ConfigError(Origin(str(path), "", ""), N_("a valid INI file"),
                          f"<{exc.message.splitlines()[0]}>") from None
    for section in parser.sections():
        with config.problems.each():
            base = _section_path(section, str(path))
            for key, raw in parser.items(section, raw=True):
                with config.problems.each():
                    origin = Origin(str(path), section, key)
                    full = (*base, key)
                    value = coerce(raw, _schema_at(root_schema, full), origin)
                    _set(config.data, full, value)
                    config.origins[full] = origin


def _load_json(path: Path, config: LoadedConfig) -> None:
    text = read_config_text(path)
    try:
        # NaN and Infinity are not JSON, though Python's json module reads them: validate() refuses them
        # with the key they are set to.
        extra = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(Origin(str(path), "", f"line {exc.lineno}"), N_("valid JSON"), f"<{exc.msg}>") from None
    except ValueError:  # an integer past Python's limit of digits
        raise ConfigError(Origin(str(path), "", ""), N_("valid JSON with numbers of a sane size"),
                          "<a number of thousands of digits>") from None
    except RecursionError:
        raise ConfigError(Origin(str(path), "", ""), N_("JSON nested a few levels deep"), "<nesting too deep>") \
            from None
    if not isinstance(extra, dict):
        raise ConfigError(Origin(str(path), "", ""), N_("a JSON object at the top"), type(extra).__name__)
    _merge(config.data, extra, config.origins, lambda p: Origin(str(path), p[0], ".".join(p[1:])))


def parse_override(text: str, root_schema: Mapping[str, Any]) -> tuple[Path_, Any, Origin]:
    """Parse one ``--set section.key=value``."""
    name, sep, raw = text.partition("=")
    origin = Origin("--set", "", name or text)
    if len(text) > 64 * 1024:
        raise ConfigError(origin, N_("SECTION.KEY=VALUE of at most 65536 characters"), f"<{len(text)} characters>")
    parts = name.strip().split(".")
    if not sep or len(parts) < 2 or parts[0] not in _SET_PREFIXES:
        prefixes = ", ".join(sorted(_SET_PREFIXES))
        raise ConfigError(origin, phrase("SECTION.KEY=VALUE with SECTION one of {prefixes}", prefixes=prefixes), text)
    top = _SET_PREFIXES[parts[0]]
    if parts[0] == "timeouts":
        path: Path_ = (top, ".".join(parts[1:]))
    elif parts[0] in _NAMED_SECTIONS:
        if len(parts) < 3:
            raise ConfigError(origin, f"{parts[0]}.NAME.KEY=VALUE", text)
        path = (top, parts[1], ".".join(parts[2:]))
    else:
        path = (top, ".".join(parts[1:]))
    return path, coerce(raw, _schema_at(root_schema, path), origin), origin


def _unknown_keys(error: jsonschema.ValidationError) -> list[str]:
    instance: Any = error.instance
    schema_: Any = error.schema
    return sorted(set(instance) - set(schema_.get("properties", {})))


def _describe_expected(error: jsonschema.ValidationError) -> tuple[str, Any]:
    validator = error.validator
    value: Any = error.validator_value
    if validator == "type":
        return phrase("a value of type {type}", type=value), error.instance
    if validator == "enum":
        return phrase("one of {values}", values=", ".join(map(str, value))), error.instance
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        fragment: Any = error.schema
        kind = "an integer{range}" if fragment.get("type") == "integer" else "a number{range}"
        return phrase(kind, range=_range(fragment)), error.instance
    if validator == "additionalProperties":
        extra = _unknown_keys(error)
        known: Any = error.schema
        allowed = ", ".join(sorted(known.get("properties", {}))) or "none"
        return phrase("only known keys ({keys})", keys=allowed), f"<unknown key {', '.join(extra)}>"
    if validator == "required":
        return phrase("key {key}", key=error.message.split(" is a required")[0]), "<nothing>"
    if validator in ("pattern", "propertyNames"):
        pattern = str(value.get("pattern", value) if isinstance(value, dict) else value)
        return phrase("a name matching {pattern}", pattern=pattern), error.instance
    return error.message, error.instance


def _unsafe_values(node: Any, path: Path_ = ()) -> Iterator[tuple[Path_, str, Any]]:
    """Values no setting may have, wherever they are: NaN and infinities (every comparison with NaN is
    false, so a schema's bounds would let it through), and names or values with control characters or
    terminal escapes (a root with a newline, a target name that recolours the terminal)."""
    if isinstance(node, float) and not math.isfinite(node):
        yield path, N_("a finite number"), node
    elif isinstance(node, str) and has_control(node):
        yield path, N_("a value without control characters or terminal escapes"), node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and has_control(key):
                yield (*path, key), N_("a name without control characters or terminal escapes"), key
            else:
                yield from _unsafe_values(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _unsafe_values(value, (*path, str(index)))


def _error_path(error: jsonschema.ValidationError) -> Path_:
    path = tuple(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        path = (*path, _unknown_keys(error)[0])
    elif error.validator in ("pattern", "propertyNames") and isinstance(error.instance, str):
        path = (*path, error.instance)
    return path


def validate(config: LoadedConfig, root_schema: Mapping[str, Any]) -> None:
    unsafe = [path for path, expected, found in _unsafe_values(config.data)]
    for path, expected, found in _unsafe_values(config.data):
        config.problems.add(ConfigError(config.origin(path), expected, found))
    validator = jsonschema.Draft202012Validator(root_schema)
    errors = sorted(validator.iter_errors(config.data), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    if not config.problems.collect:
        error = jsonschema.exceptions.best_match(errors)
        expected, found = _describe_expected(error)
        raise ConfigError(config.origin(_error_path(error)), expected, found)
    seen: set[str] = set()
    for error in errors:
        path = _error_path(error)
        if any(path[:len(bad)] == bad for bad in unsafe):
            continue  # said already, and better: the schema would call NaN a number out of range
        expected, found = _describe_expected(error)
        problem = ConfigError(config.origin(path), expected, found)
        if str(problem) not in seen:
            seen.add(str(problem))
            config.problems.add(problem)


def _load_ansible(path: Path, config: LoadedConfig) -> None:
    """An Ansible inventory's hosts as targets (``drhost_root`` and the other ``drhost_*`` variables give the
    keys Ansible has no name for), each key's origin the variable it came from."""
    try:
        inventory = read_inventory(path)
        hosts = {host: host_target(inventory, host) for host in inventory.host_vars}
    except InventoryError as exc:
        # The origin names the file: the message keeps the line (``FILE:N: ...`` becomes ``line N: ...``).
        if exc.file != str(path):
            found = phrase("<{message}>", message=message_phrase(exc))
        elif exc.line is None:
            found = phrase("<{message}>", message=exc.problem)
        else:
            found = phrase("<line {line}: {message}>", line=exc.line, message=exc.problem)
        raise ConfigError(Origin(str(path), "", ""), N_("an Ansible inventory drhost can read"), found) from None
    for host, keys in hosts.items():
        target = config.data.setdefault("targets", {}).setdefault(host, {})
        config.groups_of[host] = inventory.groups_of(host)
        for key, (value, variable) in keys.items():
            target[key] = value
            config.origins[("targets", host, key)] = Origin(str(path), f"host {host}", variable)


def _choose_groups(config: LoadedConfig) -> None:
    """A target from an Ansible inventory without a ``group`` takes, of its Ansible groups, the first that
    ``[rollout] groups`` names, else the first it is listed in."""
    rollout = config.data.get("rollout")
    # A [rollout] that is not a table is said by the schema; here it names no groups.
    groups_text = rollout.get("groups") if isinstance(rollout, dict) else None
    named = [part.strip() for part in str(groups_text or "").split(",") if part.strip()]
    targets = config.data.get("targets")
    for host, groups in config.groups_of.items():
        target = targets.get(host) if isinstance(targets, dict) else None
        if not isinstance(target, dict) or "group" in target:
            continue
        own = [group for group in groups if group not in ("all", "ungrouped")]
        chosen = next((group for group in named if group in groups), own[0] if own else None)
        if chosen is not None:
            target["group"] = chosen
            origin = config.origin(("targets", host, "transport"))
            config.origins[("targets", host, "group")] = Origin(origin.file, origin.section,
                                                                f"(Ansible group {chosen})")


def _apply_limit(config: LoadedConfig, limit: str) -> None:
    """Keep the targets an Ansible host pattern selects (groups: an Ansible inventory's, or ``group``)."""
    targets = config.data.get("targets")
    if not isinstance(targets, dict):
        return  # said by the schema
    groups: dict[str, list[str]] = {}
    for name, target in targets.items():
        memberships = config.groups_of.get(name) or (["all", str(target["group"])] if isinstance(target, dict)
                                                     and target.get("group") else ["all"])
        for group in memberships:
            groups.setdefault(group, []).append(name)
    try:
        chosen = match_pattern(limit, list(targets), groups)
    except (InventoryError, re.error) as exc:
        raise ConfigError(Origin("command line", "", "--limit"), N_("an Ansible host pattern"),
                          phrase("<{message}>", message=message_phrase(exc))) from None
    if not chosen:
        known = ", ".join(list(targets)[:10]) + (" …" if len(targets) > 10 else "")
        raise ConfigError(Origin("command line", "", "--limit"),
                          phrase("a pattern that selects at least one target (targets: {known})",
                                 known=known or "none"), limit)
    config.data["targets"] = {name: targets[name] for name in targets if name in chosen}


def load_config(files: Iterable[Path] = (), overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None, *, all_problems: bool = False,
                limit: str | None = None) -> LoadedConfig:
    """Defaults, then ``base`` (for example the demo's inventory), then files, then overrides.

    Raises :class:`ConfigError` for the first problem. With ``all_problems`` nothing is raised: every
    problem found is in ``problems.found`` (a file that cannot be read at all is one, and the others are
    still read), and the data holds every value that was valid."""
    root_schema = schema()
    config = LoadedConfig(defaults(), problems=Problems(all_problems))
    if base:
        _merge(config.data, base, config.origins, lambda p: Origin("demo inventory", p[0], ".".join(p[1:])))
    for path in files:
        with config.problems.each():
            config.files.append(str(path))
            if path.suffix == ".json":
                _load_json(path, config)
            elif is_ansible_inventory(path):
                _load_ansible(path, config)
            else:
                _load_ini(path, config, root_schema)
    for text in overrides:
        with config.problems.each():
            path_, value, origin = parse_override(text, root_schema)
            _set(config.data, path_, value)
            config.origins[path_] = origin
    _choose_groups(config)
    if limit is not None:
        with config.problems.each():
            _apply_limit(config, limit)
    targets = config.data.get("targets")
    for name, target in (targets.items() if isinstance(targets, dict) else ()):
        with config.problems.each():
            _apply_ssh_config(config, str(name), target)
    validate(config, root_schema)
    return config


def _apply_ssh_config(config: LoadedConfig, name: str, target: Any) -> None:
    """Fill an ssh target's keys that the inventory does not set from the operator's OpenSSH client config
    (explicit keys win; ``host`` is looked up as ``ssh`` would, so a HostName replaces it), remembering the
    file and line of each."""
    if not isinstance(target, dict) or target.get("transport") != "ssh":
        return
    chosen = target.get("ssh_config")
    if isinstance(chosen, str) and chosen.strip().lower() == "none":
        return
    path = Path(os.path.expanduser(chosen if isinstance(chosen, str) and chosen else DEFAULT_SSH_CONFIG))
    if not chosen and not path.is_file():
        return  # no ssh_config named, and the operator has none: nothing to read
    alias = str(target.get("host") or name)
    try:
        values = target_values(lookup_ssh_config(path, alias))
    except SshConfigError as exc:
        origin = config.origin(("targets", name, "ssh_config")) if chosen else \
            Origin(str(path), f"target:{name}", "ssh_config (default)")
        raise ConfigError(origin, N_("an ssh_config drhost can read"),
                          phrase("<{message}>", message=message_phrase(exc))) from None
    # `host` is what the operator would type after `ssh`: the file's HostName for it replaces it, as in ssh.
    explicit = set(target) - {"host"}
    for key, (value, setting) in values.items():
        if key not in explicit:
            target[key] = value
            config.origins[("targets", name, key)] = Origin(setting.origin(), "", f"{key} (ssh_config)")
    if values and "host" not in target:
        target["host"] = alias  # OpenSSH's rule: without HostName the name given is the host


def validate_plugin_section(config: LoadedConfig, plugin: str, plugin_schema: Mapping[str, Any] | None) -> None:
    """Coerce and validate ``[plugin:NAME]`` against the plugin's own schema (plus fault keys)."""
    section = config.data["plugins"].setdefault(plugin, {})
    merged: dict[str, Any] = dict(plugin_schema or {"type": "object"})
    props = dict(merged.get("properties", {}))
    props.setdefault("fault", {"type": "string"})
    props.setdefault("fault_delay_s", {"type": "number", "minimum": 0, "maximum": 86400})
    merged["properties"] = props
    for key, value in list(section.items()):
        if isinstance(value, str):
            section[key] = coerce(value, props.get(key), config.origin(("plugins", plugin, key)))
    if "fault" in section:
        try:
            parse_faults(str(section["fault"]))
        except ValueError as exc:
            raise ConfigError(config.origin(("plugins", plugin, "fault")), "STEP:KIND[:TIMES][@TARGET]",
                              str(exc)) from None
    errors = list(jsonschema.Draft202012Validator(merged).iter_errors(section))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        path = ("plugins", plugin, *(str(p) for p in error.absolute_path))
        if error.validator == "additionalProperties":
            path = (*path, _unknown_keys(error)[0])
        expected, found = _describe_expected(error)
        raise ConfigError(config.origin(path), expected, found)
