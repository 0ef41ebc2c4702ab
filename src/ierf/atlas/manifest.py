"""The manifest of an atlas folder: its SQLite schema, and the checks of shards against it.

``manifest.sqlite`` holds the build's meta (settings), its ``images``, its ``shards`` (with
size and SHA-256) and the ``samples`` index (layer, image, sample → shard, row).
:mod:`ierf.atlas.store` writes and reads through it; :mod:`ierf.atlas.verify` checks every
file and row against it.

An image row is keyed by ``idx``, the number its samples carry in the shards, given once and
never reused. It holds the image's ``id`` and the SHA-256 of its file (``""`` for generated
images), the ``shard`` holding its samples once done, ``skipped`` (why it could not be read)
and ``pos``, its place in the image list of the latest run (``NULL``: the image has left the
set; its samples stay in their shard, unread). The identity of a build is its meta alone:
a re-run over a changed image set keeps every image whose file is unchanged
(:func:`sync_images`).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ierf import store
from ierf.lock import WriterLock

MANIFEST = "manifest.sqlite"
SHARD_RE = re.compile(r"^\.?shard-(\d+)-(\d+)\.")
#: per-sample tensors of a shard, besides ``pfv`` and ``ierf``
RECORD_KEYS = ("image", "sample", "position", "row", "col", "predicted", "contribution")
#: meta keys that may differ between two runs of the same build (``n_images``: manifests
#: from before changing image sets)
VOLATILE_META = ("created", "n_images")
#: meta keys that follow from the others (reported only if nothing else differs)
DERIVED_META = ("grids", "channels", "ierf_size")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (idx INTEGER PRIMARY KEY, id TEXT NOT NULL, shard TEXT,
                                   sha256 TEXT, pos INTEGER, skipped TEXT);
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, rank INTEGER NOT NULL,
                                   seq INTEGER NOT NULL, n_images INTEGER NOT NULL,
                                   n_samples INTEGER NOT NULL, bytes INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS samples (layer TEXT NOT NULL, image INTEGER NOT NULL,
                                    sample INTEGER NOT NULL, shard TEXT NOT NULL,
                                    row INTEGER NOT NULL, PRIMARY KEY (layer, image, sample));
"""


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the manifest of atlas folder ``path``: for writing (WAL mode, busy timeout for
    many ranks) or ``readonly`` (never changes the file; works in a read-only folder)."""
    return store.connect(Path(path) / MANIFEST, wal=not readonly, readonly=readonly)


def writer_lock(path: str | Path) -> WriterLock:
    """The writer lock of atlas folder ``path``."""
    return WriterLock(Path(path) / MANIFEST)


def shard_hashes(con: sqlite3.Connection) -> dict[str, tuple[int | None, str | None]]:
    """Committed shards: name → (bytes, sha256); ``None`` in a manifest from before hashes."""
    columns = {c for _, c, *_ in con.execute("PRAGMA table_info(shards)")}
    if "sha256" not in columns:
        return {n: (None, None) for (n,) in con.execute("SELECT name FROM shards")}
    return {n: (b, h) for n, b, h in con.execute("SELECT name, bytes, sha256 FROM shards")}


def referenced_files(con: sqlite3.Connection) -> set[str]:
    """Every shard file the manifest refers to (its shards, images and samples tables)."""
    return {n for (n,) in con.execute("SELECT name FROM shards UNION SELECT shard FROM images "
                                      "WHERE shard IS NOT NULL UNION SELECT DISTINCT shard "
                                      "FROM samples")}


def records_problem(f: object, layer: str, rows: Sequence[tuple[int, int, int]],
                    meta: dict) -> str | None:
    """What is wrong between a shard's ``layer`` tensors (open ``safe_open`` handle ``f``) and
    the manifest's ``rows`` ``(row, image, sample)`` of it (``None``: consistent)."""
    keys = set(f.keys())
    if not rows and f"{layer}/image" not in keys:
        return None
    if not {f"{layer}/{k}" for k in ("pfv", "ierf", *RECORD_KEYS)} <= keys:
        return f"no {layer} tensors"
    image, sample = f.get_tensor(f"{layer}/image"), f.get_tensor(f"{layer}/sample")
    n = len(image)
    if sorted(r for r, _, _ in rows) != list(range(n)):
        return f"its {n} {layer} samples are not indexed once each by the manifest"
    for r, img, smp in rows:
        if int(image[r]) != img or int(sample[r]) != smp:
            return f"{layer} row {r} is image {int(image[r])} sample {int(sample[r])}, the " \
                   f"manifest says image {img} sample {smp}"
    pfv, ierf = f.get_slice(f"{layer}/pfv").get_shape(), f.get_slice(f"{layer}/ierf").get_shape()
    want = ([n, meta["channels"][layer]], [n, *meta["ierf_size"]])
    if (pfv, ierf) != want:
        return f"{layer} tensors of shape {pfv} and {ierf}, {want[0]} and {want[1]} expected"
    return None


def shard_name(rank: int, seq: int) -> str:
    return f"shard-{rank:03d}-{seq:06d}.safetensors"


class Manifest(store.ResumableStore):
    """The manifest of one atlas build, created with its meta or reopened (then the meta,
    ``created`` aside, must be the same; the image set may differ: :func:`sync_images`)."""

    schema = _SCHEMA
    wal = True
    volatile = VOLATILE_META
    derived = DERIVED_META
    holds = "an atlas of a different build"
    hint = ("to keep it there, give a new folder with --out, or pass --overwrite to replace it "
            "(a changed image set alone is fine: finished images are kept)")

    def __init__(self, path: str | Path, meta: dict) -> None:
        super().__init__(Path(path) / MANIFEST, meta)


def add_columns(con: sqlite3.Connection) -> None:
    """Bring a manifest from an older ierf up to the schema: the shards' ``bytes`` and
    ``sha256``, the images' ``sha256``, ``pos`` (their index) and ``skipped``."""
    with store.transaction(con):
        for table, column, kind in (("shards", "bytes", "INTEGER"), ("shards", "sha256", "TEXT"),
                                    ("images", "sha256", "TEXT"), ("images", "pos", "INTEGER"),
                                    ("images", "skipped", "TEXT")):
            if column not in _columns(con, table):
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if column == "pos":
                    con.execute("UPDATE images SET pos = idx")


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {c for _, c, *_ in con.execute(f"PRAGMA table_info({table})")}


def live_images(con: sqlite3.Connection) -> list[tuple[int, str, str | None, str | None]]:
    """``(idx, id, shard, skipped)`` of the images of the latest run, in its order (also of
    a manifest from before image sets could change, read-only)."""
    if "pos" not in _columns(con, "images"):
        return [(i, n, s, None) for i, n, s in
                con.execute("SELECT idx, id, shard FROM images ORDER BY idx")]
    return con.execute("SELECT idx, id, shard, skipped FROM images WHERE pos IS NOT NULL "
                       "ORDER BY pos").fetchall()


def order_problem(con: sqlite3.Connection) -> str | None:
    """What is wrong with the images' places in the run's order (``None``: they are
    0, 1, …, n − 1, each once)."""
    if "pos" not in _columns(con, "images"):
        return None
    pos = [p for (p,) in con.execute("SELECT pos FROM images WHERE pos IS NOT NULL ORDER BY pos")]
    if pos != list(range(len(pos))):
        return f"the places of its {len(pos)} images in the image list are not 0…{len(pos) - 1}"
    return None


@dataclass
class ImageChanges:
    """How a run's image set compares with the manifest's (what :func:`sync_images` did).

    Attributes
    ----------
    total : images in the run; ``done`` of them already built or skipped.
    new : images the manifest did not hold; ``changed``: held with another file content
        (their old samples are retired, the image is rebuilt).
    restored : finished images that had left the set and are back unchanged.
    gone : finished images that left the set (their samples are no longer read).
    """

    total: int
    done: int = 0
    new: int = 0
    changed: int = 0
    restored: int = 0
    gone: int = 0

    def __str__(self) -> str:
        if self.done == 0 and self.new == self.total:
            return f"new atlas of {self.total} images"
        parts = [f"{n} {what}" for n, what in ((self.new, "new"),
                                               (self.changed, "changed (rebuilt)"),
                                               (self.restored, "back in the set (kept)"),
                                               (self.gone, "gone (no longer read)")) if n]
        return (f"resuming: {self.done} of {self.total} images already done"
                + (f"; image set changed: {', '.join(parts)}" if parts else ""))


def sync_images(con: sqlite3.Connection, ids: Sequence[str], hashes: Sequence[str]
                ) -> ImageChanges:
    """Make ``ids`` (with the SHA-256 of their files, ``""`` for generated images) the
    manifest's image list, in that order, in one transaction.

    An image whose (id, hash) the manifest holds keeps its row, finished or not; any other
    gets a new row (a changed file: its old row and samples are retired). Rows of images
    that left the set get ``pos = NULL`` if they hold samples, and are deleted otherwise.
    A row of a manifest from before content hashes (``sha256`` NULL) is taken as unchanged.
    """
    changes = ImageChanges(len(ids))
    with store.transaction(con):
        rows = con.execute("SELECT idx, id, sha256, shard, pos, skipped FROM images").fetchall()
        by_key = {(r[1], r[2]): r for r in rows}
        known = {r[1] for r in rows}
        next_idx = max((r[0] for r in rows), default=-1) + 1
        place, inserts, used = [], [], set()
        for pos, (image, sha) in enumerate(zip(ids, hashes)):
            row = by_key.get((image, sha)) or by_key.get((image, None))
            if row is None:
                changes.new += image not in known
                changes.changed += image in known
                inserts.append((next_idx, image, sha, pos))
                next_idx += 1
                continue
            idx, _, _, shard, old_pos, skipped = row
            finished = shard is not None or skipped is not None
            changes.done += finished
            changes.restored += finished and old_pos is None
            place.append((sha, pos, idx))
            used.add(idx)
        left = [r for r in rows if r[0] not in used]
        now = set(ids)
        changes.gone = sum(r[4] is not None and r[3] is not None and r[1] not in now
                           for r in left)
        con.execute("UPDATE images SET pos = NULL")
        con.executemany("UPDATE images SET sha256 = ?, pos = ? WHERE idx = ?", place)
        con.executemany("INSERT INTO images (idx, id, sha256, pos) VALUES (?, ?, ?, ?)", inserts)
        con.executemany("DELETE FROM images WHERE idx = ?",
                        [(r[0],) for r in left if r[3] is None])
    return changes
