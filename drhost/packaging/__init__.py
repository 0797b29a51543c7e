"""Build, read and verify drproduct packages (`drproduct-<V>.tar.gz`)."""

from drhost.packaging.build import PRODUCT_DIR, build_package, known_versions
from drhost.packaging.manifest import Package, PackageError, read_package, verify_payload

__all__ = [
    "PRODUCT_DIR",
    "Package",
    "PackageError",
    "build_package",
    "known_versions",
    "read_package",
    "verify_payload",
]
