"""Configuration: built-in JSON defaults, ops INI/JSON files and ``--set``, validated by jsonschema."""

from ._loader import (
    ConfigProblems,
    LoadedConfig,
    defaults,
    load_config,
    parse_override,
    read_config_text,
    schema,
    validate,
    validate_plugin_section,
)

__all__ = [
    "ConfigProblems",
    "LoadedConfig",
    "defaults",
    "load_config",
    "parse_override",
    "read_config_text",
    "schema",
    "validate",
    "validate_plugin_section",
]
