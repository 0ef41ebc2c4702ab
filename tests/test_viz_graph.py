"""Static figures of a concept graph (Fig. 9 style) and of one image's concept routes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.image import AxesImage
from PIL import Image

import ierf
from ierf.concepts import BisectingSphericalKMeans
from ierf.concepts.basis import ConceptBasis
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.graph import build_graph
from ierf.graph.concept_graph import ConceptGraph, Edges, LayerNodes
from ierf.graph.routes import NodeLocations, locate_nodes, trace_routes
from ierf.viz.graph import (
    draw_graph,
    draw_routes,
    graph_figure,
    node_thumbnails,
    routes_figure,
    save,
)

torch.set_num_threads(2)
PNG = b"\x89PNG\r\n\x1a\n"


def random_graph(sizes: list[int], n_classes: int = 2, seed: int = 0) -> ConceptGraph:
    g = torch.Generator().manual_seed(seed)
    layers = [f"layer{i + 1}" for i in range(len(sizes))] + ["output"]
    nodes = {l: LayerNodes(l, torch.arange(K), [f"{l} concept number {k}" for k in range(K)],
                           torch.randn(K, n_classes, generator=g), torch.rand(K, generator=g),
                           torch.rand(K, generator=g), 0.2, torch.randn(n_classes, generator=g))
             for l, K in zip(layers, sizes)}
    edges = [Edges(layers[i], layers[i + 1],
                   torch.randn(K + 1, sizes[i + 1] if i + 1 < len(sizes) else n_classes,
                               generator=g), "ig") for i, K in enumerate(sizes)]
    return ConceptGraph(layers, nodes, torch.arange(n_classes) * 3,
                        ["red-solid-circle+blue-stripes-square", "cat"][:n_classes],
                        torch.zeros(n_classes), torch.tensor([0.7, 0.3][:n_classes]), edges)


def boxes(fig) -> dict[str, object]:
    return {p.get_gid()[5:]: p for ax in fig.axes for p in ax.patches
            if (p.get_gid() or "").startswith("node:")}


def all_ids(graph: ConceptGraph) -> set[str]:
    return {i for l in graph.layers for i in graph.node_ids(l)}


def test_graph_figure_has_one_box_per_node_and_the_drawn_edges() -> None:
    graph = random_graph([4, 5, 3])
    fig = graph_figure(graph, min_weight=0.3)
    try:
        found = boxes(fig)
        assert set(found) == all_ids(graph) and len(found) == 4 + 5 + 3 + 3 + 2
        for layer in graph.layers[:-1]:                  # the error node is drawn dashed
            assert found[f"{layer}:error"].get_linestyle() == "--"
            assert found[f"{layer}:0"].get_linestyle() in ("-", "solid")
        lines = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
        drawn = sum(int((e.weights.abs() >= 0.3 * e.weights.abs().max()).sum())
                    for e in graph.edges)
        assert len(lines) == 1 and len(lines[0].get_segments()) == drawn
        widths = lines[0].get_linewidths()
        assert widths.min() >= 0.4 and widths.max() == pytest.approx(5.0)   # the strongest
        texts = " ".join(t.get_text() for t in fig.axes[0].texts)
        assert "residual 20%" in texts and "p = 0.70" in texts and "classes" in texts
    finally:
        plt.close(fig)


def test_draw_graph_writes_valid_png_and_svg(tmp_path) -> None:
    graph = random_graph([3, 4]).prune(top_k_per_class=1, top_shared=1, top_parents=2)
    png = draw_graph(graph, tmp_path / "g.png", title="a graph")
    assert png.read_bytes()[:8] == PNG
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    svg = draw_graph(graph, tmp_path / "g.svg")
    root = ET.parse(svg).getroot()
    ids = [el.get("id") for el in root.iter() if (el.get("id") or "").startswith("node:")]
    assert sorted(i[5:] for i in ids) == sorted(all_ids(graph))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g.svg"]   # no temp files


def test_thumbnails_and_routes_are_drawn(tmp_path) -> None:
    graph = random_graph([3, 4])
    rgb = torch.rand(3, 16, 16)
    card = tmp_path / "card.png"
    plt.imsave(card, np.random.default_rng(0).random((8, 8, 3)))
    thumbs = {"layer1:0": rgb, "layer2:error": rgb.permute(1, 2, 0).numpy(), "output:3": card}
    routes = trace_routes(graph, "cat", k=2)
    fig = graph_figure(graph, thumbs, routes=routes)
    try:
        images = [a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)]
        assert len(images) == 3
        lines = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
        assert len(lines) == 2 and len(lines[0].get_segments()) == 2 * 2   # 2 routes × 2 edges
    finally:
        plt.close(fig)


def test_bad_figure_input_is_refused(tmp_path) -> None:
    graph = random_graph([3, 4])
    with pytest.raises(IerfError, match="use a .png, .svg or .pdf path"):
        draw_graph(graph, tmp_path / "g.jpg")
    with pytest.raises(IerfError, match="thumbnails for nodes not in the graph"):
        graph_figure(graph, {"layer9:0": torch.rand(3, 4, 4)})
    with pytest.raises(IerfError, match="does not exist"):
        plt.close(graph_figure(graph, {"layer1:0": tmp_path / "missing.png"}))
    with pytest.raises(IerfError, match="prune the graph first"):
        graph_figure(random_graph([50, 3]))
    other = random_graph([6, 4], seed=1)
    with pytest.raises(IerfError, match="route nodes not in the drawn graph"):
        graph_figure(graph, routes=trace_routes(other, "cat", k=3, order="abs"))
    assert not list(tmp_path.iterdir())
    routes = trace_routes(graph, "cat", k=1)
    loc = NodeLocations(["layer1:0"], torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(IerfError, match="no location for"):
        routes_figure(torch.rand(3, 8, 8), routes, loc)
    with pytest.raises(IerfError, match="no routes to draw"):
        routes_figure(torch.rand(3, 8, 8), [], loc)
    with pytest.raises(IerfError, match=r"\(3, H, W\)"):
        routes_figure(torch.rand(1, 3, 8, 8), routes, loc)


def test_end_to_end_on_toy_resnet(tmp_path) -> None:
    """Graph of one image → routes → node locations → both figures (~15 s on 2 idle cores)."""
    model = ierf.load_model("toy-resnet")
    layers = ["layer2", "layer3"]
    with torch.no_grad():
        fit = model.pfvs(model.normalize(generate(16, seed=1, split="train").images), layers)
    bases = {}
    for layer, k in zip(layers, (5, 6)):
        X = fit[layer].vectors.flatten(0, 1)
        X = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:256]]
        km = BisectingSphericalKMeans(k, center=X.mean(0), n_init=1, max_iter=10, alpha=0.01,
                                      lasso_max_iter=200, lasso_tol=1e-2).fit(X)
        bases[layer] = ConceptBasis.bind(km, model, layer)
    image = generate(1, seed=0, split="test").images
    x = model.normalize(image)
    top = int(model(x).argmax())
    graph = build_graph(model, bases, x, [top, (top + 1) % 8], n_steps=4, per_image=True,
                        progress=False)[0]
    routes = trace_routes(graph, top, k=2)
    assert len(routes) == 2 and all(r.nodes[-1] == f"output:{top}" for r in routes)
    loc = locate_nodes(model, x, bases, routes)
    fig = routes_figure(image[0], routes, loc, title="routes")
    shown = [a for a in fig.axes if a.images]
    assert len(shown) == 2 * (1 + 2 * 3)           # per route: the input, 3 nodes × 2 panels
    assert save(fig, tmp_path / "routes.png").read_bytes()[:8] == PNG
    with pytest.raises(IerfError, match="use a .png, .svg or .pdf path"):
        draw_routes(image[0], routes, loc, tmp_path / "routes.gif")
    pruned = graph.prune(top_k_per_class=2, top_shared=1, top_parents=2)
    kept = all_ids(pruned)
    thumbs = {k: v for k, v in node_thumbnails(image[0], loc).items() if k in kept}
    drawn = [r for r in routes if set(r.nodes) <= kept]
    svg = draw_graph(pruned, tmp_path / "graph.svg", thumbs, routes=drawn)
    root = ET.parse(svg).getroot()
    assert sum((el.get("id") or "").startswith("node:") for el in root.iter()) == len(kept)
    assert draw_graph(graph, tmp_path / "graph.png").read_bytes()[:8] == PNG
