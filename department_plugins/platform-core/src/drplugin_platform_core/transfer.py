"""Transfer stage: the package onto the target, checksummed, and unpacked into staging."""

from __future__ import annotations

import json
import posixpath

from drhost_hookspecs import Context, StepFailed

from . import _target as t


def _sha256(ctx: Context, file: str) -> str:
    return ctx.run(["sha256sum", "--", file]).stdout.split()[0]


def upload_package(ctx: Context) -> None:
    """Package copied to the target and its sha256 checked there."""
    remote = ctx.package.remote_path
    # A package already there with the right checksum (an earlier attempt) is not sent again.
    if ctx.exists(remote) and _sha256(ctx, remote) == ctx.package.sha256:
        ctx.log(f"package already on target at {remote}")
        return
    ctx.run(["mkdir", "-p", posixpath.dirname(remote)])
    ctx.put(ctx.package.local_path, remote)
    found = _sha256(ctx, remote)
    if found != ctx.package.sha256:
        ctx.remove(remote)
        raise StepFailed(f"uploaded package {remote} has sha256 {found}, expected {ctx.package.sha256}")
    ctx.progress(ctx.package.size, ctx.package.size, "bytes")


def remove_package(ctx: Context) -> None:
    """The package and what an interrupted upload left of it (``.part``, kept for a resume) are removed."""
    ctx.remove(ctx.package.remote_path + ".part")
    ctx.remove(ctx.package.remote_path)


def verify_tree(ctx: Context, directory: str, files: list[dict[str, object]]) -> list[str]:
    """Compare every manifest entry with the unpacked file; return the problems."""
    if not files:
        return ["manifest lists no files"]
    paths = [str(entry["path"]) for entry in files]
    missing = [p for p in paths if not ctx.exists(posixpath.join(directory, p))]
    if missing:
        return [f"missing after unpack: {', '.join(missing[:10])}"]
    output = ctx.run(["sha256sum", "--", *paths], cwd=directory).stdout
    found = {}
    for line in output.splitlines():
        digest, _, name = line.partition("  ")
        found[name.strip()] = digest
    return [
        f"{entry['path']}: sha256 {found.get(str(entry['path']))}, manifest {entry['sha256']}"
        for entry in files
        if found.get(str(entry["path"])) != entry["sha256"]
    ]


def unpack_package(ctx: Context) -> None:
    """Package unpacked into staging/<V>/, every manifest file checked."""
    final = t.staging_dir(ctx)
    partial = final + ".partial"
    # Unpacked beside the final name and renamed only once verified: a staging
    # directory that exists is always complete.
    ctx.remove(partial, recursive=True)
    ctx.run(["mkdir", "-p", partial])
    # As root GNU tar would take owners, setuid/setgid and world-write bits from the archive: the files belong
    # to the user that unpacks instead, and modes are the manifest's within rwxr-xr-x, whatever the umask.
    ctx.run(["sh", "-c", 'umask 022 && exec tar --no-same-owner --no-same-permissions -xzf "$1" -C "$2"', "sh",
             ctx.package.remote_path, partial])
    ctx.run(["chmod", "-R", "a-st,go-w", "--", partial])
    odd = ctx.run(["find", partial, "!", "-type", "f", "!", "-type", "d"]).stdout.strip()
    if odd:
        # The controller refuses such packages; one here means the archive is not the verified one.
        raise StepFailed(f"package {ctx.package.remote_path} unpacked entries that are neither files nor "
                         f"directories: {odd.splitlines()[0]!r}", retryable=False)
    manifest_file = posixpath.join(partial, "manifest.json")
    if not ctx.exists(manifest_file):
        raise StepFailed(f"package {ctx.package.remote_path} has no manifest.json", retryable=False)
    manifest = json.loads(ctx.read_text(manifest_file))
    if manifest.get("version") != ctx.package.version:
        raise StepFailed(
            f"package manifest says version {manifest.get('version')}, expected {ctx.package.version}", retryable=False
        )
    files = list(manifest.get("files") or [])
    problems = verify_tree(ctx, partial, files)
    if problems:
        raise StepFailed("unpacked package does not match its manifest: " + "; ".join(problems[:5]))
    ctx.remove(final, recursive=True)
    ctx.run(["mv", "-T", partial, final])
    ctx.log(f"package {ctx.package.version} unpacked to {final}, {len(files)} files verified")


def remove_staging(ctx: Context) -> None:
    ctx.remove(t.staging_dir(ctx) + ".partial", recursive=True)
    ctx.remove(t.staging_dir(ctx), recursive=True)
