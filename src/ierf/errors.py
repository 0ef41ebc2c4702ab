"""Errors that tell the user what to do instead."""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class IerfError(ValueError):
    """Base class of the errors ierf raises for bad input."""


class UnknownNameError(IerfError, KeyError):
    """A model, layer, method or class name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsUnavailableError(IerfError, RuntimeError):
    """Pretrained weights could not be fetched (e.g. no network)."""


def unknown_name(kind: str, name: object, valid: Iterable[str], limit: int = 40) -> UnknownNameError:
    """Build an :class:`UnknownNameError` listing close matches and the valid names."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(valid[:limit]) + (f", … ({len(valid) - limit} more)" if len(valid) > limit else "")
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {shown}")


class StorageError(IerfError):
    """A file could not be read or written: permissions, a full disk, a damaged file."""


#: what to do, by errno
_ERRNO_HINTS = {errno.ENOSPC: "the disk is full: free space, then re-run the same command to "
                              "resume",
                errno.EDQUOT: "the disk quota is exceeded: free space, then re-run the same "
                              "command to resume",
                errno.EACCES: "permission denied: fix the permissions or choose another path",
                errno.EPERM: "permission denied: fix the permissions or choose another path",
                errno.EROFS: "the file system is read-only: choose a writable path"}


def storage_error(e: BaseException, path: object | None = None) -> StorageError:
    """A one-line :class:`StorageError` for ``e`` naming ``path`` (or the path ``e`` names)
    and saying what to do."""
    where = path if path is not None else getattr(e, "filename", None)
    code = getattr(e, "errno", None)
    if code is None and "disk is full" in str(e):
        code = errno.ENOSPC
    if code is None and "readonly database" in str(e):
        code = errno.EROFS
    reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    hint = _ERRNO_HINTS.get(code, f"{reason}; check the file and the disk")
    prefix = f"{str(where)!r}: " if where is not None else ""
    return StorageError(f"{prefix}{hint}")


def require_finite(t: object, what: str, hint: str) -> None:
    """Refuse a tensor with NaN or Inf entries, saying how many and what to do."""
    import torch

    if isinstance(t, torch.Tensor) and t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bad.any():
            raise IerfError(f"{what} holds {int(bad.sum())} NaN/Inf value(s) of {t.numel()}; "
                            f"{hint}")


def environment_error(e: BaseException) -> IerfError | None:
    """A one-line error for a storage or environment failure that reached the command line
    unwrapped (an ``OSError``, an SQLite, safetensors or JSON decoding error, PIL's
    decompression bomb); ``None`` for anything else (a bug keeps its traceback)."""
    import json
    import sqlite3

    if isinstance(e, (OSError, sqlite3.Error)):
        return storage_error(e)
    if isinstance(e, json.JSONDecodeError):
        return StorageError(f"a file holds invalid JSON ({e}); restore or regenerate it")
    if type(e).__name__ in ("SafetensorError", "DecompressionBombError"):
        return StorageError(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    return None
