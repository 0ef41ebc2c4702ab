"""Data-set-wide concept graphs: batched, resumable, sharded over ``torchrun`` ranks.

:func:`build_dataset_graph` cuts the image list into batches, builds each batch's graph with
:func:`ierf.graph.build_graph` (ICAT averaged over the batch, IERF Sec. VI) and commits it to
an SQLite store (:class:`GraphStore`, one transaction per batch). Killing the run loses at most
the batches in flight; re-running the same call skips what is stored. Ranks of a ``torchrun``
job take the pending batches round-robin and commit into the same store. When every batch is
in, the graph is :func:`~ierf.graph.concept_graph.merge`\\ d (the mean over all images) and
written as ``graph.json`` next to the store, atomically.

Layout of the output folder::

    parts.sqlite   settings + one row per finished batch (its graph, JSON)
    graph.json     the merged graph (:func:`ierf.graph.to_json`)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ierf import store
from ierf.concepts.basis import ConceptBasis
from ierf.dist import barrier, rank_world
from ierf.errors import IerfError
from ierf.graph.build import build_graph
from ierf.graph.concept_graph import ConceptGraph, merge
from ierf.graph.export import from_dict, from_json, to_dict, to_json
from ierf.models.fingerprint import weights_fingerprint
from ierf.models.model import Model

STORE, GRAPH = "parts.sqlite", "graph.json"


class GraphStore(store.ResumableStore):
    """The finished batches of one data-set-wide graph build."""

    schema = ("CREATE TABLE IF NOT EXISTS parts (batch INTEGER PRIMARY KEY, "
              "n_images INTEGER NOT NULL, graph TEXT NOT NULL);")
    wal = True
    holds = "the batches of a concept graph built with other settings"
    hint = "re-run with the same options to resume, or give another --out"

    def done(self) -> set[int]:
        """Indices of the stored batches."""
        return {b for b, in self.con.execute("SELECT batch FROM parts")}

    def put(self, batch: int, graph: ConceptGraph) -> None:
        """Store one batch's graph (one transaction: all of it or nothing)."""
        text = json.dumps(to_dict(graph, f"batch-{batch}"))
        with store.transaction(self.con):
            self.con.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?)",
                             (batch, graph.metadata["n_images"], text))

    def graphs(self) -> list[ConceptGraph]:
        """The stored graphs in batch order."""
        rows = self.con.execute("SELECT batch, graph FROM parts ORDER BY batch").fetchall()
        return [from_dict(json.loads(text), f"{self.path} batch {b}") for b, text in rows]


def basis_digest(basis: ConceptBasis) -> str:
    """A short hash of a basis' dictionary: the store refuses to mix graphs of other bases."""
    data = basis.dictionary.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


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
    The merged :class:`ConceptGraph` (on every rank).
    """
    ids = [str(i) for i in image_ids]
    if not ids:
        raise IerfError("no images to build the graph on; give a non-empty image set")
    if batch_size < 1:
        raise IerfError(f"batch size must be >= 1, got {batch_size}")
    classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    out = Path(out)
    wanted = {"model": model.name, "fingerprint": weights_fingerprint(model.net),
              "layers": list(bases), "bases": {l: basis_digest(b) for l, b in bases.items()},
              "method": method, "classes": classes.tolist(), "image_ids": ids,
              "batch_size": batch_size, "options": {k: v for k, v in icat_options.items()
                                                    if v is not None},
              **(settings or {})}
    rank, world = rank_world()
    batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    with GraphStore(out / STORE, wanted) as parts:
        pending = [b for b in range(len(batches)) if b not in parts.done()]
        barrier()   # every rank has read the pending list before any writes
        mine = pending[rank::world]
        desc = f"graph {model.name}" + (f" (rank 0 of {world})" if world > 1 else "")
        with tqdm(total=sum(len(batches[b]) for b in mine), unit="img", desc=desc,
                  disable=not progress or rank != 0) as bar:
            for b in mine:
                x = load(batches[b]).to(model.device)
                g = build_graph(model, bases, x, classes, method, image_ids=batches[b],
                                progress=False, **icat_options)
                parts.put(b, g)
                bar.update(len(batches[b]))
        barrier()
        graphs = parts.graphs()
    if len(graphs) != len(batches):
        raise IerfError(f"{out / STORE} holds {len(graphs)} of {len(batches)} batches; "
                        "re-run the same command to finish it")
    graph = merge(graphs)
    graph.metadata.update({"batch_size": batch_size, **(settings or {})})
    if rank == 0:
        to_json(graph, out / GRAPH)
    barrier()
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
