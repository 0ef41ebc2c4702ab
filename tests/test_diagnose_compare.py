"""Two-class and clean-vs-attacked comparisons of concept graphs (IERF Sec. VI-E), and the
region measures, against brute force on small random graphs."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from ierf.diagnose.compare import (
    class_flows,
    compare_attack,
    compare_classes,
    edge_contributions,
    route_balance,
    route_mass,
)
from ierf.diagnose.regions import (
    area_share,
    energy_region,
    halves,
    mass_share,
    route_region_map,
    unit_mass,
)
from ierf.errors import IerfError
from ierf.graph.concept_graph import ConceptGraph
from ierf.graph.routes import NodeLocations, Route, edge_fractions, trace_routes

torch.set_num_threads(2)



def brute_flow(graph: ConceptGraph, layer: int, t: int, c: int) -> float:
    """Σ over paths from node ``t`` of concept layer ``layer`` to class column ``c`` of the
    product of incoming fractions times the class edge."""
    mats = [edge_fractions(e.weights)[:-1] for e in graph.edges[layer:-1]]
    W = graph.edges[-1].weights[:-1]
    total = 0.0
    for path in itertools.product(*[range(m.shape[1]) for m in mats]):
        nodes = [t, *path]
        prod = 1.0
        for m, a, b in zip(mats, nodes[:-1], nodes[1:]):
            prod *= float(m[a, b])
        total += prod * float(W[nodes[-1], c])
    return total


def test_flows_and_edge_contributions_equal_brute_force(random_graph) -> None:
    graph = random_graph([3, 4, 3], 3, seed=0)
    flows = class_flows(graph, [0, 2])
    contrib = edge_contributions(graph, [0, 2])
    for layer in range(3):
        for t in range(flows[layer].shape[0]):
            for j, c in enumerate([0, 2]):
                assert float(flows[layer][t, j]) == pytest.approx(brute_flow(graph, layer, t, c),
                                                                  rel=1e-4, abs=1e-6)
    A = edge_fractions(graph.edges[0].weights)[:-1]
    torch.testing.assert_close(contrib[0][1, 2], A[1, 2] * flows[1][2])
    torch.testing.assert_close(contrib[-1][:, 0], graph.edges[-1].weights[:-1][:, [0, 2]])


def test_deciding_edge_is_the_largest_contribution_difference(random_graph) -> None:
    for seed in range(5):
        graph = random_graph([3, 4, 3], 3, seed=seed)
        cmp = compare_classes(graph, 10, 12, k=3, top=2)
        contrib = edge_contributions(graph, [0, 2])
        best = max(float((c[..., 0] - c[..., 1]).max()) for c in contrib)
        worst = min(float((c[..., 0] - c[..., 1]).min()) for c in contrib)
        assert cmp.deciding_edge.score == pytest.approx(best, rel=1e-6)
        assert cmp.against.score == pytest.approx(worst, rel=1e-6)
        assert len(cmp.deciding_edges) == 3
        e = cmp.deciding_edges[-1]                   # the class pair: q → the class it favours
        q = int(e.source.split(":")[1])
        W = graph.edges[-1].weights
        assert e.score == pytest.approx(float(W[q, 0] - W[q, 2]))
        assert e.target == ("output:10" if e.score >= 0 else "output:12")
        m = cmp.margin
        assert m["total"] == pytest.approx(float(graph.logits[0] - graph.logits[2]), rel=1e-6)
        assert m["concepts"] == pytest.approx(float(W[:-1, 0].sum() - W[:-1, 2].sum()),
                                              rel=1e-5)
        assert m["concepts"] + m["error"] - m["ig_gap"] + m["baseline"] == \
            pytest.approx(m["total"], rel=1e-5, abs=1e-6)
        assert [r.nodes[-1] for r in cmp.routes[1]] == ["output:12"] * len(cmp.routes[1])


def test_shared_and_separating_concepts(random_graph) -> None:
    graph = random_graph([6, 8], 2, seed=3)
    cmp = compare_classes(graph, "class 0", "class 1", top=3)
    for layer in ("l0", "l1"):
        I = graph.nodes[layer].importance
        lo, diff = I.min(1).values, I[:, 0] - I[:, 1]
        ok = (lo > 0).nonzero().flatten().tolist()
        expected = sorted(ok, key=lambda q: -float(lo[q]))[:3]
        assert [e.node for e in cmp.shared if e.node.startswith(layer)] == \
            [f"{layer}:{q}" for q in expected]
        fav = [q for q in range(len(diff)) if diff[q] > 0 and I[q, 0] > 0]
        expected = sorted(fav, key=lambda q: -float(diff[q]))[:3]
        assert [e.node for e in cmp.favour_a if e.node.startswith(layer)] == \
            [f"{layer}:{q}" for q in expected]
    assert all(e.values[1] > e.values[0] for e in cmp.favour_b)
    assert all(e.kind == "shared" and min(e.values) > 0 for e in cmp.shared)
    with pytest.raises(IerfError, match="two different classes"):
        compare_classes(graph, 10, "class 0")
    with pytest.raises(IerfError, match="top must be"):
        compare_classes(graph, 10, 11, top=0)


def test_route_mass_of_all_routes_is_the_first_layer_flow(random_graph) -> None:
    """With positive edges every route is positive: all routes' logit-unit contributions sum
    to 1ᵀ A_1 ⋯ W_L[:, c], the summed class flow of the first layer."""
    graph = random_graph([3, 4, 2], 2, seed=4, sparsity=0.0, positive=True)
    for col in range(2):
        total = float(class_flows(graph, [col])[0].sum())
        assert route_mass(graph, 10 + col, k=1000) == pytest.approx(total, rel=1e-5)


def swap_classes(graph: ConceptGraph) -> ConceptGraph:
    """The graph with its two class nodes' evidence exchanged."""
    edges = [*graph.edges[:-1], replace(graph.edges[-1],
                                        weights=graph.edges[-1].weights[:, [1, 0]])]
    nodes = {l: replace(n, importance=n.importance[:, [1, 0]]) for l, n in graph.nodes.items()}
    return replace(graph, edges=edges, nodes=nodes, logits=graph.logits[[1, 0]])


def test_route_flip_score(random_graph) -> None:
    clean = random_graph([4, 5, 3], 2, seed=6)
    same = compare_attack(clean, clean, 10, 11)
    assert same.route_flip == 0
    assert same.changed == [] and same.changed_edges == []
    assert all(float(e.weights.abs().max()) == 0 for e in same.diff.edges)
    flipped = compare_attack(clean, swap_classes(clean), 10, 11, k=4)
    b = route_balance(clean, 10, 11, k=4)
    my, mt = route_mass(clean, 10, 4), route_mass(clean, 11, 4)
    assert b == pytest.approx((my - mt) / (my + mt))
    assert flipped.balance_clean == pytest.approx(b)
    assert flipped.balance_attacked == pytest.approx(-b)
    assert flipped.route_flip == pytest.approx(b)                   # (b − (−b)) / 2
    assert -1 <= flipped.route_flip <= 1
    assert [r.nodes[:-1] for r in flipped.routes_attacked] == \
        [r.nodes[:-1] for r in trace_routes(clean, 10, 4)]
    assert flipped.route_overlap == 1.0                # the attack rode the clean routes
    tc, W = flipped.target_change, clean.edges[-1].weights
    assert tc["concepts"] == pytest.approx(float(W[:-1, 0].sum() - W[:-1, 1].sum()), rel=1e-5)
    assert tc["error"] == pytest.approx(float(W[-1, 0] - W[-1, 1]), rel=1e-5)
    assert tc["total"] == pytest.approx(float(clean.logits[0] - clean.logits[1]), rel=1e-5)
    assert tc["concepts"] + tc["error"] + tc["rest"] == pytest.approx(tc["total"], abs=1e-5)
    torch.testing.assert_close(flipped.diff.edges[-1].weights,
                               clean.edges[-1].weights[:, [1, 0]] - clean.edges[-1].weights)


def test_changed_concepts_are_repurposed_or_new(random_graph) -> None:
    clean = random_graph([4, 5], 2, seed=8)
    attacked = replace(clean, nodes=dict(clean.nodes))
    imp = clean.nodes["l0"].importance.clone()
    imp[1, 1] += 5.0                                   # concept 1: much more for the target
    imp[2, 1] += 3.0                                   # concept 2 too, but it was absent
    imp[3, 0] -= 4.0                                   # concept 3: less for the clean class
    act = clean.nodes["l0"].activation.clone()
    attacked.nodes["l0"] = replace(clean.nodes["l0"], importance=imp, activation=act + 1.0)
    silent = clean.nodes["l0"].activation.clone()
    silent[2] = 0.0
    silent[1] = 0.9
    clean.nodes["l0"] = replace(clean.nodes["l0"], activation=silent)
    cmp = compare_attack(clean, attacked, 10, 11, top=2)
    kinds = {e.node: e.kind for e in cmp.changed}
    assert kinds["l0:1"] == "repurposed" and kinds["l0:2"] == "new"
    assert kinds["l0:3"] == "suppressed"
    assert cmp.kind_of("l0:1") == "repurposed" and cmp.kind_of("l1:0") == ""
    entry = next(e for e in cmp.changed if e.node == "l0:1")
    assert entry.values[1] == pytest.approx(5.0) and entry.score == pytest.approx(5.0)
    other = random_graph([4, 6], 2, seed=8)
    with pytest.raises(IerfError, match="differ in layers, classes or nodes"):
        compare_attack(clean, other, 10, 11)


# -- regions ---------------------------------------------------------------------------------------

def test_energy_region_is_the_fewest_pixels_holding_the_fraction() -> None:
    g = torch.Generator().manual_seed(0)
    energy = torch.rand(3, 8, 8, generator=g) ** 4
    region = energy_region(energy, 0.5)
    held = (energy * region).sum((1, 2)) / energy.sum((1, 2))
    assert bool((held >= 0.5).all())
    for e, r in zip(energy, region):
        weakest = e[r].min()                     # dropping the weakest kept pixel falls short
        assert float(((e * r).sum() - weakest) / e.sum()) < 0.5
        assert float(e[~r].max()) <= float(weakest)
    even = energy_region(torch.ones(2, 8, 8), 0.25)
    torch.testing.assert_close(area_share(even), torch.full((2,), 0.25))
    with pytest.raises(IerfError, match="fraction"):
        energy_region(energy, 0.0)


def test_mass_share_and_unit_mass() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, :, :2] = 1.0
    maps[1] = 1.0
    maps[1, 0, 0] = -5.0                            # negative mass is ignored
    left = halves(4, 4)[0]
    torch.testing.assert_close(mass_share(maps, left), torch.tensor([1.0, 7 / 15]))
    assert float(area_share(left)) == 0.5
    u = unit_mass(maps)
    torch.testing.assert_close(u.sum((1, 2)), torch.ones(2))
    assert float(unit_mass(torch.zeros(4, 4)).sum()) == 0
    top = halves(4, 6, "horizontal")
    assert top.shape == (2, 4, 6) and bool(top[0, :2].all()) and not bool(top[0, 2:].any())


def test_route_region_map_weights_routes_by_strength() -> None:
    ierfs = torch.zeros(3, 4, 4)
    ierfs[0, :, :2] = 2.0        # a:0 on the left
    ierfs[1, :, 2:] = 1.0        # a:1 on the right
    ierfs[2] = 1.0               # b:0 everywhere
    where = NodeLocations(["a:0", "a:1", "b:0"], ierfs.clone(), ierfs)
    r1 = Route(("a:0", "b:0", "output:1"), ("x", "y", "c"), 0.75, (1.0, 0.75), (1.0, 1.0))
    r2 = Route(("a:1", "b:0", "output:1"), ("x", "y", "c"), -0.25, (1.0, -0.25), (1.0, 1.0))
    m = route_region_map([r1, r2], where)
    assert float(m.sum()) == pytest.approx(1.0)
    left = halves(4, 4)[0]
    # r1: (left + even) / 2 → 0.75 on the left; r2: (right + even) / 2 → 0.25 on the left
    assert float(mass_share(m, left)) == pytest.approx(0.75 * 0.75 + 0.25 * 0.25)
    with pytest.raises(IerfError, match="no routes"):
        route_region_map([], where)
