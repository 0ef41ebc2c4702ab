"""Batched FISTA Lasso (IERF Eq. 12) against scikit-learn, and the Table III metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from ierf.concepts import decompose, l0_ratio, lasso_objective, reconstruct, relative_l2
from ierf.errors import IerfError

torch.set_num_threads(1)


def problem(n: int, c: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=torch.float64),
            torch.randn(c, k, generator=g, dtype=torch.float64))


def sklearn_lasso(X: torch.Tensor, V: torch.Tensor, alpha: float, positive: bool) -> torch.Tensor:
    rows = [Lasso(alpha=alpha, fit_intercept=False, positive=positive, tol=1e-10,
                  max_iter=100_000).fit(V.numpy(), x.numpy()).coef_ for x in X]
    return torch.from_numpy(np.stack(rows))


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("alpha", [0.02, 0.2])
def test_objective_matches_sklearn_overcomplete(positive: bool, alpha: float) -> None:
    X, V = problem(12, 10, 40, seed=1)
    ours = decompose(X, V, alpha, positive=positive, tol=1e-10, max_iter=50_000)
    ref = sklearn_lasso(X, V, alpha, positive)
    f_ours, f_ref = lasso_objective(X, V, ours, alpha), lasso_objective(X, V, ref, alpha)
    assert ((f_ours - f_ref).abs() / f_ref).max() < 1e-4
    if positive:
        assert (ours >= 0).all()


@pytest.mark.parametrize("positive", [False, True])
def test_float32_default_tolerance_objective(positive: bool) -> None:
    X, V = problem(16, 12, 48, seed=2)
    ours = decompose(X.float(), V.float(), 0.05, positive=positive, tol=1e-6, max_iter=20_000)
    ref = sklearn_lasso(X, V, 0.05, positive)
    f_ours, f_ref = lasso_objective(X, V, ours.double(), 0.05), lasso_objective(X, V, ref, 0.05)
    assert ((f_ours - f_ref).abs() / f_ref).max() < 1e-4


@pytest.mark.parametrize("positive", [False, True])
def test_coefficients_match_sklearn_when_well_conditioned(positive: bool) -> None:
    X, V = problem(10, 30, 8, seed=3)         # full column rank: unique solution
    ours = decompose(X, V, 0.05, positive=positive, tol=1e-12, max_iter=50_000)
    torch.testing.assert_close(ours, sklearn_lasso(X, V, 0.05, positive), atol=1e-6, rtol=0)


def test_large_alpha_gives_zero_and_rows_are_independent() -> None:
    X, V = problem(6, 8, 16, seed=4)
    alpha_max = (X @ V).abs().amax(1) / X.shape[1]      # u = 0 is optimal above this
    assert (decompose(X, V, float(alpha_max.max()) * 1.01) == 0).all()
    full = decompose(X, V, 0.05, tol=1e-10, max_iter=20_000)
    single = decompose(X[2:3], V, 0.05, tol=1e-10, max_iter=20_000)
    torch.testing.assert_close(full[2:3], single, atol=1e-7, rtol=0)


def test_warns_when_not_converged_and_validates() -> None:
    X, V = problem(4, 8, 16, seed=5)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        decompose(X, V, 1e-4, tol=1e-14, max_iter=10)
    with pytest.raises(IerfError):
        decompose(X, V.T, 0.1)
    with pytest.raises(IerfError):
        decompose(X, V, -1.0)


def test_reconstruct_and_metrics() -> None:
    U = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    V = torch.eye(2, 4)
    offset = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(reconstruct(U, V), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(reconstruct(U, V, offset), torch.tensor([[1.5, -1.0],
                                                                        [0.5, -1.0]]))
    torch.testing.assert_close(l0_ratio(U), torch.tensor([0.5, 1.0]))
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(relative_l2(X, torch.tensor([[3.0, 0.0], [0.0, 0.0]])),
                               torch.tensor([0.8, 0.0]))
