"""Resumable SQLite stores: settings fixed when a store is created, checked on every reopen.

A long run (an atlas build, a benchmark table, a concept graph) keeps its progress in an
SQLite file whose ``meta`` table holds the settings that determine the results (one row per
key, JSON values). Re-running the same command resumes; a run with other settings is refused
with a :class:`ConfigMismatchError` that lists what differs and says what to do. Writes go
through :func:`transaction`, so an interrupted run leaves only whole units of work behind.

:class:`ResumableStore` is the one-writer store built from these parts: it holds a writer
lock (:mod:`ierf.lock`) while open, so that a second run on the same file is refused at once.
The atlas manifest (:mod:`ierf.atlas.store`), whose ranks share one file, uses the parts
directly; its readers open it read-only (:func:`connect` with ``readonly=True``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, TypeVar

from typing_extensions import Self

from ierf.errors import IerfError, storage_error
from ierf.lock import WriterLock

#: seconds a writer waits for another one's transaction (many ranks commit to one file)
BUSY_TIMEOUT_S = 120.0
S = TypeVar("S", bound="ResumableStore")
META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


class ConfigMismatchError(IerfError):
    """A store holds the work of a run with other settings."""


def connect(path: str | Path, wal: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """Open (or create) the SQLite file ``path`` in autocommit mode with a busy timeout.

    Transactions are explicit (:func:`transaction`). ``wal=True`` switches the file to WAL
    mode (``synchronous=NORMAL``), for several writers and readers at once. ``readonly=True``
    opens an existing file for reading only (SQLite ``mode=ro``; ``immutable=1`` where even
    that cannot open it, e.g. in a read-only folder) and never changes it.

    Raises
    ------
    IerfError : the file is no SQLite database, is damaged, or cannot be opened (one line,
        naming the file).
    """
    path = Path(path)
    try:
        if readonly:
            return _connect_readonly(path)
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute("PRAGMA schema_version")  # a file that is no database fails here
            if wal:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            con.close()
            raise
        return con
    except sqlite3.DatabaseError as e:
        raise database_error(e, path) from None


def _connect_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise IerfError(f"no such file {str(path)!r}")
    uri = path.resolve().as_uri()
    for mode in ("mode=ro", "immutable=1"):
        con = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=BUSY_TIMEOUT_S,
                              isolation_level=None)
        try:
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.OperationalError:
            con.close()
            if mode == "immutable=1":
                raise
        except BaseException:
            con.close()
            raise
    raise AssertionError("unreachable")


def database_error(e: sqlite3.Error, path: str | Path | None) -> IerfError:
    """A one-line error for an SQLite failure on ``path``, saying what to do."""
    text = str(e)
    if "not a database" in text or "malformed" in text:
        return IerfError(f"{str(path)!r} is not an SQLite database or is damaged ({text}); "
                         "restore it from a copy, or remove it and re-run to start afresh")
    return storage_error(e, path)


def database_file(con: sqlite3.Connection) -> str | None:
    """The file behind connection ``con`` (for error messages)."""
    try:
        return con.execute("PRAGMA database_list").fetchone()[2] or None
    except sqlite3.Error:
        return None


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if the block raises (or is interrupted).

    SQLite failures of the environment (disk full, read-only file, locked for too long) are
    raised as one-line :class:`IerfError` naming the file; constraint errors stay as they are.
    """
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if con.in_transaction:  # a failed COMMIT (e.g. disk full) may leave it open
            con.execute("ROLLBACK")
        raise database_error(e, database_file(con)) from None


def as_stored(settings: Mapping[str, object]) -> dict[str, object]:
    """``settings`` as they read back from the store (JSON values: tuples become lists, …)."""
    return json.loads(json.dumps(dict(settings)))


def read_settings(con: sqlite3.Connection) -> dict[str, object]:
    """The stored settings (empty for a new store)."""
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}


def write_settings(con: sqlite3.Connection, settings: Mapping[str, object]) -> None:
    """Store ``settings`` (call inside the transaction that creates the store)."""
    con.executemany("INSERT INTO meta VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in settings.items()])


def differences(stored: Mapping[str, object], wanted: Mapping[str, object],
                volatile: Sequence[str] = (), derived: Sequence[str] = ()) -> list[str]:
    """Readable ``"key: stored X, now Y"`` lines for the settings that differ.

    ``volatile`` keys (e.g. a creation time) are ignored; ``derived`` keys (values that follow
    from others) are reported only when nothing else differs.
    """
    keys = sorted(k for k in stored.keys() | wanted.keys()
                  if k not in volatile and stored.get(k) != wanted.get(k))
    keys = [k for k in keys if k not in derived] or keys
    return [f"{k}: stored {_short(stored.get(k))}, now {_short(wanted.get(k))}" for k in keys]


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


class ResumableStore:
    """An SQLite file holding the work of one run, created with its settings or reopened.

    Subclasses name their tables (``schema``) and word the refusal (``holds``: what the file
    holds when the settings differ, ``hint``: what to do). Opening checks the settings in the
    same transaction that would create the store, so two runs cannot both create it.

    Parameters
    ----------
    path : the SQLite file (its folder is created).
    settings : JSON-able settings that determine the results; must equal the stored ones
        (``volatile`` keys aside) when the file exists.
    lock : hold the store's writer lock (:class:`~ierf.lock.WriterLock`) while open, so that
        a second run is refused at once; ``False`` for the ranks > 0 of a ``torchrun`` job
        whose rank 0 holds it.
    """

    schema: ClassVar[str] = ""
    wal: ClassVar[bool] = False
    volatile: ClassVar[tuple[str, ...]] = ()
    derived: ClassVar[tuple[str, ...]] = ()
    holds: ClassVar[str] = "the work of a run with other settings"
    hint: ClassVar[str] = "re-run with the same options to resume, or choose another output"

    def __init__(self, path: str | Path, settings: Mapping[str, object],
                 lock: bool = True) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, self.path.parent) from None
        self._lock = WriterLock(self.path).acquire() if lock else None
        try:
            self.con = connect(self.path, wal=self.wal)
        except BaseException:
            self._release()
            raise
        try:
            self.con.executescript(META_SCHEMA + self.schema)
            wanted = as_stored(settings)
            with transaction(self.con):
                stored = read_settings(self.con)
                if not stored:
                    write_settings(self.con, wanted)
                    self._create()
                elif changes := self._differences(stored, wanted):
                    raise ConfigMismatchError(f"{str(self.path)!r} holds {self.holds} "
                                              f"({'; '.join(changes)}); {self.hint}")
            self.settings = stored or wanted
        except sqlite3.OperationalError as e:
            self.close()
            raise database_error(e, self.path) from None
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        """Fill a new store, inside the transaction that stores its settings."""

    def _differences(self, stored: dict[str, object], wanted: dict[str, object]) -> list[str]:
        """What differs between the stored and the wanted run (empty: the same run)."""
        return differences(stored, wanted, self.volatile, self.derived)

    def close(self) -> None:
        self.con.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
