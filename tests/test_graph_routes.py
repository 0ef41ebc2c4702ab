"""Concept tracing (IERF Sec. VI-D): the strongest routes to a class and where their nodes are."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import ierf
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.graph import build_graph
from ierf.graph.concept_graph import ConceptGraph
from ierf.graph.routes import (
    Route,
    WeightedPFVTarget,
    edge_fractions,
    locate_nodes,
    trace_routes,
)
from ierf.local.srd import SRD
from ierf.targets import PFVTarget

torch.set_num_threads(2)



def brute_force(graph: ConceptGraph, col: int, normalise: str) -> list[tuple[float, tuple]]:
    """Every concept route to class column ``col`` with a non-zero strength."""
    mats = [edge_fractions(e.weights, normalise)[:-1] for e in graph.edges]
    found = []
    for path in itertools.product(*[range(len(m)) for m in mats]):
        steps = [float(m[r, c]) for m, r, c in zip(mats, path, [*path[1:], col])]
        if all(s != 0 for s in steps):
            found.append((float(torch.tensor(steps, dtype=torch.float64).prod()), path))
    return found


@pytest.mark.parametrize("normalise", ["incoming", "layer"])
@pytest.mark.parametrize("order", ["positive", "negative", "abs"])
def test_routes_equal_brute_force(order: str, normalise: str, random_graph) -> None:
    key = {"positive": lambda t: -t[0], "negative": lambda t: t[0],
           "abs": lambda t: -abs(t[0])}[order]
    for seed in range(8):
        graph = random_graph([4, 5, 3, 6], 3, seed)
        for col in range(3):
            expected = sorted(brute_force(graph, col, normalise), key=key)[:7]
            routes = trace_routes(graph, 10 + col, k=7, order=order, normalise=normalise)
            assert len(routes) == len(expected)
            for r, (s, path) in zip(routes, expected):
                assert r.strength == pytest.approx(s, rel=1e-5, abs=1e-9)
                assert r.nodes == (*(f"l{i}:{q}" for i, q in enumerate(path)),
                                   f"output:{10 + col}")


def test_k_larger_than_the_number_of_routes_returns_all_of_them(random_graph) -> None:
    graph = random_graph([2, 3, 2], 2, seed=3, sparsity=0.5)
    everything = brute_force(graph, 1, "incoming")
    routes = trace_routes(graph, "class 1", k=1000, order="abs")
    assert len(routes) == len(everything) and len({r.nodes for r in routes}) == len(routes)


def test_strengths_are_shares_of_the_class_evidence(random_graph) -> None:
    """Without error edges and with all edges present, |strength| over all routes sums to 1;
    the strength is the product of the route's fractions and fractions are weight / Σ|w|."""
    graph = random_graph([3, 4, 2], 2, seed=5, sparsity=0.0, error=False)
    routes = trace_routes(graph, 10, k=100, order="abs")
    assert len(routes) == 3 * 4 * 2
    assert sum(abs(r.strength) for r in routes) == pytest.approx(1.0, abs=1e-5)
    r = routes[0]
    assert r.strength == pytest.approx(float(torch.tensor(r.fractions).prod()), rel=1e-5)
    w = graph.edges[0].weights
    q, t = int(r.nodes[0].split(":")[1]), int(r.nodes[1].split(":")[1])
    assert r.weights[0] == pytest.approx(float(w[q, t]))
    assert r.fractions[0] == pytest.approx(float(w[q, t] / w[:, t].abs().sum()), rel=1e-5)
    assert r.labels[-1] == "class 0" and r.to_dict()["nodes"] == list(r.nodes)


def test_routes_end_at_the_requested_class_and_follow_kept_edges(random_graph) -> None:
    graph = random_graph([5, 6, 4], 3, seed=1, sparsity=0.0)
    pruned = graph.prune(top_k_per_class=2, top_shared=1, top_parents=2)
    for c, name in zip(range(10, 13), pruned.class_names):
        routes = trace_routes(pruned, name, k=4)
        assert routes and all(r.nodes[-1] == f"output:{c}" for r in routes)
        assert [r.strength for r in routes] == sorted((r.strength for r in routes),
                                                      reverse=True)
        for r in routes:
            assert len(r.nodes) == 4 and all(w != 0 for w in r.weights)
            assert [n.rpartition(":")[0] for n in r.nodes] == pruned.layers
            for node, parent in zip(r.nodes[1:], r.nodes[:-1]):
                assert parent in dict(pruned.parents(node))
    later = trace_routes(graph, 11, k=3, start="l1")
    assert all(len(r.nodes) == 3 and r.nodes[0].startswith("l1:") for r in later)


def test_bad_input_is_refused(random_graph) -> None:
    graph = random_graph([3, 3], 2, seed=0)
    with pytest.raises(IerfError, match="class 99 is not in this graph"):
        trace_routes(graph, 99)
    with pytest.raises(IerfError, match="unknown class 'cat'"):
        trace_routes(graph, "cat")
    for k in (0, -2, 1.5, True):
        with pytest.raises(IerfError, match="k must be a positive number of routes"):
            trace_routes(graph, 10, k=k)
    with pytest.raises(IerfError, match="order must be one of"):
        trace_routes(graph, 10, order="best")
    with pytest.raises(IerfError, match="normalise must be one of"):
        trace_routes(graph, 10, normalise="softmax")
    with pytest.raises(IerfError, match="start must be a concept layer"):
        trace_routes(graph, 10, start="output")


# -- on a real model ----------------------------------------------------------------------

LAYERS = ("layer2", "layer3")


@pytest.fixture(scope="module")
def toy(fit_basis) -> dict:
    model = ierf.load_model("toy-resnet")
    with torch.no_grad():
        fit = model.pfvs(model.normalize(generate(16, seed=1, split="train").images), LAYERS)
    bases = {LAYERS[0]: fit_basis(model, fit, LAYERS[0], 6),
             LAYERS[1]: fit_basis(model, fit, LAYERS[1], 8)}
    x = model.normalize(generate(1, seed=0, split="test").images)
    graph = build_graph(model, bases, x, [7, 0], n_steps=4, per_image=True, progress=False)[0]
    return {"model": model, "bases": bases, "x": x, "graph": graph}


def test_locations_of_route_nodes(toy) -> None:
    model, bases, x = toy["model"], toy["bases"], toy["x"]
    routes = trace_routes(toy["graph"], 7, k=2)
    assert all(isinstance(r, Route) and r.nodes[-1] == "output:7" for r in routes)
    engine = SRD(model)
    loc = locate_nodes(model, x, bases, [*routes, "layer3:error"], engine=engine)
    ids = list(dict.fromkeys([n for r in routes for n in r.nodes] + ["layer3:error"]))
    assert loc.node_ids == ids
    assert loc.maps.shape == loc.ierfs.shape == (len(ids), 64, 64)
    # the map is the node's Lasso coefficient (Eq. 12), upsampled
    node = routes[0].nodes[1]
    layer, k = node.split(":")
    with torch.no_grad():
        pf = model.pfvs(x, layer)[layer]
        u = bases[layer].encode(pf.vectors)[0, :, int(k)]
    up = F.interpolate(u.reshape(1, 1, *pf.grid), size=(64, 64), mode="bilinear",
                       align_corners=False)[0, 0]
    torch.testing.assert_close(loc[node][0], up)
    # its iERF is the coefficient-weighted sum of its PFVs' iERFs (SRD is linear)
    per_pfv = engine.ierfs(x, [PFVTarget(layer, p) for p in range(u.numel())])[:, 0]
    expected = (u[:, None, None] * per_pfv).sum(0)
    torch.testing.assert_close(loc[node][1], expected, atol=1e-5 * expected.abs().max(),
                               rtol=1e-4)
    # the class node: its SRD saliency map
    torch.testing.assert_close(loc["output:7"][1], engine.attribute(x, target=7)[0])
    assert float(loc["layer3:error"][0].min()) >= 0       # residual share per position
    single = engine.ierfs(x, [WeightedPFVTarget(layer, u)])[0, 0]
    torch.testing.assert_close(single, loc[node][1])


def test_locate_refuses_bad_input(toy) -> None:
    model, bases, x = toy["model"], toy["bases"], toy["x"]
    with pytest.raises(IerfError, match="one image"):
        locate_nodes(model, x.expand(2, -1, -1, -1), bases, ["layer2:0"])
    with pytest.raises(IerfError, match="no concept basis for layer 'layer1'"):
        locate_nodes(model, x, bases, ["layer1:0"])
    with pytest.raises(IerfError, match="concepts 0..7"):
        locate_nodes(model, x, bases, ["layer3:8"])
    with pytest.raises(IerfError, match="node ids like"):
        locate_nodes(model, x, bases, ["layer3"])
    with pytest.raises(IerfError, match="no nodes to locate"):
        locate_nodes(model, x, bases, [])
    loc = locate_nodes(model, x, bases, ["layer2:1"])
    with pytest.raises(IerfError, match="no location for 'layer2:2'"):
        loc["layer2:2"]
