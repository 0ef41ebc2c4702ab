"""``export_html``: one concept graph (and its routes) → one self-contained HTML page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ierf.errors import IerfError
from ierf.explorer.document import (
    check_graph,
    diff_documents,
    load_graph,
    load_hierarchy,
    load_routes,
)
from ierf.explorer.faithfulness import load_faithfulness
from ierf.explorer.images import collect
from ierf.explorer.page import render_page
from ierf.io import atomic_path

#: the explorer's own data version (the ``explorer`` part of the embedded payload)
PAYLOAD_VERSION = 1


@dataclass
class Export:
    """What :func:`export_html` wrote.

    Attributes
    ----------
    path : the page.
    nodes, links : how many the graph has.
    thumbnails : how many nodes have at least one image in the page.
    folder : the folder holding the images (``images="folder"``), else ``None``.
    routes : how many routes are overlaid (0 without a routes file).
    warnings : what the page shows without (missing thumbnails, ...), one line each.
    supernodes : the layers whose nodes the page can collapse into their bisecting k-means
        parents (those with a split tree).
    diff : ``"<B> - <A>"`` for a diff page, else ``None``.
    faithful : how many concept nodes show the faithfulness of their incoming edges.
    """

    path: Path
    nodes: int
    links: int
    thumbnails: int
    folder: Path | None
    routes: int
    warnings: list[str] = field(default_factory=list)
    supernodes: list[str] = field(default_factory=list)
    diff: str | None = None
    faithful: int = 0


def export_html(graph: str | Path, out: str | Path, *, routes: str | Path | bool | None = None,
                images: Literal["embed", "folder"] = "embed", title: str | None = None,
                diff: str | Path | None = None, names: tuple[str, str] | None = None,
                faithfulness: str | Path | None = None) -> Export:
    """Write the explorer page of ``graph`` to ``out`` (atomically).

    Parameters
    ----------
    graph : a graph.json (from :func:`ierf.graph.to_json`) or a folder holding one.
    out : the HTML file to write.
    routes : a ``routes.json`` of ``ierf graph explain`` to overlay (per-image mode);
        ``None`` takes the one beside the graph file when there is one; ``False``, none.
    images : ``"embed"`` puts the thumbnails into the page as data URIs (one file);
        ``"folder"`` copies them into ``<out stem>_files/`` beside the page.
    title : the page title (default: the graph's slug and model).
    diff : a second graph B: the page shows the differences B − ``graph`` (clean vs
        attacked, two classes), in the format of ``ierf diagnose``'s diff graph (see
        :func:`ierf.explorer.document.diff_documents`); routes only when given.
    names : what to call ``graph`` and ``diff`` in the page (default: their file or folder
        names).
    faithfulness : the output folder of ``ierf bench graph`` (or one of its
        ``targets.json``): each concept's panel shows the interlayer C-deletion /
        C-insertion AUCs of its incoming edges (:mod:`ierf.explorer.faithfulness`).
    """
    out = Path(out)
    if out.is_dir():
        raise IerfError(f"{out} is a folder; give the HTML file to write, e.g. {out}/graph.html")
    doc, path = load_graph(graph)
    label = None
    if diff is not None:
        other, other_path = load_graph(diff)
        names = names or _names(path, other_path)
        doc = check_graph(diff_documents(doc, other, path.parent, other_path.parent, names),
                          "the diff of the two graphs")
        label = doc["metadata"]["ierf"]["metadata"]["diff"]
        routes = False if routes is None else routes
    route_file = _route_file(path, routes)
    trees, tree_notes = load_hierarchy(doc)
    found = load_routes(route_file, doc) if route_file else None
    faithful, faith_notes = (load_faithfulness(faithfulness, doc) if faithfulness is not None
                             else (None, []))
    folder = out.parent / f"{out.stem}_files" if images == "folder" else None
    thumbs = collect(doc["nodes"], path.parent, images, folder)
    missing = _missing(thumbs.missing)
    payload: dict[str, Any] = {
        "explorer": {"version": PAYLOAD_VERSION, "graph_file": path.name,
                     "routes_file": None if route_file is None else route_file.name,
                     "warnings": missing + tree_notes + faith_notes},
        "graph": doc, "images": thumbs.urls, "routes": found, "hierarchy": trees,
        "faithfulness": faithful}
    page = render_page(payload, title or _title(doc))
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return Export(out, len(doc["nodes"]), len(doc["links"]), len(thumbs.urls), folder,
                  len(found or []),
                  _content(doc, len(thumbs.urls)) + missing + tree_notes + faith_notes,
                  sorted(trees), label, len(faithful["nodes"]) if faithful else 0)


def _names(a: Path, b: Path) -> tuple[str, str]:
    """Names of two graph files for a diff page: their stems, else their folders'."""
    for name_a, name_b in ((a.stem, b.stem), (a.parent.name, b.parent.name)):
        if name_a != name_b:
            return name_a, name_b
    return "A", "B"


def _route_file(graph: Path, routes: str | Path | bool | None) -> Path | None:
    if routes is False:
        return None
    if routes is None or routes is True:
        beside = graph.parent / "routes.json"
        if beside.is_file():
            return beside
        if routes is True:
            raise IerfError(f"no routes.json beside {graph}; run `ierf graph explain` first")
        return None
    routes = Path(routes)
    if not routes.is_file():
        raise IerfError(f"no routes file at {routes} (`ierf graph explain` writes "
                        "GRAPH/explain-<image>/routes.json)")
    return routes


def _missing(missing: list[str]) -> list[str]:
    """The page's notice about thumbnails left out (none when none is)."""
    if not missing:
        return []
    shown = "; ".join(missing[:3]) + (f"; … ({len(missing) - 3} more)" if len(missing) > 3
                                      else "")
    return [f"{len(missing)} thumbnail(s) left out, shown as placeholders: {shown}"]


def _content(doc: dict[str, Any], with_images: int) -> list[str]:
    """What the page says about the graph itself (the page finds these on its own)."""
    if not doc["nodes"]:
        return ["the graph has no nodes: the page says so and draws nothing"]
    out = [] if doc["links"] else ["the graph has no edges: only its nodes are drawn"]
    if not with_images:
        out.append("no node has a thumbnail: nodes show placeholders")
    return out


def _title(doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    parts = [str(meta.get(k)) for k in ("slug", "scan") if meta.get(k)]
    return " · ".join(parts + ["ierf concept graph"])
