"""Supernodes: concept nodes grouped by the bisecting k-means split tree, and collapsed.

Bisecting k-means (GIG App. B) builds a binary tree whose leaves are a layer's concepts
(:class:`ierf.concepts.extractors.kmeans.ClusterTree`); cutting it groups the concepts into
coarser clusters (:func:`supernodes`), which can be shown as groups (:func:`annotate`,
circuit-tracer's ``qParams.supernodes``) or merged into single nodes (:func:`collapse`).

Collapsing is exact, not an approximation. ICAT is IG over the coefficients summed over
positions (Eq. 14, ``Σ_p AT(u_pq, S)``), so the attribution of a group ``G`` of concepts —
the IG of the block of inputs ``{u_pq : q ∈ G}`` — is ``Σ_{q∈G} ICAT(q → t)``: a supernode's
out-edges are the sums of its members' edges, and its importance (Sec. VI-A2, the same ICAT
towards the logits) the sum of theirs. IG is linear in the attributed function too, so a
supernode's in-edges are ICAT towards ``S_G = Σ_{t∈G} S_t`` (Eq. 13 summed over the group):
the sums of its members' in-edges, and the IG gaps and error-node edges add the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from ierf.concepts.basis import ConceptBasis
from ierf.concepts.extractors.kmeans import ClusterTree
from ierf.errors import IerfError
from ierf.graph.concept_graph import OUTPUT, ConceptGraph, Edges, LayerNodes

Groups = Mapping[str, Sequence[str]] | Sequence[Sequence[str]]


def supernodes(graph: ConceptGraph, layer: str, tree: ClusterTree | ConceptBasis | Any, *,
               n_groups: int | None = None, level: int | None = None) -> dict[str, list[str]]:
    """Group ``layer``'s concept nodes by a cut of the split tree.

    Parameters
    ----------
    tree : the layer's :class:`ClusterTree`, its k-means :class:`ConceptBasis`, or the
        fitted ``BisectingSphericalKMeans``.
    n_groups : cut into the clusters k-means had after its first ``n_groups − 1`` splits.
    level : cut ``level`` splits below the root (see :meth:`ClusterTree.cut`).

    Returns
    -------
    ``"{layer}:{node}" → member node ids`` (graph order) for every tree node of the cut with
    at least two members in the graph; ``node`` is the tree node (``≥ K`` for a split
    cluster), which :func:`collapse` uses as the merged node's index. Nodes alone in their
    cluster (or pruned away) are in no group.
    """
    tree = _tree(tree)
    nodes = _layer(graph, layer)
    K = tree.n_leaves
    recorded = graph.metadata.get("bases", {}).get(layer, {}).get("n_concepts")
    if recorded is not None and recorded != K:
        raise IerfError(f"layer {layer!r}'s basis has {recorded} concepts, the tree {K} leaves")
    if len(nodes.index) and int(nodes.index.max()) >= K:
        raise IerfError(f"layer {layer!r} has nodes that are not leaves of this tree "
                        "(already collapsed?); group the uncollapsed graph")
    owner = tree.assign(tree.cut(n_groups, level))[nodes.index]
    ids = graph.node_ids(layer)
    counts = torch.bincount(owner, minlength=len(tree.parents))
    groups: dict[str, list[str]] = {}
    for j, o in enumerate(owner.tolist()):
        if counts[o] > 1:
            groups.setdefault(f"{layer}:{o}", []).append(ids[j])
    return groups


def annotate(graph: ConceptGraph, groups: Groups) -> ConceptGraph:
    """A copy of ``graph`` that shows ``groups`` as supernodes (``metadata["supernodes"]``,
    exported as circuit-tracer's ``qParams.supernodes``); nothing is merged."""
    named = dict(_named(groups))
    if len(named) != len(groups):
        raise IerfError("two supernodes have the same name; name them (a dict of groups)")
    known = {i for layer in graph.layers for i in graph.node_ids(layer)}
    unknown = [i for ids in named.values() for i in ids if i not in known]
    if unknown:
        raise IerfError(f"no node {unknown[0]!r} in this graph")
    current = dict(graph.metadata.get("supernodes", {}))
    return replace(graph, metadata={**graph.metadata, "supernodes": {**current, **named}})


def collapse(graph: ConceptGraph, layer: str, groups: Groups) -> ConceptGraph:
    """A copy of ``graph`` in which every group of ``layer``'s concept nodes is one node.

    A merged node's importance, mean coefficient, out-edges, in-edges, in-edge gaps and
    error-node edge are the sums of its members' (exact: see the module docstring); its
    frequency is ``min(1, Σ frequency)``, the union's upper bound (exact when members never
    share a position, e.g. ``encoding="nearest"``). Nodes in no group stay as they are, and
    the graph's order is kept (a merged node sits where its first member was).

    Parameters
    ----------
    groups : name → member ids (as :func:`supernodes` returns), or lists of member ids. A
        merged node's id is its name when that is ``"{layer}:{int}"`` (and no other node's
        id), otherwise the id of its member with the lowest basis index; a name of another
        form becomes its label.
    """
    nodes = _layer(graph, layer)
    if graph.metadata.get("normalised"):
        raise IerfError("collapse the graph before normalising it (|w| / max |w| do not add)")
    ids = graph.node_ids(layer)[:-1]
    where = {i: j for j, i in enumerate(ids)}
    rep = torch.arange(len(ids))                    # first member of each node's group
    grouped = torch.zeros(len(ids), dtype=torch.bool)
    index, titles = nodes.index.clone(), {}
    for name, members in _named(groups):
        bad = [m for m in members if m not in where]
        if bad:
            raise IerfError(f"{bad[0]!r} is not a concept node of layer {layer!r}")
        pos = torch.tensor([where[m] for m in members])
        if bool(grouped[pos].any()) or len(set(members)) != len(members):
            raise IerfError(f"node {members[0]!r} is in more than one group")
        grouped[pos] = True
        first = int(pos.min())
        rep[pos] = first
        match = re.fullmatch(rf"{re.escape(layer)}:(\d+)", name)
        index[first] = int(match.group(1)) if match else nodes.index[pos].min()
        if not match:
            titles[first] = name
    keep = rep.unique()                             # sorted: the graph's order is kept
    owner = torch.searchsorted(keep, rep)
    if len(index[keep].unique()) != len(keep):
        raise IerfError(f"group names of layer {layer!r} clash with the ids of other nodes")
    members: list[list[int]] = [[] for _ in keep]
    for j, o in enumerate(owner.tolist()):
        members[o].append(j)
    merged = _merge(nodes, owner, keep, index[keep], members, titles)
    new = replace(graph, nodes={**graph.nodes, layer: merged},
                  edges=[_merge_edges(e, layer, owner, len(keep)) for e in graph.edges])
    new_ids = new.node_ids(layer)[:-1]
    before = graph.metadata.get("collapsed", {})
    earlier = before.get(layer, {})             # a node merged before stands for its members
    record = {new_ids[o]: [i for j in m for i in earlier.get(ids[j], [ids[j]])]
              for o, m in enumerate(members)}
    meta = {**graph.metadata, "collapsed": {
        **before, layer: {k: v for k, v in record.items() if len(v) > 1}}}
    if "supernodes" in meta:
        moved = {ids[j]: new_ids[o] for j, o in enumerate(owner.tolist())}
        meta["supernodes"] = _remap(meta["supernodes"], moved)
        if not meta["supernodes"]:
            del meta["supernodes"]
    new.metadata = meta
    return new


def _merge(nodes: LayerNodes, owner: torch.Tensor, keep: torch.Tensor, index: torch.Tensor,
           members: Sequence[Sequence[int]], titles: Mapping[int, str]) -> LayerNodes:
    """Sum a layer's node fields by group (``owner``: the new position of every node)."""
    k = len(keep)
    influence = nodes.importance.abs().sum(1).tolist()
    labels = []
    for j, m in zip(keep.tolist(), members):
        top = max(m, key=lambda i: influence[i])
        labels.append(titles.get(j) or (nodes.labels[top] if len(m) == 1
                                        else f"{nodes.labels[top]} (+{len(m) - 1})"))
    return replace(
        nodes, index=index, labels=labels,
        importance=nodes.importance.new_zeros(k, nodes.importance.shape[1]).index_add_(
            0, owner, nodes.importance),
        activation=nodes.activation.new_zeros(k).index_add_(0, owner, nodes.activation),
        frequency=nodes.frequency.new_zeros(k).index_add_(0, owner,
                                                          nodes.frequency).clamp_max(1))


def _merge_edges(e: Edges, layer: str, owner: torch.Tensor, k: int) -> Edges:
    """Rows (``layer`` the source) or columns (``layer`` the target) summed by group."""
    w, gap = e.weights, e.gap
    if e.source == layer:
        rows = w.new_zeros(k, w.shape[1]).index_add_(0, owner, w[:-1])
        w = torch.cat([rows, w[-1:]])
    if e.target == layer:
        w = w.new_zeros(w.shape[0], k).index_add_(1, owner, w)
        gap = None if gap is None else gap.new_zeros(k).index_add_(0, owner, gap)
    return replace(e, weights=w, gap=gap)


def _remap(groups: Mapping[str, Sequence[str]], moved: Mapping[str, str]
           ) -> dict[str, list[str]]:
    """Supernode annotations after a collapse: merged members become the merged node."""
    out = {}
    for name, ids in groups.items():
        now = list(dict.fromkeys(moved.get(i, i) for i in ids))
        if len(now) > 1:
            out[name] = now
    return out


def _named(groups: Groups) -> list[tuple[str, list[str]]]:
    """``groups`` as (name, member ids); unnamed groups are named after their first member."""
    if isinstance(groups, Mapping):
        items = [(str(k), v) for k, v in groups.items()]
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        items = [(str(g[0]) if len(g) else "", g) for g in groups]
    else:
        raise IerfError(f"groups must map names to node ids or be lists of node ids, got "
                        f"{type(groups).__name__}")
    for name, ids in items:
        if isinstance(ids, str) or not isinstance(ids, Sequence) or not ids or \
                not all(isinstance(i, str) for i in ids):
            raise IerfError(f"group {name!r} must be a non-empty list of node ids")
    return [(name, list(ids)) for name, ids in items]


def _layer(graph: ConceptGraph, layer: str) -> LayerNodes:
    if layer == OUTPUT or layer not in graph.nodes:
        raise IerfError(f"no concept layer {layer!r} in this graph; its concept layers: "
                        f"{', '.join(graph.nodes)}")
    return graph.nodes[layer]


def _tree(tree: ClusterTree | ConceptBasis | Any) -> ClusterTree:
    """The split tree of a basis, an extractor, or the tree itself."""
    found = tree.extractor if isinstance(tree, ConceptBasis) else tree
    found = found if isinstance(found, ClusterTree) else getattr(found, "tree", None)
    if not isinstance(found, ClusterTree):
        name = type(tree.extractor if isinstance(tree, ConceptBasis) else tree).__name__
        raise IerfError(f"supernodes need a bisecting k-means split tree; {name} has none")
    return found


__all__ = ["annotate", "collapse", "supernodes"]
