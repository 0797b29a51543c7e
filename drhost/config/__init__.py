"""Configuration: built-in JSON defaults, ops INI/JSON files and ``--set``, validated by jsonschema."""

from ._loader import LoadedConfig, defaults, load_config, parse_override, schema, validate_plugin_section

__all__ = ["LoadedConfig", "defaults", "load_config", "parse_override", "schema", "validate_plugin_section"]
