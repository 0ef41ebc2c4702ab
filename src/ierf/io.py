"""Writing files so that a crash never leaves a half-written one behind, and checking a
folder is writable before the work whose results go there."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ierf.errors import storage_error


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp makes 0600 (and some writers recreate the file): give the usual permissions
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) and check a file can be written in it, before any
    long work whose result would go there.

    Raises
    ------
    StorageError : one line naming the folder and what to do (permission, read-only, full).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ierf-write-check.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise storage_error(e, folder) from None
    return folder
