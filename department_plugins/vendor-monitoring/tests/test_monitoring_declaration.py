"""dr-monitoring declares itself and its steps as the host expects."""

from plugin_harness import check_declaration


def test_declaration() -> None:
    """dr-monitoring is a third_party plugin of vendor-monitoring; every step has a timeout key."""
    check_declaration("dr-monitoring", "vendor-monitoring", "third_party")
