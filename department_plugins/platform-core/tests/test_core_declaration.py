"""dr-core declares itself and its steps as the host expects."""

from plugin_harness import check_declaration


def test_declaration() -> None:
    """dr-core is a core plugin of platform; every step has a timeout key; non-retryable ones compensate."""
    plugin = check_declaration("dr-core", "platform", "core")
    upgrade = {s["name"]: s for s in plugin.describe()["steps"]["upgrade"]}
    assert [n for n, s in upgrade.items() if not s["retryable"]] == [
        "install_program_files", "register_services", "init_core_config", "update_licence"]
