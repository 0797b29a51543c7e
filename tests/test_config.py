"""Configuration: defaults, INI and JSON files, --set overrides, and errors that point at the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from drhost.config import load_config, validate_plugin_section
from drhost.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_carry_the_design_class_table() -> None:
    """The built-in class policies are the design's table: limits, retries, interval, action."""
    classes = load_config().data["classes"]
    assert (classes["core"]["memory_mb"], classes["core"]["cpu_percent"], classes["core"]["retries"],
            classes["core"]["retry_interval_s"], classes["core"]["on_failure"]) == (512, 50, 3, 10, "abort")
    assert (classes["business"]["memory_mb"], classes["business"]["retries"],
            classes["business"]["on_failure"]) == (256, 2, "skip_plugin")
    assert (classes["third_party"]["memory_mb"], classes["third_party"]["retries"],
            classes["third_party"]["retry_interval_s"], classes["third_party"]["on_failure"]) == (128, 1, 0, "continue")
    assert (classes["database"]["memory_mb"], classes["database"]["on_failure"]) == (1024, "abort")


def test_defaults_carry_the_heartbeat_table() -> None:
    """The SSH heartbeat table of the design is in the defaults, per connection type."""
    ssh = load_config().data["ssh"]
    assert [(ssh[t]["heartbeat_s"], ssh[t]["dead_after_s"], ssh[t]["reconnects"])
            for t in ("control", "transfer", "plugin_exec", "status_check")] == [
        (60, 180, 3), (30, 120, 2), (45, 150, 1), (90, 300, 0)]


def test_ini_sections_map_and_values_are_typed(tmp_path: Path) -> None:
    """INI values become the schema's types; named sections land under their name."""
    ini = write(tmp_path / "ops.ini", "[run]\nforks = 7\n[class:core]\nretries = 1\nretry_interval_s = 2.5\n"
                                      "[target:a]\ntransport = local\nroot = /opt/a\n"
                                      "[timeouts]\nupgrade.install_program_files = 90\n")
    data = load_config([ini]).data
    assert data["run"]["forks"] == 7
    assert data["classes"]["core"]["retries"] == 1 and data["classes"]["core"]["retry_interval_s"] == 2.5
    assert data["targets"]["a"] == {"transport": "local", "root": "/opt/a"}
    assert data["timeouts"]["upgrade.install_program_files"] == 90.0


def test_set_overrides_win_over_files(tmp_path: Path) -> None:
    """--set is applied after the files."""
    ini = write(tmp_path / "ops.ini", "[class:business]\nretries = 4\n")
    data = load_config([ini], ["class.business.retries=0", "plugin.dr-core.fault=stop_services:fail"]).data
    assert data["classes"]["business"]["retries"] == 0
    assert data["plugins"]["dr-core"]["fault"] == "stop_services:fail"


def test_bad_type_names_file_section_key_expected_and_found(tmp_path: Path) -> None:
    """A wrong value names the file, the section, the key, what was expected and what was found."""
    ini = write(tmp_path / "ops.ini", "[class:core]\nretries = three\n")
    with pytest.raises(ConfigError) as info:
        load_config([ini])
    assert str(info.value) == f"{ini}: [class:core] retries: expected an integer from 0 to 100, found 'three'"


def test_out_of_range_value_is_refused_with_its_origin(tmp_path: Path) -> None:
    """A schema violation found after merging still names where the value came from."""
    ini = write(tmp_path / "ops.ini", "[class:business]\ncpu_percent = 250\n")
    with pytest.raises(ConfigError) as info:
        load_config([ini])
    assert f"{ini}: [class:business] cpu_percent" in str(info.value)
    assert "from 1 to 100" in str(info.value) and "250" in str(info.value)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    """A misspelt key is an error naming the key and the keys that exist."""
    ini = write(tmp_path / "ops.ini", "[class:core]\nretrys = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config([ini])
    assert "[class:core] retrys" in str(info.value) and "retries" in str(info.value)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    """An unknown INI section is an error listing the known ones."""
    ini = write(tmp_path / "ops.ini", "[clas:core]\nretries = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config([ini])
    assert "[clas:core]" in str(info.value) and "[class:NAME]" in str(info.value)


def test_bad_set_syntax_is_explained() -> None:
    """--set without SECTION.KEY=VALUE shape says what shape it needs."""
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["retries=3"])
    assert "--set" in str(info.value) and "SECTION.KEY=VALUE" in str(info.value)


def test_enum_value_lists_choices() -> None:
    """An enum setting lists its allowed values."""
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["run.on_failure=maybe"])
    assert "ask, retry, rollback, abort" in str(info.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A config file that does not exist is named."""
    with pytest.raises(ConfigError) as info:
        load_config([tmp_path / "nope.ini"])
    assert "nope.ini" in str(info.value) and "no such file" in str(info.value)


def test_broken_json_file_is_reported_with_line(tmp_path: Path) -> None:
    """Invalid JSON names the file and the line."""
    bad = write(tmp_path / "c.json", '{"run": {"forks": 3,}}')
    with pytest.raises(ConfigError) as info:
        load_config([bad])
    assert "c.json" in str(info.value) and "line 1" in str(info.value)


def test_plugin_section_is_validated_against_the_plugin_schema() -> None:
    """A plugin's own keys are typed and checked by the schema the plugin declares."""
    config = load_config(overrides=["plugin.p.delay=abc"])
    schema = {"type": "object", "properties": {"delay": {"type": "number"}}, "additionalProperties": False}
    with pytest.raises(ConfigError) as info:
        validate_plugin_section(config, "p", schema)
    assert "--set: plugin.p.delay" in str(info.value) or "p" in str(info.value)
    config = load_config(overrides=["plugin.p.delay=2"])
    validate_plugin_section(config, "p", schema)
    assert config.data["plugins"]["p"]["delay"] == 2.0


def test_fault_setting_is_checked() -> None:
    """A malformed fault setting is refused before the run with the allowed kinds."""
    config = load_config(overrides=["plugin.p.fault=stop_services:explode"])
    with pytest.raises(ConfigError) as info:
        validate_plugin_section(config, "p", None)
    assert "fail, hang, crash, oom, slow, remote_hang" in str(info.value)
