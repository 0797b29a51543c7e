"""Backup stage: one archive of the running release and ``etc/``, and restores from it."""

from __future__ import annotations

import posixpath

from drhost_hookspecs import Context, StepFailed

from . import _target as t

ARCHIVE_NAME = "program-files.tar.gz"


def _sha256(ctx: Context, file: str) -> str:
    return ctx.run(["sha256sum", "--", file]).stdout.split()[0]


def backup_program_files(ctx: Context) -> None:
    """Archive of the running release and etc/ in the run's backup directory, sha256 recorded."""
    old = t.require_old_version(ctx)
    directory = t.backup_dir(ctx)
    archive = posixpath.join(directory, ARCHIVE_NAME)
    partial = archive + ".partial"
    ctx.run(["mkdir", "-p", directory])
    # Written under a temporary name, so a crash never leaves a truncated archive
    # that a later restore would trust.
    ctx.remove(partial)
    ctx.run(["tar", "-czf", partial, "-C", t.root(ctx), posixpath.join("releases", old), "etc"])
    ctx.run(["mv", "-f", partial, archive])
    digest = _sha256(ctx, archive)
    ctx.state[t.PROGRAM_BACKUP] = {"path": archive, "sha256": digest, "release": old}
    ctx.log(f"program files of {old} and etc/ saved to {archive} (sha256 {digest[:12]})")


def remove_program_backup(ctx: Context) -> None:
    """The backup stage rolled back: its archive (also a partial one) goes, and the run's backup directory when
    nothing else is left in it."""
    directory = t.backup_dir(ctx)
    archive = posixpath.join(directory, ARCHIVE_NAME)
    for file in (archive, archive + ".partial"):
        ctx.remove(file)
    ctx.state.pop(t.PROGRAM_BACKUP, None)
    ctx.run(["rmdir", "--ignore-fail-on-non-empty", "--", directory], check=False)


def restore_member(ctx: Context, member: str) -> bool:
    """Put ``member`` (e.g. ``etc/license.lic``) back from the backup archive.

    Returns False when there is no backup to restore from. The file is extracted
    next to the archive and renamed into place, so readers never see half a file.
    """
    backup = ctx.state.get(t.PROGRAM_BACKUP)
    if not isinstance(backup, dict) or not ctx.exists(str(backup.get("path", ""))):
        return False
    archive = str(backup["path"])
    found = _sha256(ctx, archive)
    if found != backup.get("sha256"):
        raise StepFailed(
            f"backup {archive} is damaged: sha256 {found}, recorded {backup.get('sha256')}", retryable=False
        )
    scratch = posixpath.join(posixpath.dirname(archive), "restore")
    ctx.remove(scratch, recursive=True)
    ctx.run(["mkdir", "-p", scratch])
    ctx.run(["tar", "-xzf", archive, "-C", scratch, member])
    destination = t.path(ctx, member)
    ctx.run(["mkdir", "-p", posixpath.dirname(destination)])
    ctx.run(["mv", "-f", posixpath.join(scratch, member), destination])
    ctx.remove(scratch, recursive=True)
    return True
