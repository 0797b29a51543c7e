"""Paths of a drproduct install root and of the monitoring config, seen from the vendor plugin."""

from __future__ import annotations

import configparser
import posixpath

from drhost_hookspecs import Context

#: Keys this plugin keeps in ``ctx.state``.
CONFIG_BEFORE = "config_before"
DIR_EXISTED = "monitoring_dir_existed"
LATENCY_MS = "health_latency_ms"


def root(ctx: Context) -> str:
    return ctx.target.install_root.rstrip("/") or "/"


def path(ctx: Context, *parts: str) -> str:
    return posixpath.join(root(ctx), *parts)


def monitoring_dir(ctx: Context) -> str:
    return path(ctx, str(ctx.config.get("config_dir", "etc/monitoring")))


def monitoring_file(ctx: Context) -> str:
    return posixpath.join(monitoring_dir(ctx), "drproduct.json")


def ctl(ctx: Context) -> list[str]:
    return [path(ctx, "current", "bin", "drproductctl"), "--root", root(ctx)]


def health_url(ctx: Context) -> str:
    """The daemon's /health, from the host and port in the product's own ini."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(ctx.read_text(path(ctx, "etc", "drproduct.ini")))
    host = parser.get("service", "host", fallback="127.0.0.1")
    port = parser.getint("service", "port")
    return f"http://{host}:{port}/health"
