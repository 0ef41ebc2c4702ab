"""Reading and checking what the explorer shows: a concept-graph JSON, its routes, the
split trees of its bases (supernodes), and the difference of two graphs (diff mode).

The explorer is built against the JSON of :mod:`ierf.graph.export` (a superset of the
circuit-tracer / Neuronpedia attribution-graph schema), not against the Python objects, so
this module needs no torch. It checks what the page relies on and says in one line what is
wrong; anything it does not use passes through untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ierf.errors import IerfError

#: ``metadata.ierf.format`` of the graphs the explorer reads
SUPPORTED_FORMAT = "ierf.concept-graph"
#: the ``metadata.ierf.format_version`` values the explorer reads
SUPPORTED_VERSIONS = (1,)
KINDS = ("concept", "error", "class")


def graph_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/graph.json`` for a graph folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "graph.json"
    if not path.is_file():
        raise IerfError(f"no concept graph at {path}: give a graph folder (from `ierf graph "
                        "build` or `ierf graph explain`) or its graph.json")
    return path


def read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path`` with non-finite numbers (NaN, ±inf) read as ``None``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise IerfError(f"cannot read {what} {path} ({e.strerror or e})") from None
    try:
        return json.loads(text, parse_constant=lambda _: None)
    except json.JSONDecodeError as e:
        raise IerfError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); {what} "
                        "expected") from None


def load_graph(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The checked graph document at ``path`` (a file or a graph folder) and its file."""
    path = graph_file(path)
    return check_graph(read_json(path, "a concept graph"), str(path)), path


def check_graph(doc: Any, where: str = "the document") -> dict[str, Any]:
    """``doc`` if it is a concept graph the explorer can show; else an :class:`IerfError`."""
    if not isinstance(doc, dict) or not all(k in doc for k in ("metadata", "nodes", "links")):
        raise IerfError(f"{where} is not an attribution graph (it needs metadata, nodes and "
                        "links)")
    meta = doc["metadata"]
    ierf = meta.get("ierf") if isinstance(meta, dict) else None
    if not isinstance(ierf, dict) or ierf.get("format") != SUPPORTED_FORMAT:
        raise IerfError(f"{where} is not an ierf concept graph (no metadata.ierf.format = "
                        f"{SUPPORTED_FORMAT!r})")
    version = ierf.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise IerfError(version_message(version, where))
    if not isinstance(doc["nodes"], list) or not isinstance(doc["links"], list):
        raise IerfError(f"{where}: nodes and links must be lists")
    ids = set()
    for i, node in enumerate(doc["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("node_id"), str):
            raise IerfError(f"{where}: node {i} has no node_id")
        if node["node_id"] in ids:
            raise IerfError(f"{where}: node id {node['node_id']!r} is used twice")
        if node.get("kind") not in KINDS:
            raise IerfError(f"{where}: node {node['node_id']!r} has kind "
                            f"{node.get('kind')!r}, not one of {', '.join(KINDS)}")
        if not _is_position(node.get("layer")):
            raise IerfError(f"{where}: node {node['node_id']!r} has layer "
                            f"{node.get('layer')!r}, not a column number")
        ids.add(node["node_id"])
    for link in doc["links"]:
        if not isinstance(link, dict) or link.get("source") not in ids \
                or link.get("target") not in ids:
            ends = (link.get("source"), link.get("target")) if isinstance(link, dict) else link
            raise IerfError(f"{where}: link {ends!r} names a node that does not exist")
        if link.get("weight") is not None and not isinstance(link["weight"], (int, float)):
            raise IerfError(f"{where}: link {link['source']!r} → {link['target']!r} has "
                            f"weight {link['weight']!r}, not a number")
    return doc


def version_message(version: Any, where: str) -> str:
    """Why a graph of format version ``version`` is not shown, and what to do."""
    newest = max(SUPPORTED_VERSIONS)
    if isinstance(version, int) and version > newest:
        return (f"{where} has concept-graph format version {version}, newer than this "
                f"explorer reads ({newest}): upgrade ierf")
    return (f"{where} has concept-graph format version {version!r}; this explorer reads "
            f"version {newest}: rebuild the graph with this ierf")


def load_routes(path: str | Path, graph: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The routes of ``routes.json`` (from ``ierf graph explain``), checked against
    ``graph``: a list of ``{nodes, labels, strength, ...}`` whose nodes are graph nodes."""
    path = Path(path)
    routes = read_json(path, "routes")
    if not isinstance(routes, list):
        raise IerfError(f"{path} is not a list of routes (from `ierf graph explain`)")
    ids = {n["node_id"] for n in graph["nodes"]}
    for i, route in enumerate(routes):
        if not isinstance(route, dict) or not isinstance(route.get("nodes"), list) \
                or len(route["nodes"]) < 2:
            raise IerfError(f"{path}: route {i + 1} has no list of nodes")
        unknown = [n for n in route["nodes"] if n not in ids]
        if unknown:
            raise IerfError(f"{path}: route {i + 1} goes through node {unknown[0]!r}, which "
                            "this graph does not have (routes of another graph?)")
    return routes


def _is_position(value: Any) -> bool:
    """A column position: an int or a string of digits (circuit-tracer writes strings)."""
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value >= 0) or (isinstance(value, str)
                                                        and value.isdigit())


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


# -- supernodes: the bisecting k-means split trees of the graph's bases --------------------

#: where a basis folder keeps its split tree (``ierf.concepts.basis``, k-means extractor)
TREE_FILE, TREE_KEYS = "tensors.safetensors", ("tree_parents", "tree_sizes")


def load_hierarchy(doc: Mapping[str, Any]) -> tuple[dict[str, dict[str, list[int]]],
                                                     list[str]]:
    """Layer → the split tree ``{"parents", "sizes"}`` of its basis (GIG App. B; see
    :class:`ierf.concepts.extractors.kmeans.ClusterTree`), for the page's supernodes, and
    a note for each layer whose tree cannot be had.

    A tree is taken from ``metadata.ierf.hierarchy`` when the graph carries one, else from
    the basis folders the graph records (``metadata.ierf.metadata.basis_paths``, written by
    ``ierf graph build``). Bases that are not bisecting k-means have no tree (no note)."""
    ierf = doc["metadata"]["ierf"]
    given = ierf.get("hierarchy") if isinstance(ierf.get("hierarchy"), dict) else {}
    inner = ierf.get("metadata") if isinstance(ierf.get("metadata"), dict) else {}
    paths = inner.get("basis_paths") if isinstance(inner.get("basis_paths"), dict) else {}
    layers = {n.get("layer_name") for n in doc["nodes"] if n.get("kind") == "concept"}
    trees, notes = {}, []
    for layer in sorted(layer for layer in layers if isinstance(layer, str)):
        try:
            tree = given.get(layer) or (_read_tree(Path(paths[layer])) if layer in paths
                                        else None)
        except IerfError as e:
            notes.append(f"no supernodes for {layer}: {e}")
            continue
        if tree is not None:
            trees[layer] = check_tree(tree, layer)
    return trees, notes


def _read_tree(folder: Path) -> dict[str, list[int]] | None:
    """The split tree saved in a basis folder, ``None`` for an extractor without one."""
    from safetensors import SafetensorError, safe_open

    file = folder / TREE_FILE
    if not file.is_file():
        raise IerfError(f"its basis {folder} is gone (move it back or rebuild the graph)")
    try:
        with safe_open(str(file), framework="numpy") as f:
            if not set(TREE_KEYS) <= set(f.keys()):
                return None
            parents, sizes = (f.get_tensor(k).tolist() for k in TREE_KEYS)
    except (SafetensorError, OSError) as e:
        raise IerfError(f"{file} cannot be read ({e})") from None
    return {"parents": parents, "sizes": sizes}


def check_tree(tree: Any, layer: str) -> dict[str, list[int]]:
    """``tree`` if it is a split tree: ``parents`` of 2K − 1 nodes, leaves ``0…K−1``, the
    root (the one ``−1``) and every parent an internal node ``≥ K``; ``sizes`` alike."""
    parents = tree.get("parents") if isinstance(tree, dict) else None
    sizes = tree.get("sizes") if isinstance(tree, dict) else None
    ok = isinstance(parents, list) and isinstance(sizes, list) and len(parents) % 2 == 1 \
        and len(sizes) == len(parents) and all(isinstance(p, int) for p in parents)
    if ok:
        K = (len(parents) + 1) // 2
        ok = parents.count(-1) == 1 and all(p == -1 or (K <= p < len(parents) and
                                                         (p < i or i < K))
                                            for i, p in enumerate(parents))
    if not ok:
        raise IerfError(f"the split tree of layer {layer!r} is not a bisecting k-means tree "
                        "(parents of 2K − 1 nodes, each split before its children)")
    return {"parents": parents, "sizes": sizes}


# -- diff mode: two graphs, B − A ----------------------------------------------------------

#: node fields that are differences in a diff graph (``ierf.diagnose.compare.diff_graph``)
DIFF_FIELDS = ("importance", "activation", "frequency", "error_share")
#: per node kind, the fields whose A and B values the page shows beside the difference
SIDE_FIELDS = {"concept": ("activation", "frequency", "influence"),
               "error": ("error_share", "influence"), "class": ("activation", "token_prob")}


def diff_documents(a: Mapping[str, Any], b: Mapping[str, Any], base_a: Path, base_b: Path,
                   names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """The graph of differences ``b − a``, in the format of ``ierf diagnose``'s
    ``diff-graph.json`` (:func:`ierf.diagnose.compare.diff_graph`): node importances,
    activations, frequencies and error shares, edge weights and class logits are
    differences (class probabilities: ``b``'s), ``metadata.ierf.metadata.diff`` says
    ``"<b> - <a>"``. Unlike ``diff_graph`` the two graphs need not have the same nodes: a
    node or edge missing from one counts as zero there, and is marked. Added fields:
    ``diff_only`` (``"a"`` or ``"b"``) on nodes of one graph, ``diff_sides`` (their A and B
    values) on nodes, ``weight_a`` / ``weight_b`` on links. Thumbnail paths become
    absolute (``base_a`` / ``base_b``: the graphs' folders)."""
    ia, ib = a["metadata"]["ierf"], b["metadata"]["ierf"]
    for key, what in (("layers", "layers"), ("classes", "classes")):
        if ia.get(key) != ib.get(key):
            raise IerfError(f"the two graphs have different {what} ({ia.get(key)} and "
                            f"{ib.get(key)}); diff graphs of the same layers and classes "
                            "(e.g. graph-clean.json and graph-attacked.json of `ierf "
                            "diagnose`, or two per-class graphs of one build)")
    na = {n["node_id"]: n for n in a["nodes"]}
    nb = {n["node_id"]: n for n in b["nodes"]}
    nodes = []
    for node_id in [*nb, *(i for i in na if i not in nb)]:
        old, new = na.get(node_id), nb.get(node_id)
        node = json.loads(json.dumps(new if new is not None else old))
        for field in DIFF_FIELDS:
            if field in node:
                node[field] = _minus(new and new.get(field), old and old.get(field))
        if node["kind"] == "class":
            node["activation"] = _minus(new and new.get("activation"),
                                        old and old.get("activation"))
            node["token_prob"] = new.get("token_prob", 0.0) if new else 0.0
            node["influence"] = node["token_prob"]
        elif isinstance(node.get("importance"), list):
            node["influence"] = sum(abs(v) for v in node["importance"] if v is not None)
        if old is None or new is None:
            node["diff_only"] = "b" if old is None else "a"
        node["diff_sides"] = {side: None if n is None else {
            f: n.get(f) for f in SIDE_FIELDS.get(node["kind"], ()) if f in n}
            for side, n in (("a", old), ("b", new))}
        thumbs = node.get("thumbnails")
        if isinstance(thumbs, list):
            base = base_b if new is not None else base_a
            node["thumbnails"] = [t if not isinstance(t, str) or t.startswith("data:")
                                  else str((base / t).resolve()) for t in thumbs]
        nodes.append(node)
    wa = {(l["source"], l["target"]): l.get("weight") or 0.0 for l in a["links"]}
    wb = {(l["source"], l["target"]): l.get("weight") or 0.0 for l in b["links"]}
    links = [{"source": s, "target": t, "weight": wb.get((s, t), 0.0) - wa.get((s, t), 0.0),
              "weight_a": wa.get((s, t)), "weight_b": wb.get((s, t))}
             for s, t in [*wb, *(e for e in wa if e not in wb)]
             if wb.get((s, t), 0.0) != wa.get((s, t), 0.0)]
    meta = json.loads(json.dumps(b["metadata"]))
    inner = meta["ierf"].setdefault("metadata", {})
    inner["diff"] = f"{names[1]} - {names[0]}"
    ids = [*a["metadata"].get("prompt_tokens", []), *b["metadata"].get("prompt_tokens", [])]
    inner["image_ids"] = meta["prompt_tokens"] = ids
    meta["prompt"] = " ".join(map(str, ids))
    meta["slug"] = f"{names[1]} − {names[0]}"
    return {**{k: v for k, v in b.items() if k not in ("metadata", "nodes", "links")},
            "metadata": meta, "nodes": nodes, "links": links}


def _minus(new: Any, old: Any) -> Any:
    """``new − old`` elementwise, a missing side counting as zero."""
    if isinstance(new, list) or isinstance(old, list):
        new = new if isinstance(new, list) else [0.0] * len(old)
        old = old if isinstance(old, list) else [0.0] * len(new)
        return [_minus(x, y) for x, y in zip(new, old, strict=True)]
    if new is None and old is None:
        return None
    return (new or 0.0) - (old or 0.0)
