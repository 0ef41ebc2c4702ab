"""Data-set-wide concept graphs: batched, resumable, sharded over ``torchrun`` ranks.

:func:`build_dataset_graph` cuts the image list into batches, builds each batch's graph with
:func:`ierf.graph.build_graph` (ICAT averaged over the batch, IERF Sec. VI) and commits it to
an SQLite store (:class:`GraphStore`, one transaction per batch; inside a batch, one graph
per predicted class). One run writes into a folder at a time (rank 0 holds the writer lock
for all ranks of a ``torchrun`` job; a second run is refused at once). Killing the run loses
at most the batches in flight; re-running the same call skips what is stored. Ranks of a ``torchrun``
job take the pending batches round-robin and commit into the same store. When every batch is
in, the graph is :func:`~ierf.graph.concept_graph.merge`\\ d (the mean over all images) and
written as ``graph.json`` next to the store, atomically, together with one graph per
predicted class (ICAT aggregated over the images the model assigns to that class).

Layout of the output folder::

    parts.sqlite         settings + per finished batch and predicted class: its graph (JSON)
    graph.json           the merged graph over all images (:func:`ierf.graph.to_json`)
    per-class/<c>.json   the merged graph over the images predicted as class c
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ierf import store
from ierf.concepts.basis import ConceptBasis
from ierf.dist import barrier, on_rank0, rank_world
from ierf.errors import IerfError
from ierf.graph.build import build_graph
from ierf.graph.concept_graph import ConceptGraph, merge
from ierf.graph.export import from_dict, from_json, to_dict, to_json
from ierf.lock import rank0_lock
from ierf.models.fingerprint import weights_fingerprint
from ierf.models.model import Model

STORE, GRAPH, PER_CLASS = "parts.sqlite", "graph.json", "per-class"


class GraphStore(store.ResumableStore):
    """The finished batches of one data-set-wide graph build: per batch, one graph per class
    predicted in it (the mean over those images), committed together."""

    schema = ("CREATE TABLE IF NOT EXISTS parts (batch INTEGER NOT NULL, predicted INTEGER "
              "NOT NULL, n_images INTEGER NOT NULL, graph TEXT NOT NULL, "
              "PRIMARY KEY (batch, predicted));")
    wal = True
    holds = "the batches of a concept graph built with other settings"
    hint = "re-run with the same options to resume, or give another --out"

    def done(self) -> set[int]:
        """Indices of the stored batches."""
        return {b for b, in self.con.execute("SELECT DISTINCT batch FROM parts")}

    def put(self, batch: int, graphs: Mapping[int, ConceptGraph]) -> None:
        """Store one batch's graphs, by predicted class (one transaction: all or nothing)."""
        rows = [(batch, c, g.metadata["n_images"], json.dumps(to_dict(g, f"batch-{batch}")))
                for c, g in graphs.items()]
        with store.transaction(self.con):
            self.con.executemany("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)", rows)

    def graphs(self, predicted: int | None = None) -> list[ConceptGraph]:
        """The stored graphs in batch order; only those of images predicted as
        ``predicted`` when given."""
        where, args = ("", ()) if predicted is None else ("WHERE predicted = ?", (predicted,))
        rows = self.con.execute(f"SELECT batch, graph FROM parts {where} "
                                "ORDER BY batch, predicted", args).fetchall()
        return [from_dict(json.loads(text), f"{self.path} batch {b}") for b, text in rows]

    def predicted(self) -> list[int]:
        """The classes predicted on some image."""
        return [c for c, in self.con.execute("SELECT DISTINCT predicted FROM parts "
                                             "ORDER BY predicted")]


@contextmanager
def _store(path: Path, wanted: Mapping[str, Any]) -> Iterator[GraphStore]:
    """The graph store, open on every rank; rank 0 holds its writer lock and creates it
    before the other ranks open it: two first connections switching a new file to WAL at
    once can get SQLITE_BUSY without waiting (the likely cause of one rank-0 failure under
    torchrun on a loaded CPU)."""
    with rank0_lock(path):
        on_rank0(lambda: GraphStore(path, wanted, lock=False).close())
        with GraphStore(path, wanted, lock=False) as parts:
            yield parts


def build_dataset_graph(model: Model, bases: Mapping[str, ConceptBasis],
                        load: Callable[[Sequence[str]], torch.Tensor], image_ids: Sequence[str],
                        classes: Sequence[int] | torch.Tensor, out: str | Path,
                        method: str = "ig", *, batch_size: int = 8, progress: bool = True,
                        settings: Mapping[str, Any] | None = None,
                        **icat_options: Any) -> ConceptGraph:
    """The concept graph of ``model`` over all ``image_ids``, resumable and sharded.

    Parameters
    ----------
    bases : layer → :class:`ConceptBasis`, in chain order (see :func:`ierf.graph.build_graph`).
    load : image ids → model-ready images ``(n, 3, H, W)``.
    image_ids : the images, in order (batches are consecutive slices of this list).
    classes : the class nodes; fixed for the whole run so that batches can be merged.
    out : output folder (``parts.sqlite`` and ``graph.json``).
    batch_size : images per batch: per forward through a sub-network, and per stored unit.
    settings : extra JSON-able settings that must match to resume (e.g. the atlas path);
        also recorded in the graph's metadata.
    icat_options : ``n_steps``, ``rule``, ``internal_batch_size``, ... (:func:`build_graph`).

    Returns
    -------
    The merged :class:`ConceptGraph` over all images (on every rank).
    """
    ids = [str(i) for i in image_ids]
    if not ids:
        raise IerfError("no images to build the graph on; give a non-empty image set")
    if batch_size < 1:
        raise IerfError(f"batch size must be >= 1, got {batch_size}")
    classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    out = Path(out)
    wanted = {"model": model.name, "fingerprint": weights_fingerprint(model.net),
              "layers": list(bases), "bases": {l: b.digest() for l, b in bases.items()},
              "method": method, "classes": classes.tolist(), "image_ids": ids,
              "batch_size": batch_size, "options": {k: v for k, v in icat_options.items()
                                                    if v is not None},
              **(settings or {})}
    rank, world = rank_world()
    batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    with _store(out / STORE, wanted) as parts:
        pending = [b for b in range(len(batches)) if b not in parts.done()]
        barrier()   # every rank has read the pending list before any writes
        mine = pending[rank::world]
        desc = f"graph {model.name}" + (f" (rank 0 of {world})" if world > 1 else "")
        with tqdm(total=sum(len(batches[b]) for b in mine), unit="img", desc=desc,
                  disable=not progress or rank != 0) as bar:
            for b in mine:
                x = load(batches[b]).to(model.device)
                per = build_graph(model, bases, x, classes, method, image_ids=batches[b],
                                  per_image=True, progress=False, **icat_options)
                with torch.no_grad():
                    predicted = model(x).argmax(1).tolist()
                parts.put(b, {c: merge([g for g, p in zip(per, predicted) if p == c])
                              for c in sorted(set(predicted))})
                bar.update(len(batches[b]))
        barrier()
        if len(parts.done()) != len(batches):
            raise IerfError(f"{out / STORE} holds {len(parts.done())} of {len(batches)} "
                            "batches; re-run the same command to finish it")
        graph = _merged(parts.graphs(), ids, batch_size, settings)
        by_class = {c: _merged(parts.graphs(c), None, batch_size, settings)
                    for c in parts.predicted()}
    if rank == 0:
        to_json(graph, out / GRAPH)
        for c, g in by_class.items():
            to_json(g, out / PER_CLASS / f"{c}.json")
    barrier()
    return graph


def _merged(graphs: Sequence[ConceptGraph], ids: Sequence[str] | None, batch_size: int,
            settings: Mapping[str, Any] | None) -> ConceptGraph:
    """The mean over the graphs' images, with image ids in data-set order (``ids``)."""
    graph = merge(graphs)
    if ids is not None:
        graph.metadata["image_ids"] = list(ids)
    graph.metadata.update({"batch_size": batch_size, **(settings or {})})
    return graph


def read_graph(path: str | Path) -> ConceptGraph:
    """A graph from its JSON file or from a folder written by :func:`build_dataset_graph`."""
    path = Path(path)
    if path.is_dir():
        if not (path / GRAPH).is_file():
            hint = (" (its build is unfinished: re-run the same `ierf graph build` to resume)"
                    if (path / STORE).is_file() else "")
            raise IerfError(f"no {GRAPH} in {str(path)!r}{hint}")
        path = path / GRAPH
    elif not path.is_file():
        raise IerfError(f"no concept graph at {str(path)!r}; build one with `ierf graph build`")
    return from_json(path)
