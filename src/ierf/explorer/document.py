"""Reading and checking what the explorer shows: a concept-graph JSON and its routes.

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
