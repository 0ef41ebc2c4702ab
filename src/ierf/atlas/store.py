"""The PFV–iERF atlas on disk: safetensors shards indexed by a transactional SQLite manifest.

Layout of an atlas folder::

    manifest.sqlite                  meta, images, shards and the samples index (WAL mode)
    shard-<rank>-<seq>.safetensors   per layer: pfv (n, C), ierf (n, h, w) and the records
    .manifest.sqlite.lock            the writer lock (:mod:`ierf.lock`)

A shard is written to a temporary file and renamed into place (:func:`ierf.io.atomic_path`);
only then is one SQLite transaction committed that lists the shard with its size and SHA-256,
marks its images done and indexes its samples. A process killed at any moment therefore
leaves either a committed shard or an *orphan* file that no reader sees; :func:`prepare_atlas`
deletes orphans (under the writer lock, never a file the manifest refers to) and their
images are redone. One build writes into a folder at a time; the ranks of a ``torchrun``
build write their own shards into the one manifest (SQLite serialises the commits; a busy
timeout makes writers wait) while rank 0 holds the lock for all of them.

A re-run may bring another image set (:func:`prepare_atlas`): images whose file is unchanged
keep their samples, the samples of images that left the set stay in their shards but are no
longer read, and readers list the images in the order of the latest run; an image that
could not be read is recorded as skipped, with the reason.

Readers open the manifest read-only and check each shard once per process: its size and
hash against the manifest, and its records against the manifest's rows
(:mod:`ierf.integrity`); ``ierf atlas verify`` (:mod:`ierf.atlas.verify`) checks them all.

Samples are read in a deterministic order: image index, then sample number, per layer,
whatever the number of ranks, the shard boundaries, the resumes or earlier image sets (IERF
Sec. III-D: the PFV–iERF pairs of a layer; iERF of Eq. 10).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ierf import store
from ierf.atlas.manifest import (
    MANIFEST,
    RECORD_KEYS,
    SHARD_RE,
    ImageChanges,
    Manifest,
    add_columns,
    connect,
    live_images,
    records_problem,
    referenced_files,
    shard_hashes,
    shard_name,
    sync_images,
    writer_lock,
)
from ierf.data.sources import load_images, parse_source
from ierf.errors import IerfError, require_finite, storage_error, unknown_name
from ierf.integrity import CorruptFileError, check_file, sha256_bytes
from ierf.io import atomic_path
from ierf.lock import lock_path
from ierf.models.fingerprint import weights_fingerprint

if TYPE_CHECKING:
    from ierf.models.model import Model

def prepare_atlas(path: str | Path, meta: dict, image_ids: Sequence[str],
                  hashes: Sequence[str] | None = None, overwrite: bool = False) -> ImageChanges:
    """Create the atlas folder, or check that an existing one is the same build (rank 0 only),
    and make ``image_ids`` its image list (:func:`~ierf.atlas.manifest.sync_images`).

    The identity of a build is its meta (model and weights fingerprint, source, layers,
    sampling and iERF settings), not its image list: images whose file content (``hashes``,
    SHA-256; ``""`` for generated images, the default) is unchanged keep their samples, new
    and changed images are built by the run, and the samples of images that left the set
    are no longer read. Deletes orphan shard files (written but never committed) and stray
    temporary files, so that their images are redone; a file the manifest refers to is never
    deleted. Holds the writer lock while it runs: one build may write into a folder at a time
    (the ranks of one ``torchrun`` build count as one, whose rank 0 holds the lock for the
    whole build).

    Returns
    -------
    What changed against the manifest's image set (:class:`~ierf.atlas.manifest.ImageChanges`).

    Raises
    ------
    StoreBusyError : another build writes into ``path``.
    ConfigMismatchError : ``path`` holds an atlas with different meta (model, layers,
        samples, …), and ``overwrite`` is false.
    IerfError : ``path`` is a file or a non-empty folder that is no atlas.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IerfError(f"{str(path)!r} is a file; give a folder for the atlas (--out)")
    hashes = [""] * len(image_ids) if hashes is None else list(hashes)
    with writer_lock(path):
        if overwrite and path.is_dir():
            _remove_atlas_files(path)
        own = lock_path(path / MANIFEST).name
        if not (path / MANIFEST).exists() and any(
                p for p in path.iterdir() if not SHARD_RE.match(p.name) and p.name != own):
            raise IerfError(f"{str(path)!r} is a non-empty folder without an atlas manifest; "
                            "give a new folder with --out")
        with Manifest(path, meta) as manifest:
            add_columns(manifest.con)
            changes = sync_images(manifest.con, image_ids, hashes)
            referenced = referenced_files(manifest.con)
            try:
                for p in path.iterdir():
                    if SHARD_RE.match(p.name) and p.name not in referenced:
                        p.unlink()
            except OSError as e:
                raise storage_error(e) from None
            return changes


def _remove_atlas_files(path: Path) -> None:
    try:
        for p in path.iterdir():
            if p.name.startswith(MANIFEST) or SHARD_RE.match(p.name):
                p.unlink()
            elif p.is_dir() and p.name == "__pycache__":
                shutil.rmtree(p)
    except OSError as e:
        raise storage_error(e) from None


class ShardWriter:
    """Writes one rank's shards into a prepared atlas folder.

    Parameters
    ----------
    path : the atlas folder (see :func:`prepare_atlas`).
    rank : this process's rank; its shards are ``shard-<rank>-<seq>``, ``seq`` continuing
        after the rank's last committed shard. Rank 0 holds the folder's writer lock while
        open (re-entrant: a build holding it already goes on); ranks > 0 rely on rank 0's.
    """

    def __init__(self, path: str | Path, rank: int = 0) -> None:
        self.path, self.rank = Path(path), rank
        self._lock = writer_lock(self.path).acquire() if rank == 0 else None
        try:
            self._con = connect(self.path)
        except BaseException:
            self._release()
            raise
        last = self._con.execute("SELECT MAX(seq) FROM shards WHERE rank = ?", (rank,)).fetchone()[0]
        self._seq = -1 if last is None else last

    def pending(self) -> list[int]:
        """Numbers (``idx``) of the images of the run neither done nor skipped, in its order."""
        return [i for (i,) in self._con.execute(
            "SELECT idx FROM images WHERE shard IS NULL AND skipped IS NULL AND pos IS NOT NULL "
            "ORDER BY pos")]

    def ids(self, images: Sequence[int]) -> list[str]:
        """The ids of the images numbered ``images``."""
        ids = dict(self._con.execute("SELECT idx, id FROM images"))
        return [ids[i] for i in images]

    def skip(self, reasons: dict[int, str]) -> None:
        """Record images that could not be read (``idx`` → why); a re-run does not retry
        them unless their file changes."""
        with store.transaction(self._con) as con:
            con.executemany("UPDATE images SET skipped = ? WHERE idx = ?",
                            [(why, i) for i, why in reasons.items()])

    def write(self, images: Sequence[int], layers: dict[str, dict[str, torch.Tensor]]) -> str:
        """Write the samples of ``images`` (all requested layers) as one shard; return its name.

        ``layers[layer]`` holds ``pfv`` (n, C), ``ierf`` (n, h, w) and the :data:`RECORD_KEYS`
        (n,) tensors; an image may have no sample in a layer (no positive contribution).

        Raises
        ------
        IerfError : NaN or Inf in the samples (nothing is written), or the disk refuses.
        """
        tensors = {f"{layer}/{key}": t.detach().cpu().contiguous()
                   for layer, d in layers.items() for key, t in d.items()}
        for key, t in tensors.items():
            require_finite(t, f"the {key} samples of images {list(images)[:8]}",
                           "the model's activations or relevances overflow there; check the "
                           "model and its inputs")
        self._seq += 1
        name = shard_name(self.rank, self._seq)
        data = save(tensors)
        try:
            with atomic_path(self.path / name) as tmp, open(tmp, "wb") as f:
                f.write(data)
        except OSError as e:
            raise storage_error(e, self.path / name) from None
        self._commit(name, images, layers, len(data), sha256_bytes(data))
        return name

    def _commit(self, name: str, images: Sequence[int],
                layers: dict[str, dict[str, torch.Tensor]], size: int, sha256: str) -> None:
        """One transaction: the shard with its size and hash, its images marked done, its
        samples indexed."""
        rows = [(layer, img, s, name, r) for layer, d in layers.items()
                for r, (img, s) in enumerate(zip(d["image"].tolist(), d["sample"].tolist()))]
        try:
            with store.transaction(self._con) as con:
                con.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (name, self.rank, self._seq, len(images), len(rows), size, sha256))
                con.executemany("UPDATE images SET shard = ? WHERE idx = ?",
                                [(name, i) for i in images])
                con.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as e:
            raise IerfError(f"the manifest of {str(self.path)!r} already holds samples of "
                            f"images {list(images)[:8]} or shard {name} ({e}); run `ierf atlas "
                            f"verify {self.path} --repair`, then re-run the build") from None

    def close(self) -> None:
        self._con.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ShardWriter:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_atlas_model(name: str, weights: str) -> Model:
    """Load model ``name`` with ``weights``: ``"pretrained"`` or ``"random:<seed>"``."""
    from ierf.models.zoo import load_model

    if weights == "pretrained":
        return load_model(name)
    if isinstance(weights, str) and weights.startswith("random:") and weights[7:].isdigit():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(weights[7:]))
            return load_model(name, weights=None)
    raise IerfError(f"unknown weights {weights!r} for {name}: use 'pretrained' or 'random:<seed>'")


def open_atlas(path: str | Path, partial: bool = False) -> Atlas:
    """Open a PFV–iERF atlas written by ``ierf atlas build`` / :func:`ierf.atlas.build_atlas`.

    With ``partial=True`` an unfinished build can be read (its committed samples only).
    The manifest is opened read-only: a read-only folder (a shared or archived atlas) opens.
    """
    path = Path(path)
    hint = ("build one with `ierf atlas build --model M --images benchmark|photos|DIR "
            f"--layers L1,L2 --out {path}`")
    if not (path / MANIFEST).is_file():
        raise IerfError(f"no atlas at {str(path)!r} (no {MANIFEST}); {hint}")
    atlas = Atlas(path)
    if not atlas.meta:
        raise IerfError(f"the atlas at {str(path)!r} has no meta (its build never started); {hint}")
    if not partial and atlas.done < len(atlas.images):
        raise IerfError(f"the atlas at {str(path)!r} is incomplete ({atlas.done} of "
                        f"{len(atlas.images)} images done); re-run the same `ierf atlas build` "
                        "command to resume it, or open it with partial=True")
    return atlas


class Atlas:
    """A PFV–iERF dataset: per layer, sampled PFVs, their iERFs and where they came from.

    Attributes
    ----------
    path : the atlas folder.
    meta : model, weights (and their fingerprint), source (``"benchmark:<seed>:<split>"``, ``"photos"`` or a folder),
        layers, grids, samples_per_image, ierf_size (h, w), ierf_downsample, input_size,
        ierf_method, seed, created.
    layers : the sampled layers.
    images : ids of the images of the latest build run, in its order, index-aligned with
        ``records(layer)["image"]`` (unreadable images left out).
    skipped : id → why, for the images that could not be read.
    done : images built (each with its samples) so far.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        con = connect(self.path, readonly=True)
        try:
            self.meta = store.read_settings(con)
            rows = live_images(con)
            samples = con.execute("SELECT layer, shard, row, image, sample FROM samples "
                                  "ORDER BY layer, shard, row").fetchall()
            self._shards = shard_hashes(con)
        except sqlite3.DatabaseError as e:
            raise store.database_error(e, self.path / MANIFEST) from None
        finally:
            con.close()
        readable = [r for r in rows if r[3] is None]
        self.images = [i for _, i, _, _ in readable]
        self.skipped = {i: why for _, i, _, why in rows if why is not None}
        self.done = sum(s is not None for _, _, s, _ in readable)
        self.layers: list[str] = list(self.meta.get("layers", []))
        place = {idx: p for p, (idx, *_) in enumerate(readable)}
        #: stored image number (idx) → index into :attr:`images` (-1: not in the atlas)
        self._place = torch.full((max([r[0] for r in rows] + [r[3] for r in samples] + [-1]) + 1,),
                                 -1, dtype=torch.long)
        self._place[list(place)] = torch.tensor(list(place.values()), dtype=torch.long)
        #: per layer, in (image, sample) order: (shard, row, image, sample) of the images read
        self._index: dict[str, list[tuple[str, int, int, int]]] = {k: [] for k in self.layers}
        #: per layer and shard, every (row, idx, sample) the manifest holds (for the checks)
        self._rows: dict[str, dict[str, list[tuple[int, int, int]]]] = {}
        for layer, shard, row, idx, sample in samples:
            self._rows.setdefault(layer, {}).setdefault(shard, []).append((row, idx, sample))
            if idx in place and layer in self._index:
                self._index[layer].append((shard, row, place[idx], sample))
        for index in self._index.values():
            index.sort(key=lambda t: (t[2], t[3]))
        self._model: Model | None = None
        self._checked: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        """Total samples over all layers."""
        return sum(len(v) for v in self._index.values())

    def count(self, layer: str) -> int:
        """Number of committed samples of ``layer``."""
        if layer not in self._index:
            raise unknown_name("atlas layer", layer, self.layers)
        return len(self._index[layer])

    def __repr__(self) -> str:
        counts = ", ".join(f"{layer}: {len(self._index[layer])}" for layer in self.layers)
        return (f"Atlas({str(self.path)!r}, model={self.meta.get('model')!r}, "
                f"images={self.done}/{len(self.images)}, samples={{{counts}}})")

    def pfvs(self, layer: str) -> torch.Tensor:
        """(N, C) float32 PFVs of every committed sample of ``layer``."""
        return self._gather(layer, "pfv")

    def ierfs(self, layer: str) -> torch.Tensor:
        """(N, h, w) float32 iERF maps (area-pooled by ``meta["ierf_downsample"]``)."""
        return self._gather(layer, "ierf")

    def records(self, layer: str) -> dict[str, torch.Tensor]:
        """Per sample: ``image`` (index into :attr:`images`), ``sample`` (its number within the
        image), ``position`` (row-major index on the layer's PFV grid, ViT prefix tokens
        excluded), ``row``, ``col``, ``predicted`` (class) and ``contribution`` (its relevance
        to the predicted logit, the sampling weight)."""
        records = {k: self._gather(layer, k) for k in RECORD_KEYS}
        records["image"] = self._place[records["image"]]
        return records

    def load_images(self, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """(n, 3, H, W) model-ready inputs of the images at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        ids = [self.images[i] for i in index]
        return load_images(parse_source(self.meta["source"]), ids, self.model())

    def model(self) -> Model:
        """The model the atlas was built with: its offline weights, or the same random
        weights (``meta["weights"] == "random:<seed>"``: initialised under that torch seed)."""
        if self._model is None:
            model = load_atlas_model(self.meta["model"], self.meta.get("weights"))
            if weights_fingerprint(model.net) != self.meta["fingerprint"]:
                raise IerfError(f"{self.meta['model']} loaded with {self.meta['weights']!r} "
                                "weights is not the model this atlas was built with (weights "
                                "fingerprint differs); load the right model yourself")
            self._model = model
        return self._model

    def damaged(self) -> list[str]:
        """Shard files the manifest lists that are missing or of the wrong size (a cheap
        check: no hashing; ``ierf atlas verify`` checks everything)."""
        return [name for name, (size, _) in self._shards.items()
                if not (self.path / name).is_file()
                or (size is not None and (self.path / name).stat().st_size != size)]

    def _gather(self, layer: str, key: str) -> torch.Tensor:
        if layer not in self._index:
            raise unknown_name("atlas layer", layer, self.layers)
        index = self._index[layer]
        shards = list(dict.fromkeys(s for s, *_ in index))
        if not shards:
            return self._empty(layer, key)
        parts, offset, n = [], {}, 0
        for s in shards:
            try:
                with safe_open(self.path / s, framework="pt") as f:
                    self._check(s, layer, f)
                    parts.append(f.get_tensor(f"{layer}/{key}"))
            except (SafetensorError, OSError) as e:
                raise CorruptFileError(f"{str(self.path / s)!r} is unreadable ({e}); "
                                       f"{self._repair_hint()}") from None
            offset[s], n = n, n + len(parts[-1])
        where = torch.tensor([offset[s] + r for s, r, *_ in index], dtype=torch.long)
        return torch.cat(parts)[where]

    def _check(self, shard: str, layer: str, f: object) -> None:
        """Once per shard and layer: the file's size and hash (once per process) and its
        records against the manifest."""
        if (shard, layer) in self._checked:
            return
        if shard not in self._shards:
            raise CorruptFileError(f"the manifest of {str(self.path)!r} indexes samples in "
                                   f"{shard}, which it does not list; {self._repair_hint()}")
        size, sha256 = self._shards[shard]
        check_file(self.path / shard, sha256, size, self._repair_hint())
        rows = self._rows.get(layer, {}).get(shard, [])
        if (problem := records_problem(f, layer, rows, self.meta)) is not None:
            raise CorruptFileError(f"{str(self.path / shard)!r} does not match the manifest "
                                   f"({problem}); {self._repair_hint()}")
        self._checked.add((shard, layer))

    def _repair_hint(self) -> str:
        return (f"run `ierf atlas verify {self.path} --repair`, then the same `ierf atlas "
                "build` command to redo the images it drops")

    def _empty(self, layer: str, key: str) -> torch.Tensor:
        if key == "pfv":
            return torch.zeros(0, self.meta["channels"][layer])
        if key == "ierf":
            return torch.zeros(0, *self.meta["ierf_size"])
        return torch.zeros(0, dtype=torch.float32 if key == "contribution" else torch.long)
