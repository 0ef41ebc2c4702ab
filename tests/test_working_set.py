"""Batched working-set Lasso (:mod:`ierf.concepts.working_set`) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Lasso

import ierf
from ierf.concepts import BisectingSphericalKMeans, lasso_objective
from ierf.concepts.working_set import lasso_duality_gap, lasso_working_set
from ierf.data.synthetic import generate
from ierf.models.toy import TOY_MEAN, TOY_STD


def sklearn_lasso(X: torch.Tensor, V: torch.Tensor, alpha: float, positive: bool,
                  tol: float = 1e-10) -> torch.Tensor:
    rows = [Lasso(alpha=alpha, fit_intercept=False, positive=positive, tol=tol,
                  max_iter=500_000).fit(V.numpy(), x.numpy()).coef_ for x in X]
    return torch.from_numpy(np.stack(rows))


def alpha_at(X: torch.Tensor, V: torch.Tensor, fraction: float) -> float:
    """``fraction`` of the median row's ``alpha_max = ‖Vᵀ x‖_∞ / C``."""
    return fraction * float((X @ V).abs().amax(1).median()) / X.shape[1]


@pytest.fixture(scope="module")
def toy_kmeans() -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out toy-resnet ``layer3`` PFVs (C = 64) and bisecting spherical k-means centroids
    (K = 4 C) of the PFVs of 16 synthetic-benchmark images: a real, coherent dictionary."""
    model = ierf.load_model("toy-resnet")
    mean, std = torch.tensor(TOY_MEAN)[:, None, None], torch.tensor(TOY_STD)[:, None, None]

    def pfvs(n: int, split: str) -> torch.Tensor:
        x = (generate(n, seed=0, split=split).images - mean) / std
        with torch.no_grad():
            return model.pfvs(x, "layer3")["layer3"].vectors.flatten(0, 1).double()

    V = BisectingSphericalKMeans(256, n_init=1).fit(pfvs(16, "train")).get_dictionary()
    cos = F.normalize(V, dim=0).T @ F.normalize(V, dim=0)
    assert (cos - torch.eye(256, dtype=V.dtype)).amax() > 0.9                # coherent
    return pfvs(1, "test")[::2], V


@pytest.fixture(scope="module")
def random_dictionary() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    V = F.normalize(torch.randn(48, 384, generator=g, dtype=torch.float64), dim=0)
    U = torch.zeros(12, 384, dtype=torch.float64)                   # 5-sparse rows + noise
    U.scatter_(1, torch.randint(384, (12, 5), generator=g), 1 + torch.rand(12, 5, generator=g,
                                                                         dtype=torch.float64))
    return U @ V.T + 0.05 * torch.randn(12, 48, generator=g, dtype=torch.float64), V


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("data", ["toy_kmeans", "random_dictionary"])
@pytest.mark.parametrize("fraction", [0.1, 0.02])
def test_equals_sklearn_objective(request: pytest.FixtureRequest, data: str, positive: bool,
                                  fraction: float) -> None:
    X, V = request.getfixturevalue(data)
    alpha = alpha_at(X, V, fraction)
    ref = sklearn_lasso(X, V, alpha, positive)
    f_ref = lasso_objective(X, V, ref, alpha)
    for working_set in (None, 16):                  # active set over all atoms; growing sets
        for dtype in (torch.float64, torch.float32):
            U, _ = lasso_working_set(X.to(dtype), V.to(dtype), alpha, positive=positive,
                                     tol=1e-4, working_set=working_set)
            f = lasso_objective(X, V, U.double(), alpha)
            assert ((f - f_ref) / f_ref).max() <= 1e-4
            assert (U != 0).sum(1).double().mean() >= 1.5
            assert not positive or (U >= 0).all()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("positive", [False, True])
def test_gap_is_sklearns_and_stopping_rule(random_dictionary: tuple[torch.Tensor, torch.Tensor],
                                           positive: bool) -> None:
    X, V = random_dictionary
    alpha = alpha_at(X, V, 0.1)
    for x in X[:3]:                                 # a loose scikit-learn fit: gap ≫ 0
        m = Lasso(alpha=alpha, fit_intercept=False, positive=positive, tol=1e-1,
                  max_iter=2).fit(V.numpy(), x.numpy())
        mine = lasso_duality_gap(x[None], V, torch.from_numpy(m.coef_)[None], alpha, positive)
        assert mine.item() == pytest.approx(m.dual_gap_, rel=1e-9)
    for tol in (1e-2, 1e-4, 1e-10):
        U, gap = lasso_working_set(X, V, alpha, positive=positive, tol=tol)
        torch.testing.assert_close(gap, lasso_duality_gap(X, V, U, alpha, positive))
        assert (gap <= tol * X.square().sum(1) / X.shape[1]).all()
    U, gap = lasso_working_set(X, V, alpha, positive=positive, tol=1e-10, working_set=4,
                               max_working_set=4)          # cannot grow: reports no converge
    assert (gap > 1e-10 * X.square().sum(1) / X.shape[1]).any()


def test_batching_invariance(toy_kmeans: tuple[torch.Tensor, torch.Tensor]) -> None:
    X, V = toy_kmeans
    X = X[:12]
    alpha = alpha_at(X, V, 0.05)
    for positive, working_set in ((False, None), (True, None), (False, 16)):
        U, gap = lasso_working_set(X, V, alpha, positive=positive, tol=1e-8,
                                   working_set=working_set)
        one = [lasso_working_set(x[None], V, alpha, positive=positive, tol=1e-8,
                                 working_set=working_set) for x in X]
        torch.testing.assert_close(U, torch.cat([u for u, _ in one]), atol=1e-9, rtol=0)
        torch.testing.assert_close(gap, torch.cat([g for _, g in one]), atol=1e-9, rtol=0)


def test_edge_cases(random_dictionary: tuple[torch.Tensor, torch.Tensor]) -> None:
    X, V = random_dictionary
    X = X.clone()
    alpha_max = float((X @ V).abs().amax()) / X.shape[1]
    for positive in (False, True):
        for alpha in (alpha_max * (1 + 1e-9), 10 * alpha_max):
            U, gap = lasso_working_set(X, V, alpha, positive=positive)
            assert (U == 0).all() and (gap.abs() <= 1e-12).all()
    X[3] = 0
    alpha = alpha_at(X, V, 0.1)
    U, gap = lasso_working_set(X, V, alpha)
    assert (U[3] == 0).all() and gap[3] == 0
    U_rest, _ = lasso_working_set(X[4:], V, alpha)
    torch.testing.assert_close(U[4:], U_rest, atol=1e-9, rtol=0)
    V_plus = V.abs()
    x_neg = -V_plus.sum(1, keepdim=True).T                  # Vᵀx < 0 for every atom
    U, gap = lasso_working_set(x_neg, V_plus, 1e-3, positive=True)
    assert (U == 0).all() and (gap.abs() <= 1e-9).all()      # u = 0 is optimal


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(toy_kmeans: tuple[torch.Tensor, torch.Tensor]) -> None:
    X, V = toy_kmeans
    alpha = alpha_at(X, V, 0.05)
    U, _ = lasso_working_set(X, V, alpha, tol=1e-8)
    U_gpu, gap_gpu = lasso_working_set(X.cuda(), V.cuda(), alpha, tol=1e-8)
    torch.testing.assert_close(U_gpu.cpu(), U, atol=1e-7, rtol=0)
    assert (gap_gpu.cpu() <= 1e-8 * X.square().sum(1) / X.shape[1]).all()
