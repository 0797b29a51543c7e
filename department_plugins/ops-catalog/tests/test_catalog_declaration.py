"""dr-catalog declares itself and its steps as the host expects."""

from plugin_harness import check_declaration


def test_declaration() -> None:
    """dr-catalog is a business plugin of operations; every step has a timeout key; non-retryable ones compensate."""
    check_declaration("dr-catalog", "operations", "business")
