"""Cumulative-influence pruning of a concept graph (as circuit-tracer prunes attribution
graphs; IERF Sec. VI-D keeps "the dominant concept routes").

Influence is what a node passes on to the class nodes along all paths. Each target's incoming
``|ICAT|`` weights are normalised to sum to one (``Â = |W| / Σ_sources |W|``), the class nodes
start with weights ``w`` (the classes' mean probabilities, renormalised, by default) and
influence flows back one layer pair at a time, ``I_a = Â_{ab} I_b`` (the chain is layered, so
circuit-tracer's ``(1 − Â)⁻¹`` series is these products). The last concept layer's influences
sum to one, error node included; an earlier layer's to one less what the later error nodes
hold (they have no parents). An edge's influence is ``Â_{st} I_t``.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from ierf.errors import IerfError


def normalised_adjacency(weights: torch.Tensor) -> torch.Tensor:
    """``|W|`` with every column (target) scaled to sum to one; empty columns stay 0."""
    w = weights.abs()
    total = w.sum(0, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(1e-30), 0.0)


def node_influence(edges: list[torch.Tensor], class_weights: torch.Tensor
                   ) -> list[torch.Tensor]:
    """Influence of every source node on the class nodes, per layer pair.

    Parameters
    ----------
    edges : the chain's weights, input side first: ``(K_a + 1, K_b)`` per pair (concept rows
        then the error row; columns the next layer's concepts), the last ``(K_L + 1, C)``.
    class_weights : (C,) non-negative weights of the class nodes.

    Returns
    -------
    One (K_a + 1,) tensor per pair: the influence of its source layer's nodes.
    """
    if (class_weights < 0).any() or class_weights.sum() <= 0:
        raise IerfError("class weights must be non-negative and not all zero")
    for w, nxt in pairwise(edges):
        if w.shape[1] + 1 != nxt.shape[0]:
            raise IerfError(f"edge matrices do not chain: {tuple(w.shape)} then "
                            f"{tuple(nxt.shape)}")
    if edges[-1].shape[1] != len(class_weights):
        raise IerfError(f"{len(class_weights)} class weights for {edges[-1].shape[1]} classes")
    target = class_weights / class_weights.sum()
    out: list[torch.Tensor] = []
    for w in reversed(edges):
        source = normalised_adjacency(w) @ target.to(w)
        out.append(source)
        target = source[:-1]                       # the error node has no parents
    return out[::-1]


def edge_influence(weights: torch.Tensor, target_influence: torch.Tensor) -> torch.Tensor:
    """``Â_{st} I_t`` (K_a + 1, T): how much of the targets' influence runs through each edge."""
    return normalised_adjacency(weights) * target_influence


def cumulative_keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The smallest set of entries, largest first, whose sum reaches ``threshold`` of the
    total (ties broken by position), as a boolean mask of ``scores``' shape."""
    if not 0 < threshold <= 1:
        raise IerfError(f"a cumulative-influence threshold is in (0, 1], got {threshold}")
    flat = scores.flatten()
    total = flat.sum()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if total <= 0:
        return keep.reshape(scores.shape)
    order = flat.argsort(descending=True, stable=True)
    before = flat[order].cumsum(0) - flat[order]          # mass of the larger ones
    keep[order[before < threshold * total]] = True
    return keep.reshape(scores.shape) & (scores > 0)
