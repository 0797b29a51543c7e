"""drproduct-license: show or (re)issue the licence in R/etc/license.lic."""
from __future__ import annotations

import datetime
import hashlib
import json
import os

from .common import PRODUCT, Failure, Parser, Root, UsageError, emit, run_tool, write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# A demo product: the secret only has to make hand-edited licences detectable, not be secret.
_SECRET = "drproduct-demo-licence-secret-v1"
SERIES = ("1.x", "2.x")
FIELDS = ("product", "licensee", "series", "issued")


def signature(lic: dict[str, Any]) -> str:
    body = {k: v for k, v in lic.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((canonical + _SECRET).encode("utf-8")).hexdigest()


def load(root: Root) -> dict[str, Any] | None:
    """The licence as stored, or None when there is none; Failure when it is not JSON."""
    if not os.path.exists(root.license_path):
        return None
    try:
        with open(root.license_path, encoding="utf-8") as fh:
            lic = json.load(fh)
    except (OSError, ValueError) as exc:
        raise Failure(f"{root.license_path}: not a readable JSON licence ({exc})") from None
    if not isinstance(lic, dict):
        raise Failure(f"{root.license_path}: expected a JSON object")
    return lic


def problems_for(lic: dict[str, Any] | None, series: str, path: str) -> list[str]:
    """Why this licence does not allow running a release of `series` (empty list: it does)."""
    if lic is None:
        return [f"licence missing: {path}"]
    found = []
    missing = [f for f in (*FIELDS, "signature") if f not in lic]
    if missing:
        found.append("licence {}: missing field(s) {}".format(path, ", ".join(missing)))
    if lic.get("product") != PRODUCT:
        found.append("licence is for product {!r}, expected {!r}".format(lic.get("product"), PRODUCT))
    if lic.get("signature") != signature(lic):
        found.append(f"licence signature invalid: {path} was modified after it was issued")
    if lic.get("series") != series:
        found.append("licence series {} does not cover this release (needs {})".format(lic.get("series"), series))
    return found


def _main(argv: list[str], release_dir: str) -> int:
    parser = Parser(prog="drproduct-license")
    parser.add_argument("--root", required=True)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show")
    issue = sub.add_parser("issue")
    issue.add_argument("--series", required=True)
    issue.add_argument("--licensee", help="only needed when there is no licence yet")
    args = parser.parse_args(argv)
    root = Root(args.root)
    lic = load(root)
    if args.cmd == "show":
        if lic is None:
            raise Failure(f"no licence at {root.license_path}")
        sig_ok = lic.get("signature") == signature(lic) and lic.get("product") == PRODUCT
        emit(dict(lic, valid=sig_ok))
        return 0 if sig_ok else 1
    if args.series not in SERIES:
        raise UsageError("--series: expected one of {}, found {!r}".format(", ".join(SERIES), args.series))
    licensee = args.licensee or (lic or {}).get("licensee")
    if not licensee:
        raise UsageError("no licence to take the licensee from: pass --licensee")
    issued = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    new = {"product": PRODUCT, "licensee": licensee, "series": args.series, "issued": issued}
    new["signature"] = signature(new)
    write_atomic(root.license_path, (json.dumps(new, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    emit(dict(new, valid=True))
    return 0


def main(argv: list[str], release_dir: str) -> int:
    return run_tool("drproduct-license", _main, argv, release_dir)
