"""Synthetic sparse PFVs with a known dictionary, for tests and benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparse_pfvs(n: int, n_features: int, n_atoms: int, n_active: int, *, noise: float = 0.0,
                seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """PFVs ``X = S Dᵀ + noise`` with ``n_active`` positive coefficients per row.

    Parameters
    ----------
    n, n_features, n_atoms : rows ``N``, channels ``C`` and true atoms ``K``.
    n_active : non-zeros per row of ``S``, drawn uniformly from ``[0.5, 1.5)`` at distinct
        random atoms. ``n_active=1`` gives rays along ``K`` directions (cluster data).
    noise : standard deviation of added Gaussian noise.

    Returns
    -------
    X : (N, C) PFVs.
    D : (C, K) true dictionary, unit-norm columns.
    """
    g = torch.Generator().manual_seed(seed)
    D = F.normalize(torch.randn(n_features, n_atoms, generator=g, dtype=torch.float64), dim=0)
    atoms = torch.rand(n, n_atoms, generator=g).argsort(1)[:, :n_active]
    S = torch.zeros(n, n_atoms, dtype=torch.float64).scatter_(
        1, atoms, 0.5 + torch.rand(n, n_active, generator=g, dtype=torch.float64))
    X = S @ D.T + noise * torch.randn(n, n_features, generator=g, dtype=torch.float64)
    return X.to(dtype), D.to(dtype)
