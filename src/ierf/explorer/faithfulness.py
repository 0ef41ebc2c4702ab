"""Edge faithfulness in the explorer's node panel: the interlayer C-deletion / C-insertion
AUCs per target concept that ``ierf bench graph`` writes (``<a>-<b>/targets.json``; IERF Sec.
VI-C1, :class:`ierf.bench.graph.TargetAUCs`), checked against the graph they are shown with.

For a target concept ``t`` of layer ``b``, its parents in ``a`` are deleted from (inserted
into) the image's ``X̂^a`` in the order of ``t``'s incoming ICAT edges while ``t``'s alignment
in ``b`` is followed; the AUCs over the fraction of parents are averaged over the
(image, target) pairs of ``t``. A lower deletion AUC and a higher insertion AUC than a random
order mean that the edges rank the parents faithfully.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

from ierf.errors import IerfError
from ierf.explorer.document import read_json

#: ``format`` / ``format_version`` of ``targets.json``
FORMAT, VERSION = "ierf.edge-faithfulness", 1
FILE = "targets.json"


def faithfulness_files(path: str | Path) -> list[Path]:
    """``path`` itself, or the ``targets.json`` files in folder ``path`` and its
    sub-folders (``ierf bench graph``'s output: one folder per layer pair)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted([*path.glob(FILE), *path.glob(f"*/{FILE}")])
    if not files:
        raise IerfError(f"no {FILE} at {path}: give the output folder of `ierf bench graph "
                        "ATLAS --layers L1,L2,... -o DIR` (run it with this ierf)")
    return files


def load_faithfulness(path: str | Path, doc: Mapping[str, Any]
                      ) -> tuple[dict[str, Any], list[str]]:
    """The page's ``faithfulness`` data for graph ``doc`` and a note for each part left out.

    Returns ``{"method": the graph's ICAT method, "pairs": [{source, target, methods,
    n_images, targets_per_image, min_alignment}], "nodes": {node id: {"source", "pairs",
    "deletion": {method: AUC}, "insertion": {method: AUC}}}}``.
    Refuses files measured on another model or other bases than the graph's (the same
    dictionary digest where both record one — a copied basis folder is the same basis —,
    else the same basis folder)."""
    ierf = doc["metadata"]["ierf"]
    inner = ierf.get("metadata") if isinstance(ierf.get("metadata"), dict) else {}
    steps = set(pairwise(ierf.get("layers") or []))
    ids = {n["node_id"] for n in doc["nodes"] if n.get("kind") == "concept"}
    out: dict[str, Any] = {"method": ierf.get("method"), "pairs": [], "nodes": {}}
    notes = []
    for file in faithfulness_files(path):
        data = _check(read_json(file, "edge faithfulness"), file, doc, inner)
        a, b = data["source"], data["target"]
        if (a, b) not in steps:
            notes.append(f"{file}: {a} → {b} is not an edge set of this graph; left out")
            continue
        nodes = {k: dict(v, source=a) for k, v in data["nodes"].items() if k in ids}
        out["pairs"].append({k: data.get(k) for k in ("source", "target", "methods",
                                                      "n_images", "targets_per_image",
                                                      "min_alignment")})
        out["nodes"].update(nodes)
        if out["method"] not in data["methods"]:
            notes.append(f"{file} did not measure the graph's ICAT method "
                         f"{out['method']!r}; its panel shows the methods it has")
    if not out["nodes"]:
        notes.append(f"the edge faithfulness at {path} covers no concept of this graph")
    return out, notes


def _check(data: Any, file: Path, doc: Mapping[str, Any],
           inner: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` if it is a ``targets.json`` of this graph's model and bases."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IerfError(f"{file} is not an edge-faithfulness file of `ierf bench graph` (no "
                        f"format {FORMAT!r})")
    if data.get("format_version") != VERSION:
        raise IerfError(f"{file} has format version {data.get('format_version')!r}; this "
                        f"ierf reads version {VERSION}: re-run `ierf bench graph`")
    if not isinstance(data.get("nodes"), dict) or not isinstance(data.get("methods"), list) \
            or not all(isinstance(data.get(k), str) for k in ("source", "target")):
        raise IerfError(f"{file}: needs source, target, methods and nodes")
    for node, v in data["nodes"].items():
        if not isinstance(v, dict) or not all(
                isinstance(v.get(k), dict) and all(x is None or isinstance(x, (int, float))
                                                   for x in v[k].values())
                for k in ("deletion", "insertion")):
            raise IerfError(f"{file}: node {node!r} needs deletion and insertion AUCs per "
                            "method")
    model = doc["metadata"].get("scan")
    if model and data.get("model") and model != data["model"]:
        raise IerfError(f"{file} was measured on {data['model']!r}, the graph is of "
                        f"{model!r}: run `ierf bench graph` on the graph's atlas")
    if inner.get("fingerprint") is not None and data.get("fingerprint") is not None \
            and inner["fingerprint"] != data["fingerprint"]:
        raise IerfError(f"{file} was measured on other weights of {data.get('model')!r} "
                        "than the graph: run `ierf bench graph` on the graph's atlas")
    digests, known = _basis_digests(inner), _basis_paths(inner)
    measured = data.get("basis_digests") if isinstance(data.get("basis_digests"), dict) else {}
    for layer, where in (data.get("basis_paths") or {}).items():
        if layer in digests and layer in measured:           # the same concepts, any folder
            same = digests[layer] == measured[layer]
        else:                                                # older files: the same folder
            same = layer not in known or Path(known[layer]).resolve() == Path(where).resolve()
        if not same:
            raise IerfError(f"{file} measured the concepts of {layer} in {where}, the graph "
                            f"uses {known.get(layer, 'other ones')}: its node numbers name "
                            "other concepts; run `ierf bench graph` with the graph's bases "
                            "(--concepts)")
    return data


def _basis_digests(inner: Mapping[str, Any]) -> dict[str, str]:
    """Layer → the dictionary digest the graph records (``bases.*.digest``)."""
    bases = inner.get("bases") if isinstance(inner.get("bases"), dict) else {}
    return {l: b["digest"] for l, b in bases.items()
            if isinstance(b, dict) and isinstance(b.get("digest"), str)}


def _basis_paths(inner: Mapping[str, Any]) -> dict[str, str]:
    """Layer → the basis folder the graph records (``basis_paths``, else ``bases.*.path``)."""
    paths = inner.get("basis_paths") if isinstance(inner.get("basis_paths"), dict) else {}
    bases = inner.get("bases") if isinstance(inner.get("bases"), dict) else {}
    found = {l: b["path"] for l, b in bases.items()
             if isinstance(b, dict) and isinstance(b.get("path"), str)}
    return {**found, **{l: p for l, p in paths.items() if isinstance(p, str)}}
