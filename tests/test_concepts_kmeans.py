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
