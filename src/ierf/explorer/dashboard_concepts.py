"""The concept dashboard's data: every concept of a basis with its nearest PFVs and iERFs.

For a :class:`~ierf.concepts.basis.ConceptBasis` and the atlas of its layer (GIG Fig. 1,
App. E; IERF Sec. VI-A), each concept ``k`` gets

- ``frequency``: the share of atlas PFVs whose coefficient ``u_k`` (Eq. 12) is non-zero, and
  ``activation``: the mean ``u_k``;
- its ``top`` nearest PFVs (:func:`ierf.viz.cards.nearest_samples`), each drawn as its image
  dimmed outside its iERF, with its coefficient and position on the layer's grid;
- class importances: with a concept graph, the node's ``Σ_i AT(u_iq, logit_c)`` (Sec. VI-A2);
  without, the share of ``Σ_i u_ik⁺`` that falls on PFVs of images predicted as class ``c``
  (``importance_kind = "share"``: where the concept occurs, not what it causes);
- with a graph: its node id and its in/out ICAT edges (Eqs. 13–16), strongest first.

Computation (batched tensors) is kept apart from the page (:mod:`ierf.explorer.dashboard_page`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import torch

from ierf.atlas.manifest import MANIFEST
from ierf.atlas.store import Atlas, open_atlas
from ierf.concepts.basis import CONFIG_FILE, ConceptBasis
from ierf.errors import IerfError
from ierf.explorer.dashboard_images import ImageTable, fit_size, ierf_highlight
from ierf.explorer.dashboard_page import Dashboard, check_out, payload, write_page
from ierf.explorer.document import load_graph
from ierf.viz.cards import nearest_samples

#: nearest PFVs per concept shown on its grid card
CARD_IMAGES = 4
#: classes kept per concept (by |importance|)
TOP_CLASSES = 5
#: concepts kept per class for the class filter (by |importance|)
TOP_PER_CLASS = 100
#: edges kept per concept and direction (strongest |weight| first)
TOP_EDGES = 12
CHUNK = 4096


def find_bases(source: str | Path) -> tuple[list[Path], Path | None]:
    """The basis folders of ``source`` (a basis, or an atlas → every basis under
    ``atlas/concepts/``) and the atlas when ``source`` is one."""
    source = Path(source)
    if (source / CONFIG_FILE).is_file():
        return [source], None
    if (source / MANIFEST).is_file():
        found = sorted(p for p in (source / "concepts").glob("*") if (p / CONFIG_FILE).is_file())
        if not found:
            raise IerfError(f"the atlas {source} has no concept basis under {source}/concepts/; "
                            f"fit one with `ierf concepts fit {source} --layer L`")
        return found, source
    raise IerfError(f"{source} is neither a concept basis (no {CONFIG_FILE}) nor an atlas (no "
                    f"{MANIFEST}); give a folder written by `ierf concepts fit` or "
                    "`ierf atlas build`")


def basis_atlas(basis: ConceptBasis, path: Path, atlas: str | Path | None) -> Path:
    """The atlas to draw ``basis``' concepts from: ``atlas``, else the one it was fitted on."""
    if atlas is not None:
        return Path(atlas)
    fitted = basis.provenance.get("atlas")
    if fitted and (Path(fitted) / MANIFEST).is_file():
        return Path(fitted)
    raise IerfError(f"{path} does not say which atlas it was fitted on, or that atlas is gone "
                    f"({fitted!r}); give one with --atlas")


def concept_statistics(basis: ConceptBasis, X: torch.Tensor, predicted: torch.Tensor,
                       n_classes: int) -> dict[str, torch.Tensor]:
    """``frequency`` (K,), ``activation`` (K,) and class ``share`` (K, n_classes) of the
    coefficients ``U = encode(X)`` (module docstring), accumulated over row chunks of ``X``."""
    K = basis.n_concepts
    nonzero, total = torch.zeros(K), torch.zeros(K)
    mass = torch.zeros(K, n_classes)
    with torch.no_grad():
        for i in range(0, len(X), CHUNK):
            U = basis.encode(X[i:i + CHUNK]).detach().float().cpu()
            nonzero += (U != 0).sum(0)
            total += U.sum(0)
            onehot = torch.nn.functional.one_hot(predicted[i:i + CHUNK], n_classes).float()
            mass += U.clamp_min(0).T @ onehot
    n = max(len(X), 1)
    share = mass / mass.sum(1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
    return {"frequency": nonzero / n, "activation": total / n, "share": share}


def nearest(basis: ConceptBasis, X: torch.Tensor, k: int,
            by: Literal["cosine", "coefficient"]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, k)`` indices of each concept's nearest PFVs and their coefficients ``u_k``."""
    K, tops, coefs = basis.n_concepts, [], []
    for i in range(0, K, 512):                 # (512, k, K) coefficients at a time
        block = torch.arange(i, min(i + 512, K))
        top = nearest_samples(X, basis.extractor, block.tolist(), k, by).cpu()
        with torch.no_grad():
            U = basis.encode(X[top.flatten()]).detach().float().cpu()
        coefs.append(U.reshape(len(block), k, K).gather(
            2, block[:, None, None].expand(len(block), k, 1))[..., 0])
        tops.append(top)
    return torch.cat(tops), torch.cat(coefs)


def top_classes(values: torch.Tensor, n: int = TOP_CLASSES) -> list[list[list[float]]]:
    """Per row of ``(K, n_classes)``: ``[[class, value], ...]``, the ``n`` largest |value|,
    zeros left out."""
    idx = values.abs().topk(min(n, values.shape[1]), dim=1).indices
    vals = values.gather(1, idx)
    return [[[c, v] for c, v in zip(ci, vi) if v != 0]
            for ci, vi in zip(idx.tolist(), vals.tolist())]


def concepts_by_class(values: torch.Tensor, n: int = TOP_PER_CLASS
                       ) -> dict[str, list[list[float]]]:
    """Per column of ``(K, n_classes)``: ``{"class": [[concept, value], ...]}``, its ``n``
    largest |value|, zeros left out — what the class filter shows, so that a concept whose
    top :data:`TOP_CLASSES` classes leave that class out is still found."""
    ranked = top_classes(values.T, n)
    return {str(c): row for c, row in enumerate(ranked) if row}


def concept_set(basis: ConceptBasis, path: Path, atlas: Atlas, table: ImageTable,
                graph: dict[str, Any] | None = None, k: int = 10,
                by: Literal["cosine", "coefficient"] = "cosine", size: int = 128
                ) -> tuple[dict[str, Any], list[str]]:
    """One basis as a dashboard set, and notes about what it lacks."""
    layer = basis.layer
    if layer not in atlas.layers:
        raise IerfError(f"{path} holds concepts of layer {layer!r}, which atlas {atlas.path} "
                        f"does not have (it has {', '.join(atlas.layers)}); give --atlas")
    if basis.tokens != "patch":
        raise IerfError(f"{path} is a basis of {basis.tokens!r} tokens; atlases hold patch "
                        "PFVs: show CLS latents with `ierf cafe ground` + `ierf cafe report`")
    if atlas.meta.get("model") != basis.model or \
            atlas.meta.get("fingerprint") != basis.fingerprint:
        raise IerfError(f"{path} was fitted on {basis.model!r} with other weights than atlas "
                        f"{atlas.path} ({atlas.meta.get('model')!r}); give its own --atlas")
    X = atlas.pfvs(layer)
    if len(X) == 0:
        raise IerfError(f"atlas {atlas.path} has no samples of layer {layer!r}: nothing to show")
    k = min(k, len(X))
    records = atlas.records(layer)
    model = atlas.model()
    stats = concept_statistics(basis, X, records["predicted"], len(model.class_names))
    top, coef = nearest(basis, X, k, by)
    samples, overlays = _sample_pictures(atlas, layer, top.unique(), table, size)
    nodes, notes = _graph_nodes(graph, basis, path)
    K = basis.n_concepts
    if nodes:
        classes = list(graph["metadata"]["ierf"].get("class_names") or [])
        importance = torch.tensor([nodes[j]["importance"] if j in nodes else [0.0] * len(classes)
                                   for j in range(K)], dtype=torch.float32).reshape(K, -1)
        kind = "graph"
    else:
        classes, importance, kind = list(model.class_names), stats["share"], "share"
    ranked = top_classes(importance)
    edges = _edges(graph, nodes) if nodes else {}
    items = []
    for j, (row, cs) in enumerate(zip(top.tolist(), coef.tolist())):
        node = nodes.get(j)
        item = {"k": j, "label": node["clerp"] if node else f"concept {j}",
                "frequency": stats["frequency"][j].item(),
                "activation": stats["activation"][j].item(),
                "top": [samples[i] for i in row], "coef": cs, "importance": ranked[j],
                "node": node["node_id"] if node else None}
        if node:
            item.update(edges.get(node["node_id"], {"in": [], "out": [], "n_in": 0, "n_out": 0}))
        items.append(item)
    data = {"id": path.name, "model": basis.model, "layer": layer,
            "method": type(basis.extractor).__name__, "tokens": basis.tokens,
            "n_concepts": K, "n_channels": basis.n_channels, "n_pfvs": len(X),
            "atlas": str(atlas.path), "grid": atlas.meta.get("grids", {}).get(layer),
            "nearest_by": by, "classes": classes, "importance_kind": kind,
            "by_class": concepts_by_class(importance),
            "graph": graph["metadata"].get("slug") if nodes else None,
            "graph_layers": list(graph["metadata"]["ierf"].get("layers") or []) if nodes else [],
            "samples": overlays, "items": items}
    return data, notes


def _sample_pictures(atlas: Atlas, layer: str, used: torch.Tensor, table: ImageTable,
                     size: int) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """The atlas samples ``used`` drawn (image dimmed outside the iERF), as atlas index →
    position in the set's ``samples`` list, and that list."""
    records = atlas.records(layer)
    ierfs = atlas.ierfs(layer)
    model = atlas.model()
    out: list[dict[str, Any]] = []
    for i in range(0, len(used), 256):
        chunk = used[i:i + 256]
        images = model.denormalize(atlas.load_images(records["image"][chunk]))
        pictures = fit_size(ierf_highlight(images, ierfs[chunk]), size)
        for s, url in zip(chunk.tolist(), table.add(pictures)):
            out.append({"picture": url, "image": atlas.images[int(records["image"][s])],
                        "row": int(records["row"][s]), "col": int(records["col"][s])})
    return {s: n for n, s in enumerate(used.tolist())}, out


def _graph_nodes(graph: dict[str, Any] | None, basis: ConceptBasis, path: Path
                 ) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """The graph's concept nodes of this basis, by basis index (none when the graph was
    built with another basis of this layer or other weights), and why not."""
    if graph is None:
        return {}, []
    meta = graph["metadata"]["ierf"].get("metadata") or {}
    recorded = (meta.get("basis_paths") or {}).get(basis.layer)
    if recorded and Path(recorded).resolve() != path.resolve():
        return {}, [(f"{path.name}: the graph's {basis.layer} nodes come from another basis "
                    f"({recorded}): not linked")]
    if meta.get("fingerprint") not in (None, basis.fingerprint):
        return {}, [f"{path.name}: the graph was built on other weights: not linked"]
    nodes = {n["basis_index"]: n for n in graph["nodes"]
             if n.get("kind") == "concept" and n.get("layer_name") == basis.layer
             and isinstance(n.get("basis_index"), int)
             and 0 <= n["basis_index"] < basis.n_concepts}
    if not nodes:
        return {}, [f"{path.name}: the graph has no concept node of layer {basis.layer}"]
    return nodes, []


def _edges(graph: dict[str, Any], nodes: dict[int, dict[str, Any]]) -> dict[str, dict]:
    """Per node of ``nodes``: its ``TOP_EDGES`` strongest in and out edges as
    ``[other id, other label, weight]`` and their total counts."""
    mine = {n["node_id"] for n in nodes.values()}
    labels = {n["node_id"]: n.get("clerp") or n["node_id"] for n in graph["nodes"]}
    found: dict[str, dict[str, list]] = defaultdict(lambda: {"in": [], "out": []})
    for link in graph["links"]:
        w = link.get("weight")
        if w is None:
            continue
        if link["target"] in mine:
            found[link["target"]]["in"].append([link["source"], labels[link["source"]], w])
        if link["source"] in mine:
            found[link["source"]]["out"].append([link["target"], labels[link["target"]], w])
    out = {}
    for node, both in found.items():
        out[node] = {"n_in": len(both["in"]), "n_out": len(both["out"])}
        for side in ("in", "out"):
            out[node][side] = sorted(both[side], key=lambda e: -abs(e[2]))[:TOP_EDGES]
    return out


def export_concepts(source: str | Path, out: str | Path, *, atlas: str | Path | None = None,
                    graph: str | Path | None = None, k: int = 10,
                    by: Literal["cosine", "coefficient"] = "cosine",
                    images: Literal["embed", "folder"] = "embed", title: str | None = None,
                    progress: bool = False) -> Dashboard:
    """Write the concept dashboard of ``source`` (a basis, or an atlas: all its bases).

    Parameters
    ----------
    atlas : the atlas whose PFVs and iERFs are shown (default: ``source`` when it is an
        atlas, else the one each basis was fitted on).
    graph : a concept graph (file or folder) whose nodes and ICAT edges the concepts link to.
    k : nearest PFVs per concept; ``by``: nearest by cosine or by coefficient.
    images : ``"embed"`` (one file) or ``"folder"`` (``<out stem>_files/`` beside it).
    """
    from tqdm.auto import tqdm

    out = check_out(out)
    if k < 1:
        raise IerfError(f"k must be ≥ 1, got {k}")
    paths, own_atlas = find_bases(source)
    doc = load_graph(graph)[0] if graph is not None else None
    folder = out.parent / f"{out.stem}_files" if images == "folder" else None
    table = ImageTable(images, folder)
    sets, notes, opened = [], [], {}
    for path in tqdm(paths, desc="concept bases", disable=not progress):
        basis = ConceptBasis.load(path)
        where = basis_atlas(basis, path, atlas if atlas is not None else own_atlas).resolve()
        if where not in opened:
            opened[where] = open_atlas(where)
        data, why = concept_set(basis, path, opened[where], table, doc, k, by)
        sets.append(data)
        notes += why
    name = sets[0]["model"] + (f" {sets[0]['layer']}" if len(sets) == 1 else "")
    page = payload("concepts", sets, table.urls, title or f"{name} · ierf concepts", notes)
    write_page(out, page)
    return Dashboard(out, len(sets), sum(len(s["items"]) for s in sets), len(table.urls),
                     folder, notes)
