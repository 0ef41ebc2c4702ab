"""Bisecting spherical k-means concepts (GIG Appendix B) and μ_BN centring (GIG Eq. 8–9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import BisectingKMeans
from torch import nn

from ierf.concepts import (
    BisectingSphericalKMeans,
    ConceptExtractor,
    bn_shift,
    relative_l2,
    sparse_pfvs,
)
from ierf.concepts.extractors.kmeans import bisecting_spherical_kmeans, spherical_inertia
from ierf.errors import IerfError

torch.set_num_threads(1)


def rays(n: int = 600, c: int = 16, k: int = 6, seed: int = 0) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """PFVs along k random directions (random positive scale) plus a little noise."""
    return sparse_pfvs(n, c, k, 1, noise=0.03, seed=seed)


def best_cosines(truth: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    return (F.normalize(truth, dim=0).T @ F.normalize(V, dim=0)).amax(1)


def test_recovers_true_directions_and_sizes_add_up() -> None:
    X, D = rays()
    km = BisectingSphericalKMeans(6).fit(X)
    assert km.get_dictionary().shape == (16, 6)
    assert (best_cosines(D, km.get_dictionary()) > 0.95).all()
    sizes = torch.bincount(km.labels_, minlength=6)
    assert sizes.sum() == len(X) and (sizes > 0).all()


def test_centring_by_mu_bn() -> None:
    X, D = rays(seed=1)
    mu = torch.linspace(-3, 3, 16)
    km = BisectingSphericalKMeans(6, center=mu, encoding="nearest").fit(X + mu)
    assert (best_cosines(D, km.get_dictionary()) > 0.95).all()
    X_hat = km.decode(km.encode(X + mu))            # U Vᵀ + μ_BN (GIG Eq. 9)
    assert relative_l2(X, X_hat - mu).mean() < 0.2


def test_bn_shift_is_bn_of_zero() -> None:
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    zero = torch.zeros(1, 5, 1, 1)
    torch.testing.assert_close(bn_shift(bn), bn(zero).flatten())


def test_not_worse_than_sklearn_bisecting_kmeans() -> None:
    X, _ = sparse_pfvs(800, 16, 24, 2, noise=0.05, seed=2)
    Z = F.normalize(X, dim=1)
    ours = bisecting_spherical_kmeans(Z, 12, seed=0)
    theirs = BisectingKMeans(12, bisecting_strategy="largest_cluster", random_state=0,
                             n_init=3).fit(Z.numpy()).labels_
    assert spherical_inertia(Z, ours) <= 1.02 * spherical_inertia(Z, torch.from_numpy(theirs))


def test_deterministic_given_seed_and_default_k() -> None:
    X, _ = sparse_pfvs(200, 4, 8, 2, seed=3)
    a = BisectingSphericalKMeans(seed=7).fit(X)
    b = BisectingSphericalKMeans(seed=7).fit(X)
    assert a.get_dictionary().shape == (4, 32)                   # K = 8 C
    assert torch.equal(a.labels_, b.labels_)


def test_encodings() -> None:
    X, _ = rays(n=200, seed=4)
    km = BisectingSphericalKMeans(6, alpha=1e-3).fit(X)
    U = km.encode(X)
    assert relative_l2(X, km.decode(U)).mean() < 0.2
    km.encoding = "nearest"
    U = km.encode(X)
    assert ((U != 0).sum(1) == 1).all()
    assert torch.equal(U.abs().argmax(1), km.labels_)


def test_duplicate_rows_still_split() -> None:
    X = torch.ones(5, 3)
    labels = bisecting_spherical_kmeans(F.normalize(X, dim=1), 3)
    assert torch.bincount(labels).tolist() == [3, 1, 1]
    with pytest.raises(IerfError):
        bisecting_spherical_kmeans(X, 6)


def test_save_load_round_trip(tmp_path) -> None:
    X, _ = rays(n=200, seed=5)
    km = BisectingSphericalKMeans(6, center=torch.full((16,), 0.1), alpha=1e-3).fit(X)
    km.save(tmp_path / "concepts")
    assert (tmp_path / "concepts.safetensors").exists() and (tmp_path / "concepts.json").exists()
    loaded = ConceptExtractor.load(tmp_path / "concepts")
    assert isinstance(loaded, BisectingSphericalKMeans)
    assert torch.equal(loaded.encode(X), km.encode(X))
    assert torch.equal(loaded.decode(km.encode(X)), km.decode(km.encode(X)))
    with pytest.raises(IerfError):
        BisectingSphericalKMeans().encode(X)


@pytest.fixture(scope="module")
def toy_layer3(toy) -> torch.Tensor:
    """Unit-normalised toy-resnet ``layer3`` PFVs (C = 64) of 24 synthetic-benchmark images."""
    from ierf.data.synthetic import generate
    from ierf.models.toy import TOY_MEAN, TOY_STD

    mean, std = torch.tensor(TOY_MEAN)[:, None, None], torch.tensor(TOY_STD)[:, None, None]
    x = (generate(24, seed=0, split="train").images - mean) / std
    with torch.no_grad():
        X = toy.pfvs(x, "layer3")["layer3"].vectors.flatten(0, 1)
    return F.normalize(X, dim=1)


def test_batched_splits_form_a_bisection_tree(toy_layer3: torch.Tensor) -> None:
    """Every split cluster has two children whose members partition its members, halves of
    a spherical 2-means split; clusters are split largest first up to a factor two."""
    Z, K = toy_layer3, 96
    labels, tree = bisecting_spherical_kmeans(Z, K, seed=1, return_tree=True)
    assert torch.equal(torch.bincount(labels, minlength=K), tree.sizes[:K])
    internal = torch.arange(K, 2 * K - 1)
    children = [(tree.parents == node).nonzero().flatten() for node in internal.tolist()]
    assert all(len(c) == 2 for c in children)
    for node, (a, b) in zip(internal.tolist(), children):
        members = torch.isin(labels, tree.leaves(node))
        halves = [torch.isin(labels, tree.leaves(int(c))) for c in (a, b)]
        assert torch.equal(halves[0] ^ halves[1], members) and not (halves[0] & halves[1]).any()
        assert int(members.sum()) == int(tree.sizes[node])
        # each half lies closer (in cosine) to its own mean direction than to the other's
        # on average: a 2-means split, not an arbitrary one
        c = F.normalize(torch.stack([Z[h].sum(0) for h in halves]), dim=1)
        assert ((Z[halves[0]] @ (c[0] - c[1])).mean() > 0) & ((Z[halves[1]] @ (c[1] - c[0])
                                                              ).mean() > 0)
    split_sizes = tree.sizes[K:]
    assert (split_sizes[1:] <= 2 * torch.cummin(split_sizes, 0).values[:-1]).all()


def test_not_worse_than_sklearn_on_real_pfvs(toy_layer3: torch.Tensor) -> None:
    """Spherical inertia on real toy-resnet PFVs, against scikit-learn's ``BisectingKMeans``
    (largest cluster first, same restarts) on the same unit rows, summed over two seeds;
    K = 4·C keeps it fast (``benchmarks/bench_kmeans.py`` compares at 8·C)."""
    Z, K = toy_layer3, 4 * toy_layer3.shape[1]
    ours = [spherical_inertia(Z, bisecting_spherical_kmeans(Z, K, seed=s)) for s in range(2)]
    theirs = [spherical_inertia(Z, torch.from_numpy(BisectingKMeans(
        K, bisecting_strategy="largest_cluster", n_init=3, random_state=s).fit(
        Z.numpy()).labels_).long()) for s in range(2)]
    assert sum(ours) <= 1.01 * sum(theirs)


def test_seeded_runs_repeat_and_tolerance_zero_converges(toy_layer3: torch.Tensor) -> None:
    Z = toy_layer3[:600]
    a = bisecting_spherical_kmeans(Z, 40, seed=3, return_tree=True)
    b = bisecting_spherical_kmeans(Z, 40, seed=3, return_tree=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].parents, b[1].parents)
    assert not torch.equal(a[0], bisecting_spherical_kmeans(Z, 40, seed=4))
    # tol = 0 runs every split to a fixed point: one more Lloyd step (assign each row to the
    # nearer half's mean direction) moves no row of the last split
    labels = bisecting_spherical_kmeans(Z, 2, tol=0.0)
    c = F.normalize(torch.stack([Z[labels == k].sum(0) for k in range(2)]), dim=1)
    assert torch.equal((Z @ (c[1] - c[0]) > 0).long(), labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_clusters_as_well_as_the_cpu(toy_layer3: torch.Tensor) -> None:
    """On a GPU the labels stay on the device, every label is used, the splits still form a
    bisection tree, and the inertia is the CPU's up to the float32 ties that reductions in
    another order can flip (a split decided differently changes its subtree: 1 %)."""
    Z, K = toy_layer3, 96
    labels, tree = bisecting_spherical_kmeans(Z.cuda(), K, seed=1, return_tree=True)
    assert labels.is_cuda and torch.equal(torch.bincount(labels.cpu(), minlength=K),
                                          tree.sizes[:K])
    cpu = spherical_inertia(Z, bisecting_spherical_kmeans(Z, K, seed=1))
    assert spherical_inertia(Z, labels.cpu()) <= 1.01 * cpu
