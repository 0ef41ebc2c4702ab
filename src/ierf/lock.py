"""One writer per store: an advisory lock on a file beside it, naming its holder.

A store that a long run writes into (an atlas folder, a results file, a graph build) is
locked with ``flock`` on ``.<name>.lock`` next to it for as long as the run writes. A second
run is refused at once with the holder's PID and host. The kernel drops the lock when its
process dies, so a killed run never leaves a stale lock behind. The lock is re-entrant
within one process (the build takes it, then the steps it calls take it again); the ranks of
one ``torchrun`` job are one writer: rank 0 holds the lock for all of them.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from ierf.errors import IerfError, storage_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one writer is up to the user
    fcntl = None  # type: ignore[assignment]

#: locks this process holds: lock file → [open file, re-entry count]
_HELD: dict[Path, list] = {}


class StoreBusyError(IerfError):
    """Another process is writing into the store."""


def lock_path(store: str | Path) -> Path:
    """The lock file of ``store`` (a file or a folder's manifest): ``.<name>.lock`` beside it."""
    store = Path(store)
    return store.parent / f".{store.name}.lock"


class WriterLock:
    """Hold the writer lock of ``store`` (``with WriterLock(path): ...``).

    Raises
    ------
    StoreBusyError : another process holds it (its PID and host are in the message).
    """

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = lock_path(self.store).resolve()

    def acquire(self) -> WriterLock:
        held = _HELD.get(self.path)
        if held is not None:
            held[1] += 1
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")  # noqa: SIM115 (kept open while the lock is held)
        except OSError as e:
            raise storage_error(e, self.path) from None
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process (PID not yet written)"
                f.close()
                raise StoreBusyError(
                    f"{str(self.store)!r} is being written by {holder}; wait for that run to "
                    "finish (or stop it), or write somewhere else") from None
            except OSError as e:  # e.g. a file system without locks
                f.close()
                raise storage_error(e, self.path) from None
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} on host {socket.gethostname()} (since {now})\n")
        f.flush()
        _HELD[self.path] = [f, 1]
        return self

    def release(self) -> None:
        held = _HELD.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.path]
            held[0].close()  # closing the file drops the flock

    def __enter__(self) -> WriterLock:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def rank0_lock(store: str | Path) -> Iterator[None]:
    """Hold ``store``'s writer lock on rank 0 for the block (the ranks of a ``torchrun`` job
    are one writer); if another run holds it, every rank raises :class:`StoreBusyError`'s
    message at once (as :class:`IerfError`; without a process group, the error itself)."""
    from ierf.dist import on_rank0

    lock, held = WriterLock(store), []
    on_rank0(lambda: held.append(lock.acquire()))
    try:
        yield
    finally:
        if held:
            lock.release()
