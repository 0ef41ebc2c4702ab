"""JSON export of a :class:`~ierf.graph.concept_graph.ConceptGraph` (IERF Sec. VI).

The file is a superset of the Neuronpedia / circuit-tracer attribution-graph schema, so their
tools can read its structure, with our vision fields added:

- ``metadata``: ``slug``, ``scan`` (model name), ``prompt`` / ``prompt_tokens`` (image ids),
  ``schema_id``, ``info``, plus ``ierf`` (``format``, ``format_version``, fingerprint, layers,
  method and settings, classes, bases, edge sets, pruning, ...);
- ``qParams``: ``pinnedIds`` (empty), ``supernodes`` (circuit-tracer's ``[name, node_id,
  ...]`` lists, from ``metadata["supernodes"]``: see :mod:`ierf.graph.hierarchy`; read back
  into it), ``linkType``, ``clickedId``, ``sg_pos``, and our pruning settings;
- ``nodes``: circuit-tracer's fields (``node_id``, ``jsNodeId``, ``feature``, ``layer`` — the
  position in the chain as a string —, ``ctx_idx``, ``reverse_ctx_idx``, ``run_idx``,
  ``feature_type``, ``token_prob``, ``is_target_logit``, ``clerp``, ``influence``,
  ``activation``) with ``feature_type`` ``"cross layer transcoder"`` (concept),
  ``"mlp reconstruction error"`` (error) or ``"logit"`` (class), and ours: ``kind``
  (``concept`` / ``error`` / ``class``), ``layer_name``, ``basis_index``, ``importance``
  (one value per class of ``metadata.ierf.classes``), ``frequency``, ``error_share``,
  ``thumbnails`` (optional paths);
- ``links``: ``{source, target, weight}`` for every non-zero edge.

``influence`` is ``Σ_c |importance_c|`` for concept and error nodes and the mean class
probability for class nodes; ``activation`` the mean coefficient, the residual share, or the
mean logit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ierf.errors import IerfError
from ierf.graph.concept_graph import ERROR, OUTPUT, ConceptGraph, Edges, LayerNodes
from ierf.io import atomic_path

FORMAT = "ierf.concept-graph"
FORMAT_VERSION = 1
FEATURE_TYPES = {"concept": "cross layer transcoder", "error": "mlp reconstruction error",
                 "class": "logit"}
NODE_FIELDS = ("node_id", "jsNodeId", "feature", "layer", "ctx_idx", "reverse_ctx_idx",
               "run_idx", "feature_type", "token_prob", "is_target_logit", "clerp",
               "influence", "activation")
META_FIELDS = ("layers", "method", "classes", "class_names", "edges", "metadata")


def to_json(graph: ConceptGraph, path: str | Path, *, slug: str | None = None,
            thumbnails: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write ``graph`` to ``path`` atomically (complete or not at all).

    Parameters
    ----------
    slug : the graph's slug (Neuronpedia); the file's stem by default.
    thumbnails : node id → paths of its iERF thumbnails / concept card.
    """
    path = Path(path)
    data = to_dict(graph, slug or path.stem, thumbnails or {})
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, default=str))
    return path


def to_dict(graph: ConceptGraph, slug: str,
            thumbnails: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The JSON document of ``graph`` as a dict (see the module docstring)."""
    if not graph.nodes:
        raise IerfError("this concept graph has no concept layers: nothing to export")
    thumbnails = thumbnails or {}
    nodes = []
    for pos, (layer, n) in enumerate(graph.nodes.items()):
        ids = graph.node_ids(layer)
        for j, k in enumerate(n.index.tolist()):
            nodes.append(_node(ids[j], pos, layer, "concept", k, n.labels[j],
                               float(n.importance[j].abs().sum()), float(n.activation[j]),
                               importance=n.importance[j].tolist(), basis_index=k,
                               frequency=float(n.frequency[j])))
        nodes.append(_node(ids[-1], pos, layer, "error", -1, f"{layer} residual",
                           float(n.error_importance.abs().sum()), n.error_share,
                           importance=n.error_importance.tolist(), error_share=n.error_share))
    out = len(graph.nodes)
    for j, c in enumerate(graph.classes.tolist()):
        nodes.append(_node(f"{OUTPUT}:{c}", out, OUTPUT, "class", c, graph.class_names[j],
                           float(graph.probs[j]), float(graph.logits[j]),
                           token_prob=float(graph.probs[j]), is_target_logit=True))
    for node in nodes:
        if node["node_id"] in thumbnails:
            node["thumbnails"] = [str(p) for p in thumbnails[node["node_id"]]]
    links = []
    for e in graph.edges:
        src, dst = graph.node_ids(e.source), graph.node_ids(e.target)
        for i, t in (e.weights != 0).nonzero().tolist():
            links.append({"source": src[i], "target": dst[t], "weight": float(e.weights[i, t])})
    present = {n["node_id"] for n in nodes}
    groups = [[name, *[i for i in ids if i in present]]
              for name, ids in graph.metadata.get("supernodes", {}).items()]
    ierf = {"format": FORMAT, "format_version": FORMAT_VERSION, "layers": graph.layers,
            "method": graph.metadata.get("method"), "classes": graph.classes.tolist(),
            "class_names": graph.class_names,
            "edges": [{"source": e.source, "target": e.target, "method": e.method,
                       "gap": None if e.gap is None else e.gap.tolist()} for e in graph.edges],
            "metadata": {k: v for k, v in graph.metadata.items() if k != "supernodes"}}
    ids = [str(i) for i in graph.metadata.get("image_ids", [])]
    meta = {"slug": slug, "scan": graph.metadata.get("model"), "prompt": " ".join(ids),
            "prompt_tokens": ids, "schema_id": None, "node_threshold": None,
            "info": {"creator_name": "ierf", "source": "ierf.graph (IERF Sec. VI, ICAT)"},
            "ierf": ierf}
    q = {"pinnedIds": [], "supernodes": [g for g in groups if len(g) > 1],
         "linkType": "both", "clickedId": "",
         "sg_pos": "", "pruning": graph.metadata.get("pruning")}
    return {"metadata": meta, "qParams": q, "nodes": nodes, "links": links}


def save_thumbnails(thumbnails: Mapping[str, torch.Tensor],
                    folder: str | Path) -> dict[str, list[str]]:
    """Write node thumbnails ``(3, H, W)`` in [0, 1] as ``folder/thumbnails/<layer>_<k>.png``;
    node id → ``[path relative to folder]`` (the ``thumbnails`` argument of :func:`to_json`)."""
    import numpy as np
    from PIL import Image

    out = {}
    for node, image in thumbnails.items():
        name = "thumbnails/" + "".join(c if c.isalnum() or c in "-." else "_" for c in node)
        pixels = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255)
        with atomic_path(Path(folder) / f"{name}.png") as tmp:
            Image.fromarray(pixels.round().astype(np.uint8)).save(tmp, format="PNG")
        out[node] = [f"{name}.png"]
    return out


def relocate_thumbnails(thumbnails: Mapping[str, Sequence[str]], source: str | Path,
                        target: str | Path) -> dict[str, list[str]]:
    """Thumbnail paths relative to folder ``source`` (or absolute) made relative to folder
    ``target``: the same files, named from a JSON written elsewhere."""
    return {node: [os.path.relpath(Path(source, p), target) for p in paths]
            for node, paths in thumbnails.items()}


def from_json(path: str | Path) -> ConceptGraph:
    """Read a graph written by :func:`to_json`, checking its format, version and fields."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IerfError(f"{path} is not a readable JSON concept graph ({e})") from None
    return from_dict(data, str(path))


def from_dict(data: Any, where: str = "the document") -> ConceptGraph:
    """The :class:`ConceptGraph` of a JSON document (see :func:`from_json`)."""
    if not isinstance(data, dict) or not all(k in data for k in ("metadata", "nodes", "links")):
        raise IerfError(f"{where} is not an attribution graph (needs metadata, nodes, links)")
    ierf = data["metadata"].get("ierf") if isinstance(data["metadata"], dict) else None
    if not isinstance(ierf, dict) or ierf.get("format") != FORMAT:
        raise IerfError(f"{where} is not an ierf concept graph (no metadata.ierf.format = "
                        f"{FORMAT!r}); graphs of other tools are not read back")
    if ierf.get("format_version") != FORMAT_VERSION:
        raise IerfError(f"{where} has concept-graph format version "
                        f"{ierf.get('format_version')!r}; this ierf reads version "
                        f"{FORMAT_VERSION} (upgrade ierf or rebuild the graph)")
    missing = [k for k in META_FIELDS if k not in ierf]
    if missing:
        raise IerfError(f"{where}: metadata.ierf lacks {', '.join(missing)}")
    nodes = {}
    for n in data["nodes"]:
        lacking = [k for k in (*NODE_FIELDS, "kind", "layer_name") if k not in n]
        if lacking:
            raise IerfError(f"{where}: node {n.get('node_id', '?')!r} lacks "
                            f"{', '.join(lacking)}")
        nodes[n["node_id"]] = n
    layers, classes = list(ierf["layers"]), torch.tensor(ierf["classes"], dtype=torch.long)
    by_layer: dict[str, LayerNodes] = {}
    for layer in layers[:-1]:
        mine = [n for n in data["nodes"] if n["layer_name"] == layer]
        concepts = [n for n in mine if n["kind"] == "concept"]
        err = [n for n in mine if n["kind"] == ERROR]
        if len(err) != 1:
            raise IerfError(f"{where}: layer {layer!r} needs exactly one error node")
        by_layer[layer] = LayerNodes(
            layer, torch.tensor([n["basis_index"] for n in concepts], dtype=torch.long),
            [n["clerp"] for n in concepts],
            torch.tensor([n["importance"] for n in concepts]).reshape(len(concepts),
                                                                      len(classes)),
            torch.tensor([n["activation"] for n in concepts]),
            torch.tensor([n["frequency"] for n in concepts]),
            float(err[0]["error_share"]), torch.tensor(err[0]["importance"]))
    outs = {n["feature"]: n for n in data["nodes"] if n["kind"] == "class"}
    if sorted(outs) != sorted(classes.tolist()):
        raise IerfError(f"{where}: class nodes {sorted(outs)} differ from metadata classes "
                        f"{classes.tolist()}")
    graph = ConceptGraph(layers, by_layer, classes, list(ierf["class_names"]),
                         torch.tensor([outs[c]["activation"] for c in classes.tolist()]),
                         torch.tensor([outs[c]["token_prob"] for c in classes.tolist()]),
                         [], dict(ierf["metadata"]))
    graph.edges = _edges(graph, ierf["edges"], data["links"], nodes, where)
    groups = _supernodes(data.get("qParams"), nodes, where)
    if groups:
        graph.metadata["supernodes"] = groups
    return graph


def _supernodes(q: Any, nodes: Mapping[str, Any], where: str) -> dict[str, list[str]]:
    """``qParams.supernodes`` (``[[name, node_id, ...], ...]``) as name → node ids; a name
    used twice gets `` (2)``, `` (3)``, ... appended."""
    found = q.get("supernodes") if isinstance(q, dict) else None
    if not found:
        return {}
    if not isinstance(found, list):
        raise IerfError(f"{where}: qParams.supernodes must be a list of [name, node_id, ...]")
    out: dict[str, list[str]] = {}
    for group in found:
        if not isinstance(group, list) or len(group) < 2 or \
                not all(isinstance(g, str) for g in group):
            raise IerfError(f"{where}: supernode {group!r} is not [name, node_id, ...]")
        unknown = [i for i in group[1:] if i not in nodes]
        if unknown:
            raise IerfError(f"{where}: supernode {group[0]!r} names node {unknown[0]!r}, "
                            "which does not exist")
        name, n = group[0], 1
        while name in out:
            n += 1
            name = f"{group[0]} ({n})"
        out[name] = list(group[1:])
    return out


def _node(node_id: str, pos: int, layer: str, kind: str, feature: int, clerp: str,
          influence: float, activation: float, **ours: Any) -> dict[str, Any]:
    node = {"node_id": node_id, "jsNodeId": node_id, "feature": feature, "layer": str(pos),
            "ctx_idx": 0, "reverse_ctx_idx": 0, "run_idx": 0,
            "feature_type": FEATURE_TYPES[kind], "token_prob": 0.0, "is_target_logit": False,
            "clerp": clerp, "influence": influence, "activation": activation, "kind": kind,
            "layer_name": layer}
    node.update(ours)
    return node


def _edges(graph: ConceptGraph, sets: list[dict[str, Any]], links: list[dict[str, Any]],
           nodes: Mapping[str, Any], where: str) -> list[Edges]:
    """Dense edge tensors from the links, after checking that every link's ends exist."""
    pairs = list(zip(graph.layers[:-1], graph.layers[1:]))
    if [(s["source"], s["target"]) for s in sets] != pairs:
        raise IerfError(f"{where}: edge sets do not follow the layer chain")
    pos, W = {}, []
    for k, (a, b) in enumerate(pairs):
        rows = graph.node_ids(a)
        cols = graph.node_ids(b) if b == OUTPUT else graph.node_ids(b)[:-1]  # no error target
        pos.update({(r, c): (k, i, j) for i, r in enumerate(rows) for j, c in enumerate(cols)})
        W.append(torch.zeros(len(rows), len(cols)))
    for link in links:
        if link.get("source") not in nodes or link.get("target") not in nodes:
            raise IerfError(f"{where}: link {link.get('source')!r} → {link.get('target')!r} "
                            "names a node that does not exist")
        if (link["source"], link["target"]) not in pos:
            raise IerfError(f"{where}: link {link['source']!r} → {link['target']!r} does not "
                            "join consecutive layers")
        k, i, j = pos[link["source"], link["target"]]
        W[k][i, j] = link["weight"]
    return [Edges(a, b, W[k], s["method"], None if s["gap"] is None else torch.tensor(s["gap"]))
            for k, ((a, b), s) in enumerate(zip(pairs, sets))]
