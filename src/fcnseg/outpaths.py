"""Output paths checked before the long work, so a run never ends by losing its result.

``fcnseg train`` / ``eval`` / ``export`` call these at start-up: an output under an
existing *file*, in a folder the user may not write, or on a read-only file system is
a one-line :class:`~fcnseg.errors.UserError` naming the option, before minutes of work.
Nothing is created here.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UserError


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _why_not_writable(folder: Path) -> str | None:
    """Why files cannot be created in the existing ``folder`` (None if they can)."""
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:  # access() says "read-only file system" as EROFS; tell it from permissions
        ro = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        ro = False
    return f"{folder} is on a read-only file system" if ro else f"{folder} is not writable (permission denied)"


def check_output_dir(path: str | Path, option: str) -> Path:
    """``path`` can be (or already is) a folder this process can write files into."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file; expected a folder")
    why = _why_not_writable(_nearest_existing(path.absolute()))
    if why:
        raise UserError(f"{option} {path}: cannot write there ({why})")
    return path


def check_output_file(path: str | Path, option: str) -> Path:
    """``path`` can be written as a file (its folder exists or can be created)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: cannot write there ({path} is not writable)")
    why = _why_not_writable(_nearest_existing(path.absolute().parent))
    if why:
        raise UserError(f"{option} {path}: cannot write there ({why})")
    return path


def os_error_line(exc: OSError, path: str | Path, option: str = "") -> UserError:
    """An OSError met while writing ``path`` as a one-line :class:`UserError`."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        reason = "read-only file system"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = "a part of the path is a file, not a folder"
    prefix = f"{option} " if option else ""
    return UserError(f"{prefix}{path}: cannot write ({reason})")


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
