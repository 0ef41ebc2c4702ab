"""The Interlayer Concept Graph as a plain data object (IERF Sec. VI, Figs. 9–10, App. VII-H).

A :class:`ConceptGraph` holds what :func:`ierf.graph.build.build_graph` computed and nothing
else: it runs no model, and it is written / read by :mod:`ierf.graph.export` (computation,
data and export kept apart, as circuit-tracer does).

- ``layers``: the chain, input side first, ending with ``"output"``.
- ``nodes[layer]``: the layer's concept nodes (basis index, label, importance per class
  ``Σ_i AT(u_iq, logit_c)`` — Sec. VI-A2, GIG Eq. 7 —, mean coefficient and frequency) and
  its **error node** (the Lasso residual ``X − X̂``: its share ``‖X − X̂‖ / ‖X‖`` and its
  effect on each logit).
- ``edges``: one :class:`Edges` per consecutive pair, a dense ``(K_a + 1, T)`` weight tensor
  whose rows are ``a``'s concepts then its error node and whose columns are ``b``'s concepts
  (or the classes when ``b`` is the output): ICAT (Eq. 14) for concept rows, the exact effect
  of adding the residual back for the error row.

Node ids: ``"{layer}:{k}"`` (``k`` the basis index), ``"{layer}:error"``, ``"output:{c}"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ierf.errors import IerfError
from ierf.graph.influence import cumulative_keep, edge_influence, node_influence

OUTPUT = "output"
ERROR = "error"


@dataclass
class LayerNodes:
    """Concept nodes and the error node of one layer.

    Attributes
    ----------
    layer : the layer, as in ``model.named_modules()``.
    index : (K,) basis index of each node (all of the basis before pruning).
    labels : K labels (``clerp`` in the JSON).
    importance : (K, n_classes) class relevance ``Σ_i AT(u_iq, logit_c)`` (Sec. VI-A2).
    activation : (K,) mean Lasso coefficient over positions and images (Eq. 12).
    frequency : (K,) fraction of positions where the coefficient is non-zero.
    error_share : ``‖X − X̂‖_F / ‖X‖_F`` of the layer, mean over images.
    error_importance : (n_classes,) ``logit_c(X) − logit_c(X̂)``: what the residual adds.
    """

    layer: str
    index: torch.Tensor
    labels: list[str]
    importance: torch.Tensor
    activation: torch.Tensor
    frequency: torch.Tensor
    error_share: float
    error_importance: torch.Tensor

    def select(self, keep: torch.Tensor) -> LayerNodes:
        """The nodes at positions ``keep`` (the error node is always kept)."""
        return replace(self, index=self.index[keep], labels=[self.labels[i] for i in keep.tolist()],
                       importance=self.importance[keep], activation=self.activation[keep],
                       frequency=self.frequency[keep])


@dataclass
class Edges:
    """Edges from layer ``source`` to layer ``target``.

    Attributes
    ----------
    weights : (K_a + 1, T): rows ``a``'s nodes then its error node; columns ``b``'s nodes
        (or the graph's classes when ``target`` is ``"output"``). Zero means no edge.
    method : the attribution ``AT`` of Eq. 14 (``"ig"``, ...).
    gap : (T,) IG completeness error ``Σ_q ICAT(q → t) − (S(X̂^a) − S(x̂_0))``, mean over
        images, or ``None`` when the method is not IG.
    """

    source: str
    target: str
    weights: torch.Tensor
    method: str
    gap: torch.Tensor | None = None


@dataclass
class ConceptGraph:
    """An Interlayer Concept Graph (Sec. VI): nodes per layer, ICAT edges, class nodes.

    Attributes
    ----------
    layers : the chain, input side first, ending with ``"output"``.
    nodes : layer → :class:`LayerNodes`, for every layer but the output.
    classes : (n_classes,) class indices of the class nodes; ``class_names`` their names.
    logits : (n_classes,) mean logit of each class (the class nodes' activation).
    probs : (n_classes,) mean softmax probability of each class.
    edges : one :class:`Edges` per consecutive pair of ``layers``.
    metadata : model, fingerprint, bases, method and settings, image ids, pruning, ...
    """

    layers: list[str]
    nodes: dict[str, LayerNodes]
    classes: torch.Tensor
    class_names: list[str]
    logits: torch.Tensor
    probs: torch.Tensor
    edges: list[Edges]
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- ids -------------------------------------------------------------------------------

    def node_ids(self, layer: str) -> list[str]:
        """Ids of ``layer``'s nodes in tensor order: concepts, then the error node (or the
        class nodes for the output)."""
        if layer == OUTPUT:
            return [f"{OUTPUT}:{c}" for c in self.classes.tolist()]
        if layer not in self.nodes:
            raise IerfError(f"no layer {layer!r} in this graph; its layers: "
                            f"{', '.join(self.layers)}")
        return [f"{layer}:{k}" for k in self.nodes[layer].index.tolist()] + [f"{layer}:{ERROR}"]

    def class_column(self, c: int | str) -> int:
        """Position of class ``c`` (index or name) among the graph's class nodes."""
        if isinstance(c, str):
            if c not in self.class_names:
                raise IerfError(f"unknown class {c!r}; the graph's classes: "
                                f"{', '.join(self.class_names)}")
            return self.class_names.index(c)
        where = (self.classes == int(c)).nonzero()
        if len(where) == 0:
            raise IerfError(f"class {c} is not in this graph; its classes: "
                            f"{self.classes.tolist()}")
        return int(where[0])

    def parents(self, node_id: str, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` strongest parents of ``node_id`` (all when ``None``) by ``|weight|``,
        as ``(parent id, weight)``; absent (zero) edges are left out."""
        layer, _, _ = node_id.rpartition(":")
        if layer not in self.layers or self.layers.index(layer) == 0:
            raise IerfError(f"{node_id!r} is not a node with parents in this graph (layers "
                            f"{', '.join(self.layers)})")
        targets = self.node_ids(layer)
        if node_id not in targets or node_id.endswith(f":{ERROR}"):
            raise IerfError(f"no node {node_id!r} with parents in this graph")
        edges = self.edges[self.layers.index(layer) - 1]
        col = edges.weights[:, targets.index(node_id)]
        ids = self.node_ids(edges.source)
        order = col.abs().argsort(descending=True, stable=True)
        found = [(ids[i], float(col[i])) for i in order.tolist() if col[i] != 0]
        return found if k is None else found[:k]

    # -- views -----------------------------------------------------------------------------

    def prune(self, top_k_per_class: int = 5, top_shared: int = 3,
              top_parents: int = 3) -> ConceptGraph:
        """A pruned copy, with the settings of the paper's figures (Sec. VI-D, Figs. 9–10).

        Per concept layer: the ``top_k_per_class`` most important concepts of every class
        (highest importance), plus the ``top_shared`` concepts with the highest *minimum*
        importance over the classes among the rest (shared evidence); the error node and
        the class nodes stay. Per kept node: only the edges of its ``top_parents``
        strongest concept parents (by ``|weight|``) stay, plus the one from the error node.
        """
        if min(top_k_per_class, top_shared, top_parents) < 0:
            raise IerfError("pruning counts must be >= 0")
        kept = {layer: _keep(n.importance, top_k_per_class, top_shared)
                for layer, n in self.nodes.items()}
        nodes = {layer: n.select(kept[layer]) for layer, n in self.nodes.items()}
        edges = []
        for e in self.edges:
            rows = torch.cat([kept[e.source], kept[e.source].new_tensor([-1])])
            w = e.weights[rows]
            gap = e.gap
            if e.target != OUTPUT:
                w, gap = w[:, kept[e.target]], None if gap is None else gap[kept[e.target]]
            edges.append(replace(e, weights=_top_parents(w, top_parents), gap=gap))
        meta = {**self.metadata, "pruning": {"top_k_per_class": top_k_per_class,
                                             "top_shared": top_shared,
                                             "top_parents": top_parents}}
        return replace(self, nodes=nodes, edges=edges, metadata=meta)

    def prune_by_influence(self, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                           classes: Sequence[int | str] | None = None) -> ConceptGraph:
        """A pruned copy that keeps what carries most of the influence on the class nodes
        (circuit-tracer's cumulative-influence pruning; :mod:`ierf.graph.influence`).

        Per concept layer, the fewest concepts whose influence adds up to ``node_threshold``
        of the layer's concept influence stay (error nodes and class nodes always stay);
        per layer pair, the fewest edges between kept nodes whose influence adds up to
        ``edge_threshold`` of theirs. The class nodes are weighted by their mean
        probability, or equally over ``classes`` (indices or names) when given.
        """
        if classes is None:
            weights = self.probs.float()
        else:
            weights = torch.zeros(len(self.classes))
            weights[[self.class_column(c) for c in classes]] = 1.0
        influence = node_influence([e.weights.float() for e in self.edges], weights)
        kept = {e.source: cumulative_keep(i[:-1], node_threshold).nonzero().flatten()
                for e, i in zip(self.edges, influence)}
        nodes = {layer: n.select(kept[layer]) for layer, n in self.nodes.items()}
        edges = []
        for k, e in enumerate(self.edges):
            rows = torch.cat([kept[e.source], kept[e.source].new_tensor([-1])])
            cols = kept.get(e.target, torch.arange(e.weights.shape[1]))
            target = weights / weights.sum() if e.target == OUTPUT else influence[k + 1][:-1]
            flow = edge_influence(e.weights.float(), target)[rows][:, cols]
            w = e.weights[rows][:, cols] * cumulative_keep(flow, edge_threshold)
            gap = None if e.gap is None else e.gap[cols]
            edges.append(replace(e, weights=w, gap=gap))
        meta = {**self.metadata, "pruning": {"node_threshold": node_threshold,
                                             "edge_threshold": edge_threshold}}
        return replace(self, nodes=nodes, edges=edges, metadata=meta)

    def normalised(self) -> ConceptGraph:
        """A copy whose edge weights are ``|w| / max |w|`` per layer pair, in ``[0, 1]``
        (App. VII-H: "the ICAT scores between layers are normalized to [0, 1]"); signs are
        dropped, node importances and IG gaps are left as they are."""
        edges = []
        for e in self.edges:
            w = e.weights.abs()
            top = w.max() if w.numel() else w.new_tensor(0.0)
            edges.append(replace(e, weights=w / top if top > 0 else w))
        return replace(self, edges=edges, metadata={**self.metadata, "normalised": True})

    def summary(self) -> str:
        """One line per layer and per layer pair."""
        lines = [repr(self)]
        for layer, n in self.nodes.items():
            lines.append(f"  {layer}: {len(n.index)} concepts + error "
                         f"(residual share {n.error_share:.3f})")
        lines.append(f"  output: {len(self.classes)} classes "
                     f"({', '.join(self.class_names[:4])}{', …' if len(self.classes) > 4 else ''})")
        for e in self.edges:
            lines.append(f"  {e.source} → {e.target}: {int((e.weights != 0).sum())} edges "
                         f"({e.method})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        n = sum(len(v.index) for v in self.nodes.values())
        return (f"ConceptGraph({self.metadata.get('model', '?')}, "
                f"{' → '.join(self.layers)}, {n} concept nodes, {len(self.classes)} classes, "
                f"{self.metadata.get('n_images', '?')} images, "
                f"method={self.metadata.get('method', '?')!r})")


def merge(graphs: Sequence[ConceptGraph]) -> ConceptGraph:
    """One data-set-wide graph from graphs of disjoint image sets: every node statistic, edge
    weight, IG gap, logit and probability is the mean over all their images (each graph's
    mean weighted by its ``metadata["n_images"]``); image ids are concatenated.

    The graphs must share the chain, the classes, the nodes (unpruned) and the method — as
    the batches of one :func:`ierf.graph.build_dataset_graph` run do.
    """
    if not graphs:
        raise IerfError("nothing to merge: no graphs")
    first = graphs[0]
    for g in graphs[1:]:
        same = (g.layers == first.layers and torch.equal(g.classes, first.classes)
                and all(torch.equal(g.nodes[l].index, n.index) for l, n in first.nodes.items())
                and [e.method for e in g.edges] == [e.method for e in first.edges])
        if not same:
            raise IerfError("these graphs differ in layers, classes, nodes or method and "
                            "cannot be merged; build them with the same settings")
    n = torch.tensor([float(g.metadata.get("n_images", 1)) for g in graphs])
    w = n / n.sum()

    def mean(values: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([v.float() for v in values])
        return (stacked * w.reshape(-1, *[1] * (stacked.dim() - 1))).sum(0)

    nodes = {}
    for layer, n0 in first.nodes.items():
        ns = [g.nodes[layer] for g in graphs]
        nodes[layer] = replace(
            n0, importance=mean([x.importance for x in ns]),
            activation=mean([x.activation for x in ns]),
            frequency=mean([x.frequency for x in ns]),
            error_share=float(mean([torch.tensor(x.error_share) for x in ns])),
            error_importance=mean([x.error_importance for x in ns]))
    edges = []
    for k, e0 in enumerate(first.edges):
        es = [g.edges[k] for g in graphs]
        gap = None if any(e.gap is None for e in es) else mean([e.gap for e in es])
        edges.append(replace(e0, weights=mean([e.weights for e in es]), gap=gap))
    ids = [i for g in graphs for i in g.metadata.get("image_ids", [])]
    meta = {**first.metadata, "image_ids": ids, "n_images": int(n.sum())}
    return replace(first, nodes=nodes, logits=mean([g.logits for g in graphs]),
                   probs=mean([g.probs for g in graphs]), edges=edges, metadata=meta)


def _keep(importance: torch.Tensor, top_k: int, top_shared: int) -> torch.Tensor:
    """Positions of the per-class top-k plus the top shared concepts, in basis order."""
    K = importance.shape[0]
    chosen = torch.zeros(K, dtype=torch.bool)
    for c in range(importance.shape[1]):
        chosen[importance[:, c].topk(min(top_k, K)).indices] = True
    shared = importance.min(1).values.masked_fill(chosen, float("-inf"))
    n_shared = min(top_shared, int((~chosen).sum()))
    chosen[shared.topk(n_shared).indices] = True
    return chosen.nonzero().flatten()


def _top_parents(w: torch.Tensor, m: int) -> torch.Tensor:
    """Keep, per column, the ``m`` largest ``|w|`` among the concept rows and the error row."""
    concepts = w[:-1]
    keep = torch.zeros_like(concepts, dtype=torch.bool)
    if len(concepts) and m:
        keep.scatter_(0, concepts.abs().topk(min(m, len(concepts)), 0).indices, True)
    return torch.cat([concepts * keep, w[-1:]])
