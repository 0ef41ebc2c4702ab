"""Content hashes of stored files, checked on read once per file and process.

A store records the SHA-256 and size of every file it commits (an atlas shard, a concept
basis' tensors). Reading checks the file against them the first time this process touches
it; later reads of the same, unchanged file (same inode, size and modification time) skip
the hash. A missing, truncated or altered file is refused with a
:class:`CorruptFileError` naming it and what to do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ierf.errors import IerfError, storage_error

#: files whose hash this process has checked: (path, sha256, inode, size, mtime)
_CHECKED: set[tuple[str, str, int, int, int]] = set()


class CorruptFileError(IerfError):
    """A stored file is missing, truncated or differs from what its store recorded."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise storage_error(e, path) from None
    return h.hexdigest()


def file_problem(path: str | Path, sha256: str | None, size: int | None,
                 recheck: bool = False) -> str | None:
    """What is wrong with ``path`` against the recorded hash and size (``None``: nothing,
    or nothing recorded); hashes only files not yet checked by this process, unless
    ``recheck``."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise storage_error(e, path) from None
    if size is not None and st.st_size != size:
        return f"truncated or altered ({st.st_size} bytes, {size} recorded)"
    if sha256 is None:
        return None
    key = (str(path.resolve()), sha256, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _CHECKED and not recheck:
        return None
    if sha256_file(path) != sha256:
        return "altered (its content hash differs from the recorded one)"
    _CHECKED.add(key)
    return None


def check_file(path: str | Path, sha256: str | None, size: int | None, hint: str) -> None:
    """Raise :class:`CorruptFileError` (naming ``path``, then ``hint``) if
    :func:`file_problem` finds something."""
    problem = file_problem(path, sha256, size)
    if problem is not None:
        raise CorruptFileError(f"{str(path)!r} is {problem}; {hint}")
