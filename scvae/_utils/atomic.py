"""Write a folder of files so that a crash or a kill never leaves a half-written folder.

The files are written and fsynced in a temporary folder beside the target, which is then
renamed into place. An existing folder is replaced by swapping the two in one step where the
operating system offers it (Linux ``renameat2(RENAME_EXCHANGE)``); elsewhere the old folder is
renamed aside first, which leaves a short window in which ``path`` does not exist (the old
folder is then found beside it, see :func:`interrupted_saves`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["interrupted_saves", "write_file", "write_folder"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def write_folder(path: Path, files: Mapping[str, bytes]) -> None:
    """Make ``path`` a folder holding exactly ``files`` (name -> content), atomically.

    ``path`` must not exist, or be a folder the caller has decided may be replaced (an empty
    one, or one it checked). If the process dies at any point, ``path`` holds either the old
    folder or the new one, never a mixture; a temporary ``.<name>.saving-*`` folder may be
    left beside it.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, "saving")
    tmp.mkdir()
    try:
        for name, content in files.items():
            with open(tmp / name, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        _move_into_place(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _beside(path: Path, kind: str) -> Path:
    """A new name beside ``path`` for a temporary file or folder (``.<name>.<kind>-*``).

    Not :mod:`tempfile`'s, which makes them private (0o600, 0o700) whatever the umask: what
    is saved gets the permissions of any new file or folder, so that others can load it.
    """
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}"


def interrupted_saves(path: Path) -> list[Path]:
    """Folders an interrupted replacement of ``path`` left beside it (newest first)."""
    path = Path(path).absolute()
    found = path.parent.glob(f".{path.name}.old-*") if path.parent.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _move_into_place(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    if not any(path.iterdir()):
        os.replace(tmp, path)  # POSIX: an empty folder is replaced in one step
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp)  # now holds the old folder
        return
    aside = _beside(path, "old")
    aside.mkdir()
    os.replace(path, aside)
    os.rename(tmp, path)
    shutil.rmtree(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        logger.debug("renameat2 exchange not available here (%s)", os.strerror(code))
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(path: Path) -> None:
    """Persist a folder's entries (names) too, not only the files' contents."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, content: bytes) -> None:
    """Replace the file ``path`` by ``content`` in one step (temporary file, fsync, rename)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, "saving")
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
