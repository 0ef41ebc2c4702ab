"""Resumable SQLite stores: settings fixed when a store is created, checked on every reopen.

A long run (an atlas build, a benchmark table, a concept graph) keeps its progress in an
SQLite file whose ``meta`` table holds the settings that determine the results (one row per
key, JSON values). Re-running the same command resumes; a run with other settings is refused
with a :class:`ConfigMismatchError` that lists what differs and says what to do. Writes go
through :func:`transaction`, so an interrupted run leaves only whole units of work behind.

:class:`ResumableStore` is the one-writer store built from these parts; the atlas manifest
(:mod:`ierf.atlas.store`), whose ranks share one file, uses the parts directly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, TypeVar

from typing_extensions import Self

from ierf.errors import IerfError

#: seconds a writer waits for another one's transaction (many ranks commit to one file)
BUSY_TIMEOUT_S = 120.0
S = TypeVar("S", bound="ResumableStore")
META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


class ConfigMismatchError(IerfError):
    """A store holds the work of a run with other settings."""


def connect(path: str | Path, wal: bool = False) -> sqlite3.Connection:
    """Open (or create) the SQLite file ``path`` in autocommit mode with a busy timeout.

    Transactions are explicit (:func:`transaction`). ``wal=True`` switches the file to WAL
    mode (``synchronous=NORMAL``), for several writers and readers at once.
    """
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    return con


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if the block raises (or is interrupted)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


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
    """

    schema: ClassVar[str] = ""
    wal: ClassVar[bool] = False
    volatile: ClassVar[tuple[str, ...]] = ()
    derived: ClassVar[tuple[str, ...]] = ()
    holds: ClassVar[str] = "the work of a run with other settings"
    hint: ClassVar[str] = "re-run with the same options to resume, or choose another output"

    def __init__(self, path: str | Path, settings: Mapping[str, object]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = connect(self.path, wal=self.wal)
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
        except BaseException:
            self.con.close()
            raise

    def _create(self) -> None:
        """Fill a new store, inside the transaction that stores its settings."""

    def _differences(self, stored: dict[str, object], wanted: dict[str, object]) -> list[str]:
        """What differs between the stored and the wanted run (empty: the same run)."""
        return differences(stored, wanted, self.volatile, self.derived)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
