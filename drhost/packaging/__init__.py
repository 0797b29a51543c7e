"""Build, read and verify drproduct packages (`drproduct-<V>.tar.gz`)."""

from drhost.packaging.build import PRODUCT_DIR, build_package, known_versions
from drhost.packaging.manifest import (
    DEFAULT_MAX_UNPACKED_BYTES,
    Package,
    PackageError,
    check_product,
    read_package,
)
from drhost.packaging.verify import verify_payload

__all__ = [
    "DEFAULT_MAX_UNPACKED_BYTES",
    "PRODUCT_DIR",
    "Package",
    "PackageError",
    "build_package",
    "check_product",
    "known_versions",
    "read_package",
    "verify_payload",
]
