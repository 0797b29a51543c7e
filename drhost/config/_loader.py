"""Load the ops configuration: JSON defaults, INI/JSON files, then ``--set`` overrides.

Every value remembers where it came from, so that a validation error names the
file, the section and the key, what was expected and what was found.
"""

from __future__ import annotations

import configparser
import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from drhost_hookspecs import parse_faults

from ..errors import ConfigError, Origin

Path_ = tuple[str, ...]

#: INI section prefix -> (top-level key of the config, whether the section has a name)
_NAMED_SECTIONS = {"stage": "stages", "class": "classes", "plugin": "plugins", "target": "targets", "ssh": "ssh"}
_PLAIN_SECTIONS = {"run": "run", "rollout": "rollout", "timeouts": "timeouts", "watchdog": "watchdog",
                   "container": "container", "process": "process", "discovery": "discovery"}
#: ``--set`` prefixes, which read like the INI sections they stand for
_SET_PREFIXES = {**{k: v for k, v in _NAMED_SECTIONS.items()}, **_PLAIN_SECTIONS}


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

    def origin(self, path: Path_) -> Origin:
        for length in range(len(path), 0, -1):
            found = self.origins.get(path[:length])
            if found is not None:
                if length == len(path):
                    return found
                return Origin(found.file, found.section, ".".join(path[length - 1 :]))
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


def _schema_at(root: Mapping[str, Any], path: Path_) -> Mapping[str, Any] | None:
    node: Mapping[str, Any] | None = root
    for key in path:
        if node is None:
            return None
        props = node.get("properties", {})
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]
        else:
            return None
    return node


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(value: str, fragment: Mapping[str, Any] | None, origin: Origin) -> Any:
    """Turn an INI/``--set`` string into the type the schema asks for."""
    if fragment is None:
        return value
    kind = fragment.get("type")
    text = value.strip()
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
    except ValueError:
        raise ConfigError(origin, f"{'an integer' if kind == 'integer' else 'a number'}", value) from None
    if kind == "boolean":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(origin, "true or false", value)
    return text


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
    raise ConfigError(Origin(origin_file, section, ""), f"a section among {known}", f"[{section}]")


def _load_ini(path: Path, config: LoadedConfig, root_schema: Mapping[str, Any]) -> None:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive names
    try:
        parser.read_string(path.read_text("utf-8"), source=str(path))
    except configparser.Error as exc:
        raise ConfigError(Origin(str(path), "", ""), "a valid INI file", f"<{exc.message.splitlines()[0]}>") from None
    for section in parser.sections():
        base = _section_path(section, str(path))
        for key, raw in parser.items(section, raw=True):
            origin = Origin(str(path), section, key)
            full = (*base, key)
            value = coerce(raw, _schema_at(root_schema, full), origin)
            _set(config.data, full, value)
            config.origins[full] = origin


def _load_json(path: Path, config: LoadedConfig) -> None:
    try:
        extra = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(Origin(str(path), "", f"line {exc.lineno}"), "valid JSON", f"<{exc.msg}>") from None
    if not isinstance(extra, dict):
        raise ConfigError(Origin(str(path), "", ""), "a JSON object at the top", type(extra).__name__)
    _merge(config.data, extra, config.origins, lambda p: Origin(str(path), p[0], ".".join(p[1:])))


def parse_override(text: str, root_schema: Mapping[str, Any]) -> tuple[Path_, Any, Origin]:
    """Parse one ``--set section.key=value``."""
    name, sep, raw = text.partition("=")
    origin = Origin("--set", "", name or text)
    parts = name.strip().split(".")
    if not sep or len(parts) < 2 or parts[0] not in _SET_PREFIXES:
        prefixes = ", ".join(sorted(_SET_PREFIXES))
        raise ConfigError(origin, f"SECTION.KEY=VALUE with SECTION one of {prefixes}", text)
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
        return f"a value of type {value}", error.instance
    if validator == "enum":
        return "one of " + ", ".join(map(str, value)), error.instance
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[str(validator)]
        return f"a number {op} {value}", error.instance
    if validator == "additionalProperties":
        extra = _unknown_keys(error)
        known: Any = error.schema
        allowed = ", ".join(sorted(known.get("properties", {}))) or "none"
        return f"only known keys ({allowed})", f"<unknown key {', '.join(extra)}>"
    if validator == "required":
        return f"key {error.message.split(' is a required')[0]}", "<nothing>"
    if validator in ("pattern", "propertyNames"):
        return "a name matching " + str(value.get("pattern", value) if isinstance(value, dict) else value), \
            error.instance
    return error.message, error.instance


def validate(config: LoadedConfig, root_schema: Mapping[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(root_schema)
    errors = sorted(validator.iter_errors(config.data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        path = tuple(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties":
            path = (*path, _unknown_keys(error)[0])
        elif error.validator in ("pattern", "propertyNames") and isinstance(error.instance, str):
            path = (*path, error.instance)
        expected, found = _describe_expected(error)
        raise ConfigError(config.origin(path), expected, found)


def load_config(files: Iterable[Path] = (), overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Defaults, then ``base`` (for example the demo's inventory), then files, then overrides."""
    root_schema = schema()
    config = LoadedConfig(defaults())
    if base:
        _merge(config.data, base, config.origins, lambda p: Origin("demo inventory", p[0], ".".join(p[1:])))
    for path in files:
        if not path.is_file():
            raise ConfigError(Origin(str(path), "", ""), "a readable config file", "<no such file>")
        config.files.append(str(path))
        if path.suffix == ".json":
            _load_json(path, config)
        else:
            _load_ini(path, config, root_schema)
    for text in overrides:
        path_, value, origin = parse_override(text, root_schema)
        _set(config.data, path_, value)
        config.origins[path_] = origin
    validate(config, root_schema)
    return config


def validate_plugin_section(config: LoadedConfig, plugin: str, plugin_schema: Mapping[str, Any] | None) -> None:
    """Coerce and validate ``[plugin:NAME]`` against the plugin's own schema (plus fault keys)."""
    section = config.data["plugins"].setdefault(plugin, {})
    merged: dict[str, Any] = dict(plugin_schema or {"type": "object"})
    props = dict(merged.get("properties", {}))
    props.setdefault("fault", {"type": "string"})
    props.setdefault("fault_delay_s", {"type": "number", "minimum": 0})
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
