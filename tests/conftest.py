"""Shared fixtures: the offline models are loaded once per session."""

from __future__ import annotations

import pytest
import torch

import ierf
from ierf.concepts import BisectingSphericalKMeans
from ierf.concepts.basis import ConceptBasis

torch.set_num_threads(2)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the full-size end-to-end runs marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="full-size run: use --slow (a smaller version runs by default)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lite0() -> ierf.Model:
    return ierf.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def resnet50_random() -> ierf.Model:
    torch.manual_seed(0)
    return ierf.load_model("resnet50", weights=None)


@pytest.fixture(scope="session")
def toy() -> ierf.Model:
    return ierf.load_model("toy-resnet")


@pytest.fixture(scope="session")
def toy_vit() -> ierf.Model:
    return ierf.load_model("toy-vit")


@pytest.fixture(scope="session")
def fit_basis():
    """``fit_basis(model, pfvs, layer, k)``: a small bisecting k-means basis of 256 of
    ``pfvs[layer]``'s vectors, bound to ``layer`` (the graph tests' bases)."""

    def fit(model: ierf.Model, pfvs: dict, layer: str, k: int) -> ConceptBasis:
        X = pfvs[layer].vectors.flatten(0, 1)
        X = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:256]]
        km = BisectingSphericalKMeans(k, center=X.mean(0), n_init=1, max_iter=10, alpha=0.01,
                                      lasso_max_iter=200, lasso_tol=1e-2).fit(X)
        return ConceptBasis.bind(km, model, layer, path=f"bases/{layer}")

    return fit


@pytest.fixture(scope="session")
def random_graph():
    """``random_graph(sizes, n_classes, seed, sparsity=0.3, positive=False, error=True)``: a
    concept graph with random (signed unless ``positive``) edges, a fraction ``sparsity`` of
    them zero, classes 10, 11, …; the last layer's importances are its class edges."""
    from ierf.graph.concept_graph import ConceptGraph, Edges, LayerNodes

    def build(sizes: list[int], n_classes: int = 2, seed: int = 0, sparsity: float = 0.3,
              positive: bool = False, error: bool = True) -> ConceptGraph:
        g = torch.Generator().manual_seed(seed)
        layers = [f"l{i}" for i in range(len(sizes))] + ["output"]
        nodes = {l: LayerNodes(l, torch.arange(K), [f"{l} #{k}" for k in range(K)],
                               torch.randn(K, n_classes, generator=g), torch.rand(K, generator=g),
                               torch.rand(K, generator=g), 0.1,
                               torch.randn(n_classes, generator=g))
                 for l, K in zip(layers, sizes)}
        edges = []
        for i, K in enumerate(sizes):
            T = sizes[i + 1] if i + 1 < len(sizes) else n_classes
            w = torch.randn(K + 1, T, generator=g)
            w = (w.abs() if positive else w) * (torch.rand(K + 1, T, generator=g) > sparsity)
            if not error:
                w[-1] = 0
            edges.append(Edges(layers[i], layers[i + 1], w, "ig", torch.randn(T, generator=g)))
        last = layers[len(sizes) - 1]
        nodes[last].importance = edges[-1].weights[:-1].clone()
        return ConceptGraph(layers, nodes, torch.arange(10, 10 + n_classes),
                            [f"class {c}" for c in range(n_classes)],
                            torch.randn(n_classes, generator=g), torch.rand(n_classes, generator=g),
                            edges)

    return build


@pytest.fixture
def one_thread():
    """Torch on one CPU thread for the test: tiny SAE / k-means steps run faster so (on a busy
    2-core machine every small op's OpenMP barrier waits for the other core: measured 3 ms vs
    170 ms a step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
