"""The resumable results file: per-image scores of each (model, method, batch) in SQLite.

Each (model, method, batch) is written in one transaction, so an interrupted run leaves
only complete batches behind; re-running the same command skips them. The run's
configuration is stored with the scores, and resuming with a different one is refused.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ierf.errors import IerfError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL, method TEXT NOT NULL, batch INTEGER NOT NULL, metric TEXT NOT NULL,
    scores TEXT NOT NULL, PRIMARY KEY (model, method, batch, metric));
"""


class ConfigMismatchError(IerfError):
    """The results file was written by a run with other settings."""


class ResultStore:
    """Scores of one benchmark run in ``path`` (created if absent).

    Parameters
    ----------
    path : the SQLite file.
    config : JSON-able settings that determine the scores (data, sizes, seeds, metrics);
        must equal the stored one when the file exists.
    """

    def __init__(self, path: str | Path, config: dict[str, object]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.executescript(SCHEMA)
        wanted = json.loads(json.dumps(config, sort_keys=True))
        row = self._db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        if row is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('config', ?)",
                                 (json.dumps(wanted, sort_keys=True),))
        elif (stored := json.loads(row[0])) != wanted:
            self.close()
            raise ConfigMismatchError(
                f"{str(self.path)!r} holds results of a run with other settings "
                f"({_differences(stored, wanted)}); re-run with the same options to resume, "
                "or choose another --out folder (or delete that file) to start afresh")

    def done(self, model: str, method: str) -> set[int]:
        """Batches of (model, method) already scored."""
        rows = self._db.execute("SELECT DISTINCT batch FROM scores WHERE model = ? AND method = ?",
                                (model, method))
        return {b for (b,) in rows}

    def add(self, model: str, method: str, batch: int, scores: dict[str, list[float]]) -> None:
        """Store the per-image scores of one batch, all metrics in one transaction."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                [(model, method, batch, metric, json.dumps(values))
                 for metric, values in scores.items()])

    def scores(self, model: str, method: str, metric: str) -> list[float]:
        """Per-image scores of (model, method, metric), in image order (NaN kept)."""
        rows = self._db.execute("SELECT scores FROM scores WHERE model = ? AND method = ? AND "
                                "metric = ? ORDER BY batch", (model, method, metric))
        return [float(v) for (values,) in rows for v in json.loads(values)]

    def count(self) -> int:
        """Number of stored (model, method, batch, metric) rows."""
        return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _differences(stored: dict[str, object], wanted: dict[str, object]) -> str:
    keys = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
    return "; ".join(f"{k}: stored {_short(stored.get(k))}, now {_short(wanted.get(k))}"
                     for k in keys)


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"
