"""Checking an atlas folder end to end (``ierf atlas verify``), and repairing it.

:func:`verify_atlas` is the atlas' fsck: it reads the manifest read-only and reports every
shard file that is missing, truncated, altered (its SHA-256 differs from the manifest's) or
unreadable, every shard whose records disagree with the manifest's rows, every row that
points at no shard, and every shard-like file the manifest does not refer to.

With ``repair=True`` (under the writer lock, so never during a build) it drops what is
broken: the damaged shards' rows, their files, and the samples of every image they held,
which are marked not done; unreferenced files are deleted. Re-running the same
``ierf atlas build`` command then rebuilds exactly those images, and the atlas reads back
as an uninterrupted build would have written it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ierf import store
from ierf.atlas.manifest import (
    MANIFEST,
    SHARD_RE,
    connect,
    order_problem,
    records_problem,
    shard_hashes,
    writer_lock,
)
from ierf.errors import IerfError, storage_error
from ierf.integrity import file_problem


@dataclass
class Report:
    """What :func:`verify_atlas` found (and, with ``repair``, what it did)."""

    path: Path
    shards: int = 0
    problems: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    redo: int = 0
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.path}: {self.shards} shard(s) checked, {len(self.problems)} problem(s)"
        lines = [head, *(f"  {p}" for p in self.problems)]
        if self.dropped or self.removed:
            lines.append(f"repaired: dropped {len(self.dropped)} shard(s), removed "
                         f"{len(self.removed)} unreferenced file(s); {self.redo} image(s) "
                         "marked not done: re-run the same `ierf atlas build` command to "
                         "rebuild them")
        elif self.problems:
            lines.append(f"run `ierf atlas verify {self.path} --repair`, then the same "
                         "`ierf atlas build` command, to rebuild what is broken")
        return "\n".join(lines)


def verify_atlas(path: str | Path, repair: bool = False) -> Report:
    """Check every file and row of the atlas in folder ``path``; ``repair`` drops what is
    broken so that a plain re-run of the build rebuilds it.

    Raises
    ------
    IerfError : no atlas there, a damaged manifest, or (``repair``) a build is running.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise IerfError(f"no atlas at {str(path)!r} (no {MANIFEST})")
    if not repair:
        con = connect(path, readonly=True)
        try:
            return _check(path, con)[0]
        finally:
            con.close()
    with writer_lock(path):
        con = connect(path)
        try:
            report, bad, unreferenced = _check(path, con)
            _repair(path, con, report, bad, unreferenced)
            return report
        finally:
            con.close()


def _check(path: Path, con: sqlite3.Connection) -> tuple[Report, set[str], list[str]]:
    """The report, the names of the broken shards and the unreferenced files."""
    report = Report(path)
    try:
        integrity = con.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            raise IerfError(f"{str(path / MANIFEST)!r} is damaged ({integrity}); rebuild the "
                            "atlas with --overwrite")
        meta = store.read_settings(con)
        shards = shard_hashes(con)
        counts = dict(con.execute("SELECT name, n_samples FROM shards"))
        images = dict(con.execute("SELECT idx, shard FROM images"))
        rows: dict[str, dict[str, list[tuple[int, int, int]]]] = {}
        for layer, image, sample, shard, row in con.execute(
                "SELECT layer, image, sample, shard, row FROM samples"):
            rows.setdefault(shard, {}).setdefault(layer, []).append((row, image, sample))
        order = order_problem(con)
    except sqlite3.DatabaseError as e:
        raise store.database_error(e, path / MANIFEST) from None
    bad: set[str] = set()

    def problem(shard: str, text: str) -> None:
        bad.add(shard)
        report.problems.append(f"{shard}: {text}")

    if order is not None:
        report.problems.append(f"{MANIFEST}: {order}; re-run the build command to renumber "
                               "them")
    for name, (size, sha256) in sorted(shards.items()):
        report.shards += 1
        indexed = sum(map(len, rows.get(name, {}).values()))
        text = (file_problem(path / name, sha256, size, recheck=True)
                or _content_problem(path / name, rows.get(name, {}), meta)
                or (f"the manifest indexes {indexed} samples in it, its row says "
                    f"{counts[name]}" if indexed != counts[name] else None))
        if text is not None:
            problem(name, text)
    for name in sorted(set(rows) - set(shards)):
        problem(name, "samples rows point at a shard the manifest does not list")
    for name, by_layer in sorted(rows.items()):
        elsewhere = sorted({img for r in by_layer.values() for _, img, _ in r
                            if images.get(img) != name})
        if elsewhere:
            problem(name, f"holds samples of images {elsewhere[:8]} that the manifest does not "
                    "mark done in it")
    for idx, name in sorted(images.items()):
        if name is not None and name not in shards:
            problem(name, f"image {idx} is marked done in a shard the manifest does not list")
    referenced = set(shards) | set(rows) | {s for s in images.values() if s is not None}
    unreferenced = sorted(p.name for p in path.iterdir()
                          if SHARD_RE.match(p.name) and p.name not in referenced)
    report.problems += [f"{name}: not referenced by the manifest (an interrupted write)"
                        for name in unreferenced]
    return report, bad, unreferenced


def _content_problem(file: Path, rows: dict[str, list[tuple[int, int, int]]],
                     meta: dict) -> str | None:
    """What is wrong inside an intact-looking shard file (``None``: nothing)."""
    try:
        with safe_open(file, framework="pt") as f:
            for layer in meta.get("layers", []):
                if (text := records_problem(f, layer, rows.get(layer, []), meta)) is not None:
                    return text
    except (SafetensorError, OSError) as e:
        return f"unreadable ({e})"
    return None


def _repair(path: Path, con: sqlite3.Connection, report: Report, bad: set[str],
            unreferenced: list[str]) -> None:
    """Drop the ``bad`` shards and every shard holding one of their images (rows, then
    files); mark their images not done; delete the ``unreferenced`` files."""
    images = dict(con.execute("SELECT idx, shard FROM images"))
    in_shard: dict[str, set[int]] = {}
    for image, shard in con.execute("SELECT DISTINCT image, shard FROM samples"):
        in_shard.setdefault(shard, set()).add(image)
    for idx, shard in images.items():
        if shard is not None:
            in_shard.setdefault(shard, set()).add(idx)
    drop, redo = set(bad), set()
    while True:  # an image whose samples sit in a dropped shard takes its own shard with it
        redo = set().union(*(in_shard.get(s, set()) for s in drop))
        more = {images.get(i) for i in redo} - drop - {None}
        more |= {s for s, held in in_shard.items() if held & redo} - drop
        if not more:
            break
        drop |= more
    with store.transaction(con):
        con.executemany("DELETE FROM shards WHERE name = ?", [(s,) for s in drop])
        con.executemany("DELETE FROM samples WHERE shard = ?", [(s,) for s in drop])
        con.executemany("DELETE FROM samples WHERE image = ?", [(i,) for i in redo])
        con.executemany("UPDATE images SET shard = NULL WHERE idx = ?", [(i,) for i in redo])
    try:
        for name in sorted(drop | set(unreferenced)):
            (path / name).unlink(missing_ok=True)
    except OSError as e:
        raise storage_error(e) from None
    report.dropped, report.redo, report.removed = sorted(drop), len(redo), unreferenced
