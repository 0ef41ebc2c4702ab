"""Concept tracing (IERF Sec. VI-D, Figs. 9–10, 12): the strongest concept routes to a class
and where each of their nodes sits in the image.

**Route strength.** The paper reads "dominant concept routes" off the graph by edge
strength but gives no formula, so we use the normalised-influence reading of circuit-tracer
(Ameisen et al. 2025): every node hands its evidence back to its parents in proportion to
their edges. With ``W`` the ICAT edges ``a → b`` (Eq. 16; rows ``a``'s concepts and error
node), the *incoming fraction* is

    ``A[q, t] = W[q, t] / Σ_q' |W[q', t]|``      (sum over all parents, error node included)

and a route ``q_1 → q_2 → … → q_L → c`` (one concept per layer, input side first) has

    ``strength = Π_i A_i[q_i, q_{i+1}]``,  with ``q_{L+1}`` the class node ``c``.

It is the signed share of the class's ICAT evidence that flows along the route: summed in
absolute value over every route (and every path that stops at an error node) it is 1, and
its sign is the product of the edge signs (a negative route argues against the class).
``normalise="layer"`` uses ``W / max |W|`` per layer pair instead (App. VII-H), signed.

The k best routes come from a max-product dynamic programme over the layers (batched
tensors, no enumeration of paths): per node the k largest and k smallest products of the
paths reaching it are kept, since a negative edge turns the smallest into the largest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError
from ierf.graph.concept_graph import ERROR, OUTPUT, ConceptGraph
from ierf.models.model import Model
from ierf.targets import PFVRelevance

ORDERS = ("positive", "negative", "abs")
NORMALISATIONS = ("incoming", "layer")


@dataclass(frozen=True)
class Route:
    """A concept route, input side first, ending at the class node (Sec. VI-D).

    Attributes
    ----------
    nodes : node ids ``"{layer}:{k}"``, one per concept layer, then ``"output:{c}"``.
    labels : their labels (the class name last).
    strength : product of ``fractions`` (see the module docstring).
    fractions : the normalised weight of each edge of the route.
    weights : the raw ICAT weight of each edge.
    """

    nodes: tuple[str, ...]
    labels: tuple[str, ...]
    strength: float
    fractions: tuple[float, ...]
    weights: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def edge_fractions(weights: torch.Tensor, normalise: str = "incoming") -> torch.Tensor:
    """Normalised edges of one layer pair, ``(K_a + 1, T)`` like ``weights``: divided by
    each target's total ``|weight|`` over its parents (``"incoming"``) or by the pair's
    largest ``|weight|`` (``"layer"``, App. VII-H); signs are kept, empty columns stay 0."""
    if normalise not in NORMALISATIONS:
        raise IerfError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    w = weights.detach().float()
    total = w.abs().sum(0, keepdim=True) if normalise == "incoming" else w.abs().amax()
    return torch.where(total > 0, w / torch.where(total > 0, total, 1.0), 0.0)


def trace_routes(graph: ConceptGraph, class_: int | str, k: int = 5, *,
                 order: Literal["positive", "negative", "abs"] = "positive",
                 normalise: Literal["incoming", "layer"] = "incoming",
                 start: str | None = None) -> list[Route]:
    """The ``k`` strongest concept routes to class ``class_`` (Sec. VI-D), best first.

    Parameters
    ----------
    graph : a :class:`ConceptGraph` (a per-image one for one image's routes; a pruned graph
        keeps only its kept edges, and fractions are then shares of the kept evidence).
    class_ : a class node, by index or name.
    k : how many routes (fewer when the graph has fewer non-zero routes).
    order : ``"positive"`` — largest strength (evidence for the class); ``"negative"`` —
        most negative (evidence against it); ``"abs"`` — largest ``|strength|``.
    normalise : ``"incoming"`` (default) or ``"layer"``; see :func:`edge_fractions`.
    start : the first layer of the routes (default: the graph's first concept layer).

    Routes go through concept nodes only; edges of weight 0 (pruned) are not routes.
    Memory: ``K_a · 2k · T`` floats for the largest layer pair.
    """
    col = graph.class_column(class_)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise IerfError(f"k must be a positive number of routes, got {k!r}")
    if order not in ORDERS:
        raise IerfError(f"order must be one of {ORDERS}, got {order!r}")
    layers = graph.layers[:-1]
    if not layers:
        raise IerfError("this graph has no concept layers to trace routes through")
    if start is not None and start not in layers:
        raise IerfError(f"start must be a concept layer of the graph ({', '.join(layers)}), "
                        f"got {start!r}")
    first = 0 if start is None else layers.index(start)
    edges = graph.edges[first:]
    mats = [edge_fractions(e.weights, normalise)[:-1] for e in edges]   # drop error rows
    mats[-1] = mats[-1][:, col:col + 1]
    values, valid, back = _best_paths(mats, k)                          # at the class: (1, S)
    v, ok = values[0], valid[0]
    score = {"positive": v, "negative": -v, "abs": v.abs()}[order]
    score = torch.where(ok, score, float("-inf"))
    best = score.topk(min(k, int(ok.sum()))).indices.tolist()
    return [_route(graph, edges, mats, back, first, slot, col) for slot in best]


def _best_paths(mats: Sequence[torch.Tensor], k: int
                ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Max/min-product DP. Per node keeps up to ``2k`` distinct paths: the ``k`` largest
    products, then the ``k`` smallest of the rest. Returns the last layer's values and
    validity ``(T, S)`` and per step the back-pointers (parent node, parent slot) ``(T, S)``."""
    n0 = mats[0].shape[0]
    values = torch.ones(n0, 1, dtype=mats[0].dtype)
    valid = torch.ones(n0, 1, dtype=torch.bool)
    back = []
    for A in mats:
        slots = values.shape[1]
        prod = (values[:, :, None] * A[:, None, :]).flatten(0, 1)          # (K_a · S, T)
        ok = (valid[:, :, None] & (A[:, None, :] != 0)).flatten(0, 1)
        m = min(k, len(prod))
        hi_v, hi_i = torch.where(ok, prod, float("-inf")).topk(m, 0)
        rest = ok.clone()
        rest.scatter_(0, hi_i, False)
        lo_v, lo_i = torch.where(rest, prod, float("inf")).topk(min(m, len(prod) - m), 0,
                                                                  largest=False)
        idx = torch.cat([hi_i, lo_i]).T                                    # (T, S')
        values = torch.cat([hi_v, lo_v]).T
        valid = values.isfinite()
        values = torch.where(valid, values, 0.0)
        back.append((idx // slots, idx % slots))
    return values, valid, back


def _route(graph: ConceptGraph, edges: Sequence, mats: Sequence[torch.Tensor],
           back: Sequence[tuple[torch.Tensor, torch.Tensor]], first: int, slot: int,
           col: int) -> Route:
    """Follow the back-pointers from the class node's ``slot`` to the first layer."""
    rows, node = [], 0                                    # node: position in the target layer
    for parent, parent_slot in reversed(back):
        node, slot = int(parent[node, slot]), int(parent_slot[node, slot])
        rows.append(node)
    rows.reverse()                                        # positions in layers first, first+1, …
    cols = [*rows[1:], col]
    layers = graph.layers[first:-1]
    ids = [graph.node_ids(l)[r] for l, r in zip(layers, rows)]
    ids.append(f"{OUTPUT}:{int(graph.classes[col])}")
    labels = [graph.nodes[l].labels[r] for l, r in zip(layers, rows)] + [graph.class_names[col]]
    fractions = [float(m[r, 0 if i == len(mats) - 1 else c])
                 for i, (m, r, c) in enumerate(zip(mats, rows, cols))]
    weights = [float(e.weights[r, c]) for e, r, c in zip(edges, rows, cols)]
    strength = float(torch.tensor(fractions, dtype=torch.float64).prod())
    return Route(tuple(ids), tuple(labels), strength, tuple(fractions), tuple(weights))


# -- where the nodes are ------------------------------------------------------------------


@dataclass
class NodeLocations:
    """Where route nodes sit in one image (Sec. VI-D: "regions where the concept is activated
    within an image"), at the input size ``(H, W)``.

    Attributes
    ----------
    node_ids : the nodes, in the order of the tensors.
    maps : (R, H, W) a concept's Lasso coefficient ``u_pk`` per position (Eq. 12), an error
        node's residual share ``‖x_p − x̂_p‖ / ‖x_p‖``, a class node's SRD saliency; bilinearly
        upsampled.
    ierfs : (R, H, W) the node's iERF: ``Σ_p w_p · iERF(PFV_p)`` with ``w_p`` the map above
        at the layer's resolution (the class node: its saliency map itself, Eqs. 4–6).
    """

    node_ids: list[str]
    maps: torch.Tensor
    ierfs: torch.Tensor

    def __getitem__(self, node_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        if node_id not in self.node_ids:
            raise IerfError(f"no location for {node_id!r}; compute it with "
                            "locate_nodes(model, x, bases, [...])")
        i = self.node_ids.index(node_id)
        return self.maps[i], self.ierfs[i]


@dataclass(frozen=True)
class WeightedPFVTarget(PFVRelevance):
    """Relevance ``weights[p]`` on each PFV ``p`` of ``layer``: its iERF is the
    ``weights``-weighted sum of the PFVs' iERFs (SRD is linear in its start relevance).

    The scalar is ``Σ_p w_p ⟨v_p, v_p⟩ / ‖v_p‖²`` with the denominator held constant
    (:class:`ierf.PFVTarget` per position, weighted); ``weights`` is ``(N,)`` or ``(B, N)``.
    """

    layer: str
    weights: torch.Tensor

    def scalar(self, pfvs) -> torch.Tensor:
        v = pfvs.vectors
        norm2 = (v * v).sum(-1, keepdim=True)
        unit = (v / torch.where(norm2 == 0, 1.0, norm2)).detach()
        return ((v * unit).sum(-1) * self.weights.to(v)).sum(1)


def locate_nodes(model: Model, x: torch.Tensor, bases: Mapping[str, ConceptBasis],
                 nodes: Sequence[str | Route], *, engine: Any = None,
                 internal_batch_size: int = 16) -> NodeLocations:
    """Locate graph nodes (or all nodes of ``Route``\\s) in one image ``x`` (1, 3, H, W).

    ``engine``: the iERF attributor, with ``ierfs(x, targets)`` and ``attribute(x, target)``
    (default :class:`ierf.SRD` of ``model``). One SRD backward pass per node, batched per
    layer.
    """
    ids = _unique_ids(nodes)
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        raise IerfError(f"expected one image (1, 3, H, W), got "
                        f"{getattr(x, 'shape', type(x).__name__)}")
    x = x[None] if x.dim() == 3 else x
    if len(x) != 1:
        raise IerfError(f"locate_nodes explains one image; got a batch of {len(x)}, pass x[i:i+1]")
    if engine is None:
        from ierf.local.srd import SRD
        engine = SRD(model)
    by_layer: dict[str, list[str]] = {}
    for i in ids:
        by_layer.setdefault(i.rpartition(":")[0], []).append(i)
    maps, ierfs, order = [], [], []
    for layer, group in by_layer.items():
        m, r = (_class_maps(engine, x, group) if layer == OUTPUT else
                _concept_maps(model, x, bases, layer, group, engine, internal_batch_size))
        maps.append(m)
        ierfs.append(r)
        order += group
    perm = [order.index(i) for i in ids]
    return NodeLocations(ids, torch.cat(maps)[perm], torch.cat(ierfs)[perm])


def _unique_ids(nodes: Sequence[str | Route]) -> list[str]:
    ids: list[str] = []
    for n in nodes:
        for i in (n.nodes if isinstance(n, Route) else (n,)):
            if not isinstance(i, str) or ":" not in i:
                raise IerfError(f"expected node ids like 'layer3:4' or 'output:7', got {i!r}")
            if i not in ids:
                ids.append(i)
    if not ids:
        raise IerfError("no nodes to locate; pass node ids or routes from trace_routes")
    return ids


def _class_maps(engine: Any, x: torch.Tensor, ids: list[str]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    sal = torch.cat([engine.attribute(x, target=int(i.rpartition(":")[2])) for i in ids])
    sal = sal.detach().float().cpu()
    return sal, sal.clone()


def _concept_maps(model: Model, x: torch.Tensor, bases: Mapping[str, ConceptBasis],
                  layer: str, ids: list[str], engine: Any, internal_batch_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficient (or residual-share) maps and weighted iERFs of one layer's nodes."""
    if layer not in bases:
        raise IerfError(f"no concept basis for layer {layer!r}; pass bases for the graph's "
                        f"layers ({', '.join(bases)})")
    basis = bases[layer]
    basis.check(model, layer)
    if basis.tokens != "patch":
        raise IerfError(f"nodes of a {basis.tokens!r}-token basis have no place in the image; "
                        "locate nodes of patch-token bases")
    with torch.no_grad():
        pf = model.pfvs(x, layer)[layer]
        X = pf.vectors                                                        # (1, N, C)
        U = basis.encode(X)
        share = basis.residual(X).norm(dim=-1) / X.norm(dim=-1).clamp_min(1e-12)
    keys = [i.rpartition(":")[2] for i in ids]
    bad = [k for k in keys if k != ERROR and not (k.isdigit() and int(k) < basis.n_concepts)]
    if bad:
        raise IerfError(f"layer {layer!r} has concepts 0..{basis.n_concepts - 1} and "
                        f"'{ERROR}'; got {bad}")
    cols = torch.tensor([basis.n_concepts if k == ERROR else int(k) for k in keys])
    W = torch.cat([U, share[..., None]], -1)[0, :, cols].T.detach()           # (R, N)
    targets = [WeightedPFVTarget(layer, w) for w in W]
    ierfs = engine.ierfs(x, targets, internal_batch_size=internal_batch_size)[:, 0]
    grid = W.reshape(len(ids), 1, *pf.grid).float()
    maps = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return maps.cpu(), ierfs.detach().float().cpu()
