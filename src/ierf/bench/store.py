"""The resumable results file: per-image scores of each (model, method, batch) in SQLite.

Each (model, method, batch) is written in one transaction, so an interrupted run leaves
only complete batches behind; re-running the same command skips them. The run's
configuration is stored with the scores, and resuming with a different one is refused
(:class:`~ierf.store.ResumableStore`).
"""

from __future__ import annotations

import json

from ierf.store import ResumableStore, transaction


class ResultStore(ResumableStore):
    """Scores of one benchmark run in ``path`` (created if absent).

    Parameters
    ----------
    path : the SQLite file.
    config : JSON-able settings that determine the scores (data, sizes, seeds, metrics);
        must equal the stored one when the file exists.
    """

    schema = """
    CREATE TABLE IF NOT EXISTS scores (
        model TEXT NOT NULL, method TEXT NOT NULL, batch INTEGER NOT NULL, metric TEXT NOT NULL,
        scores TEXT NOT NULL, PRIMARY KEY (model, method, batch, metric));
    """
    holds = "results of a run with other settings"
    hint = ("re-run with the same options to resume, or choose another --out folder (or delete "
            "that file) to start afresh")

    def done(self, model: str, method: str) -> set[int]:
        """Batches of (model, method) already scored."""
        rows = self.con.execute("SELECT DISTINCT batch FROM scores WHERE model = ? AND method = ?",
                                (model, method))
        return {b for (b,) in rows}

    def add(self, model: str, method: str, batch: int, scores: dict[str, list[float]]) -> None:
        """Store the per-image scores of one batch, all metrics in one transaction."""
        with transaction(self.con):
            self.con.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                [(model, method, batch, metric, json.dumps(values))
                 for metric, values in scores.items()])

    def scores(self, model: str, method: str, metric: str) -> list[float]:
        """Per-image scores of (model, method, metric), in image order (NaN kept)."""
        rows = self.con.execute("SELECT scores FROM scores WHERE model = ? AND method = ? AND "
                                "metric = ? ORDER BY batch", (model, method, metric))
        return [float(v) for (values,) in rows for v in json.loads(values)]

    def count(self) -> int:
        """Number of stored (model, method, batch, metric) rows."""
        return self.con.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
