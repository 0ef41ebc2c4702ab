"""Cumulative-influence pruning (circuit-tracer's rule on the Interlayer Concept Graph),
checked against influence summed over every path by enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from ierf.errors import IerfError
from ierf.graph import from_json, to_json
from ierf.graph.influence import cumulative_keep, node_influence

SIZES = (4, 5, 3)          # concepts of two layers, then classes



def path_influence(weights: list[torch.Tensor], w: torch.Tensor) -> list[torch.Tensor]:
    """Σ over every path node → class of Π normalised |weights| × class weight, enumerated."""
    A = [x.abs() / x.abs().sum(0, keepdim=True) for x in weights]
    w = w / w.sum()
    first = torch.zeros(A[0].shape[0])
    for s, t, c in itertools.product(range(A[0].shape[0]), range(A[0].shape[1]),
                                     range(A[1].shape[1])):
        first[s] += A[0][s, t] * A[1][t, c] * w[c]
    second = torch.zeros(A[1].shape[0])
    for t, c in itertools.product(range(A[1].shape[0]), range(A[1].shape[1])):
        second[t] += A[1][t, c] * w[c]
    return [first, second]


def test_influence_equals_the_sum_over_all_paths(random_graph) -> None:
    graph = random_graph(list(SIZES[:-1]), SIZES[-1], seed=0)
    weights = [e.weights for e in graph.edges]
    ours = node_influence(weights, graph.probs)
    ref = path_influence(weights, graph.probs)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r)
    # the last layer holds all the influence; an earlier one all but the later error nodes'
    torch.testing.assert_close(ours[1].sum(), torch.tensor(1.0))
    torch.testing.assert_close(ours[0].sum(), 1 - ours[1][-1])


def test_cumulative_keep_is_the_smallest_set_reaching_the_threshold() -> None:
    scores = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.1])
    assert cumulative_keep(scores, 0.5).tolist() == [False, True, False, False, False]
    assert cumulative_keep(scores, 0.8).tolist() == [False, True, False, True, False]
    assert cumulative_keep(scores, 0.81).sum() == 3
    assert cumulative_keep(scores, 1.0).tolist() == [True, True, False, True, True]
    with pytest.raises(IerfError, match=r"in \(0, 1\]"):
        cumulative_keep(scores, 0.0)


def test_pruning_keeps_the_influential_nodes_and_round_trips(tmp_path, random_graph) -> None:
    graph = random_graph(list(SIZES[:-1]), SIZES[-1], seed=1)
    pruned = graph.prune_by_influence(node_threshold=0.7, edge_threshold=0.9)
    influence = path_influence([e.weights for e in graph.edges], graph.probs)
    for layer, infl in zip(["l0", "l1"], influence):
        concepts = infl[:-1]
        kept = pruned.nodes[layer].index
        assert concepts[kept].sum() >= 0.7 * concepts.sum() - 1e-6
        dropped = torch.ones(len(concepts), dtype=torch.bool)
        dropped[kept] = False
        if dropped.any():               # nothing dropped outweighs what was kept
            assert concepts[dropped].max() <= concepts[kept].min() + 1e-6
            assert concepts[kept].sum() - concepts[kept].min() < 0.7 * concepts.sum()
    assert pruned.edges[0].weights.shape == (len(pruned.nodes["l0"].index) + 1,
                                             len(pruned.nodes["l1"].index))
    assert pruned.edges[1].weights.shape[1] == SIZES[-1]      # class nodes all stay
    assert (pruned.edges[0].weights != 0).sum() < (graph.edges[0].weights != 0).sum()
    to_json(pruned, tmp_path / "g.json")
    back = from_json(tmp_path / "g.json")
    assert back.metadata["pruning"] == {"node_threshold": 0.7, "edge_threshold": 0.9}
    torch.testing.assert_close(back.edges[1].weights, pruned.edges[1].weights)


def test_one_class_keeps_that_class_route(random_graph) -> None:
    graph = random_graph(list(SIZES[:-1]), SIZES[-1], seed=2)
    focus = graph.prune_by_influence(0.5, 1.0, classes=["class 1"])
    w = torch.tensor([0.0, 1.0, 0.0])
    infl = path_influence([e.weights for e in graph.edges], w)[1][:-1]
    assert set(focus.nodes["l1"].index.tolist()) == set(
        cumulative_keep(infl, 0.5).nonzero().flatten().tolist())
    with pytest.raises(IerfError, match="unknown class"):
        graph.prune_by_influence(classes=["nope"])
