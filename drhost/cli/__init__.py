"""The ``drhost`` command line."""

import sys

from ._main import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
