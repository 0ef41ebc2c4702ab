"""Working-set homotopy Lasso (IERF Eq. 12) on coherent dictionaries against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Lasso

import ierf
from ierf.concepts import decompose, lasso_objective, sparse_pfvs
from ierf.concepts.decompose import _duality_gap
from ierf.concepts.extractors.kmeans import bisecting_spherical_kmeans, cluster_means

torch.set_num_threads(1)


def sklearn_lasso(X: torch.Tensor, V: torch.Tensor, alpha: float, positive: bool) -> torch.Tensor:
    rows = [Lasso(alpha=alpha, fit_intercept=False, positive=positive, tol=1e-10,
                  max_iter=200_000).fit(V.numpy(), x.numpy()).coef_ for x in X]
    return torch.from_numpy(np.stack(rows))


def kmeans_dictionary(X: torch.Tensor, k: int) -> torch.Tensor:
    """(C, K) bisecting spherical k-means centroids (GIG App. B): a coherent dictionary."""
    return cluster_means(X, bisecting_spherical_kmeans(F.normalize(X, dim=1), k), k)


@pytest.fixture(scope="module")
def real_pfvs() -> torch.Tensor:
    """EfficientNet-Lite0 ``blocks.5`` PFVs (C = 192) of three bundled photos, float64."""
    model = ierf.load_model("efficientnet_lite0")
    x = torch.cat([model.preprocess(ierf.load_image(name))
                   for name in ("chelsea", "coffee", "astronaut")])
    return model.pfvs(x, "blocks.5")["blocks.5"].vectors.flatten(0, 1).double()


def check(X: torch.Tensor, V: torch.Tensor, alpha: float, positive: bool, tol: float,
          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    U = decompose(X.to(dtype), V.to(dtype), alpha, positive=positive, tol=tol,
                  solver="homotopy").double()
    gap = _duality_gap(X, V, U, alpha * X.shape[1], positive)
    assert (gap <= max(tol, 1e-6 if dtype == torch.float32 else 0) * X.square().sum(1)).all()
    ref = sklearn_lasso(X, V, alpha, positive)
    f, f_ref = lasso_objective(X, V, U, alpha), lasso_objective(X, V, ref, alpha)
    assert ((f - f_ref) / f_ref).max() <= 1e-4
    if positive:
        assert (U >= 0).all()
    return U


@pytest.mark.parametrize("positive", [False, True])
def test_kmeans_centroids_of_clustered_data(positive: bool) -> None:
    X, _ = sparse_pfvs(400, 24, 12, 2, noise=0.05, seed=0)
    X = X.double()
    V = kmeans_dictionary(X, 96)                         # K = 4 C, clusters of few rays
    cos = F.normalize(V, dim=0).T @ F.normalize(V, dim=0)
    assert (cos - torch.eye(96, dtype=V.dtype)).amax() > 0.95          # coherent
    alpha = 0.05 * float((X[:20] @ V).abs().amax() / X.shape[1])
    U = check(X[:20], V, alpha, positive, tol=1e-8)
    assert (U != 0).sum(1).float().mean() > 1


@pytest.mark.parametrize("positive", [False, True])
def test_real_pfvs_kmeans_dictionary(real_pfvs: torch.Tensor, positive: bool) -> None:
    V = kmeans_dictionary(real_pfvs, 64)
    X = real_pfvs[::8]
    alpha = 0.1 * float((X @ V).abs().amax(1).median() / X.shape[1])
    check(X, V, alpha, positive, tol=1e-8)
    check(X, V, alpha, positive, tol=1e-4, dtype=torch.float32)


@pytest.mark.parametrize("positive", [False, True])
def test_random_dictionary_many_nonzeros(positive: bool) -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 16, generator=g, dtype=torch.float64)
    V = torch.randn(16, 128, generator=g, dtype=torch.float64)
    U = check(X, V, 0.01, positive, tol=1e-10)
    assert (U != 0).sum(1).float().mean() > 8              # grows past the working set


def test_solvers_agree_and_validate() -> None:
    X, V = sparse_pfvs(30, 16, 64, 3, noise=0.05, seed=2)
    X, V = X.double(), V.double()
    a = decompose(X, V, 0.002, tol=1e-12, solver="homotopy")
    b = decompose(X, V, 0.002, tol=1e-12, solver="fista", max_iter=100_000)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ierf.IerfError):
        decompose(X, V, 0.1, solver="lars")                # type: ignore[arg-type]
