"""The manifest of an atlas folder: its SQLite schema, and the checks of shards against it.

``manifest.sqlite`` holds the build's meta (settings), its ``images`` (done: the shard
holding them), its ``shards`` (with size and SHA-256) and the ``samples`` index (layer,
image, sample → shard, row). :mod:`ierf.atlas.store` writes and reads through it;
:mod:`ierf.atlas.verify` checks every file and row against it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ierf import store
from ierf.lock import WriterLock

MANIFEST = "manifest.sqlite"
SHARD_RE = re.compile(r"^\.?shard-(\d+)-(\d+)\.")
#: per-sample tensors of a shard, besides ``pfv`` and ``ierf``
RECORD_KEYS = ("image", "sample", "position", "row", "col", "predicted", "contribution")
#: meta keys that may differ between two runs of the same build
VOLATILE_META = ("created",)
#: meta keys that follow from the others (reported only if nothing else differs)
DERIVED_META = ("grids", "channels", "ierf_size", "n_images")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (idx INTEGER PRIMARY KEY, id TEXT NOT NULL, shard TEXT);
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
    """The manifest of one atlas build, created with its meta and image ids, or reopened
    (then the meta, ``created`` aside, and the image list must be the same)."""

    schema = _SCHEMA
    wal = True
    volatile = VOLATILE_META
    derived = DERIVED_META
    holds = "an atlas of a different build"
    hint = "to keep it there, give a new folder with --out, or pass --overwrite to replace it"

    def __init__(self, path: str | Path, meta: dict, image_ids: Sequence[str]) -> None:
        self.image_ids = list(image_ids)
        super().__init__(Path(path) / MANIFEST, meta)

    def _create(self) -> None:
        self.con.executemany("INSERT INTO images VALUES (?, ?, NULL)", enumerate(self.image_ids))

    def _differences(self, stored: dict, wanted: dict) -> list[str]:
        ids = [i for (i,) in self.con.execute("SELECT id FROM images ORDER BY idx")]
        return (super()._differences(stored, wanted)
                + ([] if ids == self.image_ids else ["the image list differs"]))


def add_hash_columns(con: sqlite3.Connection) -> None:
    """Give a manifest from before content hashes its ``bytes`` and ``sha256`` columns."""
    columns = {c for _, c, *_ in con.execute("PRAGMA table_info(shards)")}
    with store.transaction(con):
        for column, kind in (("bytes", "INTEGER"), ("sha256", "TEXT")):
            if column not in columns:
                con.execute(f"ALTER TABLE shards ADD COLUMN {column} {kind}")
