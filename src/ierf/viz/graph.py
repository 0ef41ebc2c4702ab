"""Static pictures of an Interlayer Concept Graph (IERF Sec. VI-D, Figs. 9, 12; App. VII-H)
and of one image's concept routes.

- :func:`draw_graph` — layers as columns (input side left, class nodes right), nodes as boxes
  with a label and an optional thumbnail, edges as curves whose width and opacity grow with
  ``|w| / max |w|`` of their layer pair, red for positive and blue for negative ICAT (the
  ``bwr`` convention of the saliency overlays); the error node is a dashed grey box.
- :func:`draw_routes` — the image and, per route node, where it is active and its iERF.

PNG, SVG or PDF by the suffix, written atomically. Every node box carries ``gid =
"node:<node id>"`` (the ``id`` of its group in an SVG).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ierf.errors import IerfError
from ierf.graph.concept_graph import ERROR, OUTPUT, ConceptGraph
from ierf.graph.routes import NodeLocations, Route
from ierf.io import atomic_path
from ierf.viz.cards import highlight
from ierf.viz.overlay import normalize_map

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
POSITIVE, NEGATIVE, ROUTE = "#c0392b", "#2e6fbd", "#e69f00"
CLASS_FACE, ERROR_FACE, ERROR_EDGE = "#fdf1d8", "#eeeeee", "#888888"
Thumbnail = torch.Tensor | np.ndarray | str | Path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG / SVG / PDF (by the suffix), atomically, and close it."""
    plt = _plt()
    fmt = FORMATS.get(Path(path).suffix.lower())
    try:
        if fmt is None:
            raise IerfError(f"cannot write {Path(path).name!r}: use a .png, .svg or .pdf path")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
    finally:
        plt.close(fig)
    return Path(path)


def _wrap(text: str, width: int, lines: int = 2) -> str:
    parts = textwrap.wrap(text, width, break_on_hyphens=True) or [""]
    if len(parts) > lines:
        parts = parts[:lines]
        parts[-1] = parts[-1][:width - 1] + "…"
    return "\n".join(parts)


def _image(thumb: Thumbnail) -> np.ndarray:
    """A thumbnail as an (h, w, 3|4) float array in [0, 1]."""
    if isinstance(thumb, (str, Path)):
        if not Path(thumb).is_file():
            raise IerfError(f"thumbnail {str(thumb)!r} does not exist; pass an image file or "
                            "an array")
        return _plt().imread(str(thumb))
    a = thumb.detach().float().cpu().numpy() if isinstance(thumb, torch.Tensor) else \
        np.asarray(thumb, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise IerfError(f"a thumbnail must be an image (H, W[, 3]) or (3, H, W), got shape "
                        f"{a.shape}")
    return np.clip(a, 0, 1)


# -- the graph ----------------------------------------------------------------------------


def _columns(graph: ConceptGraph) -> list[list[str]]:
    """Node ids per column, ordered top to bottom: class nodes as in the graph, each earlier
    layer by the |edge|-weighted mean height of its children (fewer crossings), the error
    node last."""
    cols = [graph.node_ids(OUTPUT)]
    y = torch.arange(len(cols[0]), dtype=torch.float32)
    for e in reversed(graph.edges):
        w = e.weights[:-1].abs().float()
        mass = w.sum(1)
        bary = torch.where(mass > 0, (w @ y) / mass.clamp_min(1e-30), float(len(y)))
        order = bary.argsort(stable=True)
        ids = graph.node_ids(e.source)
        cols.insert(0, [ids[i] for i in order.tolist()] + [ids[-1]])
        y = torch.empty(len(order)).scatter_(0, order, torch.arange(len(order)).float())
    return cols


def graph_figure(graph: ConceptGraph, thumbnails: Mapping[str, Thumbnail] | None = None, *,
                 routes: Sequence[Route] = (), min_weight: float = 0.02,
                 max_nodes: int = 40, title: str = "") -> Any:
    """The figure :func:`draw_graph` writes (a matplotlib ``Figure``; close it yourself).

    Parameters
    ----------
    graph : a (pruned, Sec. VI-D) :class:`ConceptGraph`.
    thumbnails : node id → image (tensor (3, H, W) / (H, W, 3) in [0, 1], array, or a file):
        e.g. :func:`node_thumbnails` of one image, or a concept card.
    routes : routes to outline (gold) under their edges (all their nodes must be drawn; an
        edge that pruning dropped is still outlined, so trace on the graph you draw to avoid
        that).
    min_weight : edges below this fraction of their pair's largest ``|w|`` are not drawn.
    max_nodes : refuse columns longer than this (prune the graph first).
    """
    plt = _plt()
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch

    if len(graph.layers) < 2 or not graph.edges:
        raise IerfError("this graph has no concept layers to draw")
    thumbnails = dict(thumbnails or {})
    cols = _columns(graph)
    longest = max(len(c) for c in cols)
    if longest > max_nodes:
        raise IerfError(f"a column of {longest} nodes is too many to draw (max_nodes="
                        f"{max_nodes}); prune the graph first: graph.prune(top_k_per_class=5)")
    unknown = sorted(set(thumbnails) - {i for c in cols for i in c})
    if unknown:
        raise IerfError(f"thumbnails for nodes not in the graph: {unknown[:5]}")
    thumb = 1.0 if thumbnails else 0.0
    bw, bh, gap, cgap, margin = 1.3, thumb + 0.46, 0.22, 1.5, 0.25
    top, names = 0.55 + 0.25 * bool(title), 1.7                 # names: class names' column
    W = 2 * margin + len(cols) * bw + (len(cols) - 1) * cgap + names
    H = top + longest * (bh + gap) + 0.45
    fig = plt.figure(figsize=(W, H))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")
    centre: dict[str, tuple[float, float]] = {}
    for j, ids in enumerate(cols):
        x0 = margin + j * (bw + cgap)
        span = len(ids) * (bh + gap) - gap
        y_top = H - top - (longest * (bh + gap) - gap - span) / 2
        for i, node in enumerate(ids):
            yc = y_top - i * (bh + gap) - bh / 2
            centre[node] = (x0 + bw / 2, yc)
        layer = graph.layers[j]
        ax.text(x0 + bw / 2, H - top + 0.27, "classes" if layer == OUTPUT else layer,
                ha="center", va="center", fontsize=8, fontweight="bold")
    segs, widths, colours, styles = _edge_curves(graph, centre, bw / 2, min_weight)
    if routes:
        rsegs = _route_curves(routes, centre, bw / 2)
        ax.add_collection(LineCollection(rsegs, linewidths=6, colors=ROUTE, alpha=0.55,
                                         zorder=1, capstyle="round"))
    if len(segs):
        ax.add_collection(LineCollection(segs, linewidths=widths, colors=colours,
                                         linestyles=styles, zorder=2))
    for node, (xc, yc) in centre.items():
        _node_box(ax, graph, node, xc, yc, bw, bh, thumbnails.get(node), FancyBboxPatch)
    handles = [Line2D([], [], color=POSITIVE, lw=2, label="positive ICAT"),
               Line2D([], [], color=NEGATIVE, lw=2, label="negative ICAT"),
               Line2D([], [], color=ERROR_EDGE, lw=1.2, ls="--", label="error node (residual)")]
    if routes:
        handles.append(Line2D([], [], color=ROUTE, lw=5, alpha=0.55, label="traced route"))
    ax.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
              frameon=False, bbox_to_anchor=(0.5, 0.0), borderaxespad=0.2)
    if title:
        ax.text(margin, H - 0.08, title, ha="left", va="top", fontsize=9)
    return fig


def _edge_curves(graph: ConceptGraph, centre: Mapping[str, tuple[float, float]], half: float,
                 min_weight: float) -> tuple[np.ndarray, np.ndarray, list, list]:
    """All drawn edges as horizontal-tangent cubic curves (E, 24, 2), with widths, colours
    and line styles (error edges dashed)."""
    starts, ends, mags, signs, errs = [], [], [], [], []
    for e in graph.edges:
        w = e.weights.float()
        peak = w.abs().max()
        if peak == 0:
            continue
        rel = w.abs() / peak
        r, c = (rel >= max(min_weight, 1e-12)).nonzero(as_tuple=True)
        src, tgt = graph.node_ids(e.source), graph.node_ids(e.target)
        p0 = torch.tensor([centre[src[i]] for i in r.tolist()]).reshape(-1, 2)
        p1 = torch.tensor([centre[tgt[i]] for i in c.tolist()]).reshape(-1, 2)
        starts.append(p0 + torch.tensor([half, 0.0]))
        ends.append(p1 - torch.tensor([half, 0.0]))
        mags.append(rel[r, c])
        signs.append(w[r, c] > 0)
        errs.append(r == len(src) - 1)
    if not starts:
        return np.zeros((0, 24, 2)), np.zeros(0), [], []
    p0, p1, mag = torch.cat(starts), torch.cat(ends), torch.cat(mags)
    order = mag.argsort()                                     # strong edges drawn last
    p0, p1, mag = p0[order], p1[order], mag[order]
    pos, err = torch.cat(signs)[order], torch.cat(errs)[order]
    segs = _bezier(p0, p1)
    alpha = (0.25 + 0.75 * mag).numpy()
    rgb = np.array([[0.753, 0.224, 0.169], [0.180, 0.435, 0.741]])[(~pos).long().numpy()]
    colours = np.concatenate([rgb, alpha[:, None]], 1)
    styles = [(0, (3, 2)) if e else "solid" for e in err.tolist()]
    return segs, (0.4 + 4.6 * mag).numpy(), list(colours), styles


def _bezier(p0: torch.Tensor, p1: torch.Tensor, n: int = 24) -> np.ndarray:
    """Cubic curves from ``p0`` to ``p1`` (E, 2) with horizontal end tangents: (E, n, 2)."""
    dx = (p1[:, :1] - p0[:, :1]) * 0.5
    c0 = p0 + torch.cat([dx, torch.zeros_like(dx)], 1)
    c1 = p1 - torch.cat([dx, torch.zeros_like(dx)], 1)
    t = torch.linspace(0, 1, n)[None, :, None]
    pts = ((1 - t) ** 3 * p0[:, None] + 3 * (1 - t) ** 2 * t * c0[:, None]
           + 3 * (1 - t) * t ** 2 * c1[:, None] + t ** 3 * p1[:, None])
    return pts.numpy()


def _route_curves(routes: Sequence[Route], centre: Mapping[str, tuple[float, float]],
                  half: float) -> np.ndarray:
    pairs = [(a, b) for r in routes for a, b in zip(r.nodes[:-1], r.nodes[1:])]
    missing = sorted({n for p in pairs for n in p} - set(centre))
    if missing:
        raise IerfError(f"route nodes not in the drawn graph: {missing[:5]}; trace routes on "
                        "the graph you draw, or prune with more nodes")
    p0 = torch.tensor([centre[a] for a, _ in pairs]) + torch.tensor([half, 0.0])
    p1 = torch.tensor([centre[b] for _, b in pairs]) - torch.tensor([half, 0.0])
    return _bezier(p0, p1)


def _node_box(ax: Any, graph: ConceptGraph, node: str, xc: float, yc: float, bw: float,
              bh: float, thumb: Thumbnail | None, patch_cls: Any) -> None:
    """One node: a rounded box (gid ``node:<id>``), its thumbnail and its label."""
    layer, _, key = node.rpartition(":")
    if layer == OUTPUT:
        c = graph.class_column(int(key))
        text = f"class {key}\np = {float(graph.probs[c]):.2f}"
        face, edge, style = CLASS_FACE, "#8a6d1d", "solid"
        ax.text(xc + bw / 2 + 0.08, yc, _wrap(graph.class_names[c], 24, 4), ha="left",
                va="center", fontsize=7, linespacing=1.1)
    elif key == ERROR:
        text = f"error\nresidual {graph.nodes[layer].error_share:.0%}"
        face, edge, style = ERROR_FACE, ERROR_EDGE, "--"
    else:
        n = graph.nodes[layer]
        label = n.labels[(n.index == int(key)).nonzero()[0, 0]]
        text = _wrap(label, 20)
        face, edge, style = "white", "#333333", "solid"
    box = patch_cls((xc - bw / 2, yc - bh / 2), bw, bh, boxstyle="round,pad=0,rounding_size=0.06",
                    facecolor=face, edgecolor=edge, linestyle=style, linewidth=1.0, zorder=3)
    box.set_gid(f"node:{node}")
    ax.add_patch(box)
    if thumb is not None:
        img = _image(thumb)
        side = bh - 0.5
        ax.imshow(img, extent=(xc - side / 2, xc + side / 2, yc + bh / 2 - 0.05 - side,
                               yc + bh / 2 - 0.05), zorder=4, interpolation="bilinear",
                  cmap="gray" if img.ndim == 2 else None)
        ty = yc - bh / 2 + 0.22
    else:
        ty = yc
    ax.text(xc, ty, text, ha="center", va="center", fontsize=6.5, zorder=5, linespacing=1.1)


def draw_graph(graph: ConceptGraph, path: str | Path,
               thumbnails: Mapping[str, Thumbnail] | None = None, *,
               routes: Sequence[Route] = (), min_weight: float = 0.02, max_nodes: int = 40,
               title: str = "", dpi: int = 110) -> Path:
    """Write a static picture of ``graph`` (Fig. 9 style) to ``path`` (.png / .svg / .pdf).

    See :func:`graph_figure` for the parameters.
    """
    if Path(path).suffix.lower() not in FORMATS:
        raise IerfError(f"cannot write {Path(path).name!r}: use a .png, .svg or .pdf path")
    fig = graph_figure(graph, thumbnails, routes=routes, min_weight=min_weight,
                       max_nodes=max_nodes, title=title)
    return save(fig, path, dpi=dpi)


def node_thumbnails(image: torch.Tensor, locations: NodeLocations) -> dict[str, torch.Tensor]:
    """Node id → the image ``(3, H, W)`` in [0, 1] dimmed outside the node's iERF."""
    shown = highlight(image.detach().float().cpu()[None].expand(len(locations.node_ids),
                                                                -1, -1, -1),
                      locations.ierfs.float())
    return dict(zip(locations.node_ids, shown))


# -- one image's routes -------------------------------------------------------------------


def routes_figure(image: torch.Tensor, routes: Sequence[Route], locations: NodeLocations,
                  title: str = "") -> Any:
    """The figure :func:`draw_routes` writes (a matplotlib ``Figure``; close it yourself)."""
    plt = _plt()
    if not routes:
        raise IerfError("no routes to draw; trace some with trace_routes(graph, class_)")
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise IerfError(f"expected the image as (3, H, W) in [0, 1] (before normalising), got "
                        f"{getattr(image, 'shape', type(image).__name__)}")
    for r in routes:
        for n in r.nodes:
            locations[n]                                   # refuses a missing node clearly
    img = image.detach().float().cpu().clamp(0, 1)
    pic = img.permute(1, 2, 0).numpy()
    n_cols = 1 + max(len(r.nodes) for r in routes)
    fig = plt.figure(figsize=(1.75 * n_cols, 3.9 * len(routes) + 0.35 * bool(title)),
                     layout="constrained")
    for i, (sub, r) in enumerate(zip(fig.subfigures(len(routes), 1, squeeze=False)[:, 0],
                                     routes)):
        sub.set_facecolor("#f4f4f4" if i % 2 == 0 else "white")
        sub.suptitle(f"route {i + 1}: strength {r.strength:+.3g}", fontsize=9, x=0.02,
                     ha="left", fontweight="bold")
        axes = sub.subplots(2, n_cols, squeeze=False)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
        axes[0, 0].imshow(pic)
        axes[0, 0].set_title("input", fontsize=7)
        axes[1, 0].set_axis_off()
        maps = torch.stack([locations[n][0] for n in r.nodes])
        lit = highlight(img[None].expand(len(r.nodes), -1, -1, -1),
                        torch.stack([locations[n][1] for n in r.nodes]))
        for j, node in enumerate(r.nodes):
            a, b = axes[0, j + 1], axes[1, j + 1]
            m = normalize_map(maps[j].float()).numpy()
            signed = bool((m < 0).any())
            a.imshow(pic)
            a.imshow(m, cmap="bwr" if signed else "jet", alpha=0.5, vmin=-1 if signed else 0,
                     vmax=1)
            b.imshow(lit[j].permute(1, 2, 0).numpy())
            a.set_title(_wrap(r.labels[j], 20, 3), fontsize=7)
            if j < len(r.fractions):
                b.set_xlabel(f"edge to next {r.fractions[j]:+.2f}", fontsize=7)
            if j == 0:
                a.set_ylabel("where active", fontsize=7)
                b.set_ylabel("iERF", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def draw_routes(image: torch.Tensor, routes: Sequence[Route], locations: NodeLocations,
                path: str | Path, title: str = "", dpi: int = 100) -> Path:
    """Write the image and, per route (rows) and node (columns), where the node is active
    (its coefficient map, top) and its iERF (bottom), with route strengths and each edge's
    normalised weight (Sec. VI-D, Figs. 9–10, 12).

    Parameters
    ----------
    image : (3, H, W) in [0, 1], the image the locations were computed on (un-normalised).
    routes : from :func:`ierf.graph.routes.trace_routes`.
    locations : from :func:`ierf.graph.routes.locate_nodes` with those routes.
    """
    if Path(path).suffix.lower() not in FORMATS:
        raise IerfError(f"cannot write {Path(path).name!r}: use a .png, .svg or .pdf path")
    return save(routes_figure(image, routes, locations, title), path, dpi=dpi)
