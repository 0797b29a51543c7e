"""``--out FILE`` of the commands that write one file (report, plugins lock): checked before anything is written."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError, phrase, quote


def output_file(value: str, option: str = "--out", *, create_parents: bool = False) -> Path:
    """``value`` as a file to (re)write in a directory that exists (or, with ``create_parents``, that can be
    created: nothing on the way is a file), or :class:`UsageError` naming the option.

    Checked before the work, so that a bad path leaves nothing behind: no directory created on the way, not even
    the temporary file an atomic write starts with.
    """
    def refuse(why: str) -> UsageError:
        return UsageError.worded("{option} {value}: expected a file in an existing directory; {why}", option=option,
                                 value=quote(value), why=why, init={"argument": option, "value": value})

    if not value.strip():
        raise refuse(phrase("found an empty path"))
    out = Path(value).expanduser()
    try:
        if out.is_dir():
            raise refuse(phrase("it is a directory (name a file in it)"))
        if out.is_symlink() or (out.exists() and not out.is_file()):
            raise refuse(phrase("it exists and is not a regular file"))
        parent = out.absolute().parent
        if create_parents:
            parent = next(p for p in (parent, *parent.parents) if p.exists())
        if not parent.is_dir():
            raise refuse(phrase("{path} is not a directory", path=quote(str(parent))) if parent.exists() else
                         phrase("the directory {path} does not exist", path=quote(str(parent))))
    except OSError as exc:  # ENAMETOOLONG, EACCES, ELOOP
        raise refuse(exc.strerror or str(exc)) from None
    return out
