"""dr-database declares itself and its steps as the host expects."""

from plugin_harness import check_declaration


def test_declaration() -> None:
    """dr-database is a database plugin of dba; every step has a timeout key; non-retryable ones compensate."""
    check_declaration("dr-database", "dba", "database")
