"""drhost: upgrade a disaster-recovery product across a fleet of hosts, through isolated plugins.

The public surface is the ``drhost`` command (see docs/operator-guide.md); plugin
authors depend on ``drhost_hookspecs`` only.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
