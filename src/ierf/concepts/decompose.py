"""Sparse decomposition of PFVs over a concept dictionary (IERF Eq. 11–12, GIG Eq. 1–2, 9).

Every row ``x`` of ``X`` (a PFV, ``C`` channels) is written as ``x ≈ V u`` with ``V`` the
``(C, K)`` dictionary whose columns are concept vectors, and ``u`` is the Lasso solution

    min_u  (1 / (2C)) ‖x − V u‖²  +  α ‖u‖₁ .

This is scikit-learn's :class:`~sklearn.linear_model.Lasso` convention (the ``C`` channels play
the role of samples); the papers' Eq. 12 writes ``½‖x − V u‖² + λ‖u‖₁``, i.e. ``λ = α C``.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from ierf.errors import IerfError, require_finite


def lasso_objective(X: torch.Tensor, V: torch.Tensor, U: torch.Tensor,
                    alpha: float) -> torch.Tensor:
    """Per-row Lasso objective ``(1/(2C))‖x − V u‖² + α‖u‖₁`` (Eq. 12 divided by ``C``).

    Parameters
    ----------
    X : (N, C) PFVs.
    V : (C, K) dictionary, one concept vector per column.
    U : (N, K) coefficients.
    alpha : L1 weight in scikit-learn's convention (``λ = α C``).

    Returns
    -------
    (N,) objective values.
    """
    residual = X - U @ V.T
    return residual.square().sum(1) / (2 * X.shape[1]) + alpha * U.abs().sum(1)


def _gap(X: torch.Tensor, residual: torch.Tensor, correlation: torch.Tensor, U: torch.Tensor,
         lam: float, positive: bool) -> torch.Tensor:
    """(N,) duality gap of ``½‖x − V u‖² + λ‖u‖₁``, scikit-learn's ``enet_coordinate_descent``,
    given ``residual = x − V u`` and ``correlation = Vᵀ residual``.

    The dual point is the residual scaled into the feasible set ``‖Vᵀθ‖_∞ ≤ λ``
    (``max Vᵀθ ≤ λ`` when ``positive``).
    """
    dual_norm = correlation.amax(1) if positive else correlation.abs().amax(1)
    scale = torch.where(dual_norm > lam, lam / dual_norm, torch.ones_like(dual_norm))
    r2 = residual.square().sum(1)
    return (0.5 * r2 * (1 + scale.square()) + lam * U.abs().sum(1)
            - scale * (residual * X).sum(1))


def _duality_gap(X: torch.Tensor, V: torch.Tensor, U: torch.Tensor, lam: float,
                 positive: bool) -> torch.Tensor:
    """(N,) duality gap of ``½‖x − V u‖² + λ‖u‖₁`` at ``U`` (see :func:`_gap`)."""
    residual = X - U @ V.T
    return _gap(X, residual, residual @ V, U, lam, positive)


def lipschitz_constant(V: torch.Tensor) -> float:
    """Lipschitz constant ``L = σ_max(V)² / C`` of the gradient of ``(1/(2C))‖x − V u‖²``.

    σ_max² is the largest eigenvalue of the smaller Gram matrix (V Vᵀ or Vᵀ V), an order of
    magnitude faster than an SVD of a wide dictionary (K = 8 C)."""
    gram = V @ V.T if V.shape[0] <= V.shape[1] else V.T @ V
    return torch.linalg.eigvalsh(gram)[-1].clamp_min(0).item() / V.shape[0]


@torch.no_grad()
def _fista(X: torch.Tensor, V: torch.Tensor, alpha: float, max_iter: int, tol: float,
           positive: bool, check_every: int, U: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """FISTA with adaptive restart on all rows, optionally warm-started at ``U``.

    Returns ``U`` and the (N,) bool mask of rows that did not reach the tolerance."""
    n, c = X.shape
    U = X.new_zeros(n, V.shape[1]) if U is None else U.clone()
    step = 1.0 / max(lipschitz_constant(V), torch.finfo(X.dtype).tiny)
    threshold = step * alpha
    V_step = V * (step / c)                    # u − step·∇ = u + (x − u Vᵀ) V_step
    gap_tol = tol * X.square().sum(1)

    def prox(W: torch.Tensor) -> torch.Tensor:
        return F.relu(W - threshold) if positive else F.softshrink(W, threshold)

    rows = torch.arange(n, device=X.device)
    x, u = X, U
    z, t = u, X.new_ones(n, 1)
    for _ in range(math.ceil(max_iter / check_every)):
        for _ in range(check_every):
            u_next = prox(torch.addmm(z, torch.addmm(x, z, V.T, alpha=-1), V_step))
            t_next = (1 + torch.sqrt(1 + 4 * t.square())) / 2
            delta = u_next - u
            restart = ((z - u_next) * delta).sum(1, keepdim=True) > 0
            z = torch.addcmul(u_next, torch.where(restart, 0.0, (t - 1) / t_next), delta)
            u, t = u_next, torch.where(restart, 1.0, t_next)
        U[rows] = u
        running = _duality_gap(x, V, u, alpha * c, positive) > gap_tol[rows]
        if not running.any():
            return U, torch.zeros(n, dtype=torch.bool, device=X.device)
        rows, x, u, z, t = rows[running], x[running], u[running], z[running], t[running]
    left = torch.zeros(n, dtype=torch.bool, device=X.device)
    left[rows] = True
    return U, left


def _homotopy_path(corr: torch.Tensor, gram: torch.Tensor, lam: float, positive: bool,
                   max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lasso homotopy (Osborne et al. 2000; LARS-Lasso, Efron et al. 2004) on small problems.

    Each row ``i`` solves ``min_u ½ uᵀ G_i u − b_iᵀ u + λ‖u‖₁`` (``u ≥ 0`` if ``positive``)
    over its own ``W`` atoms, ``G_i = V_Wᵢᵀ V_Wᵢ`` and ``b_i = V_Wᵢᵀ x_i``, by following the
    piecewise-linear path of the solution from ``λ_max = ‖b‖_∞`` down to ``λ``. On a segment
    with active set ``A`` and signs ``s``: ``du/dλ = −G_AA⁻¹ s``; the segment ends when an atom
    joins (``|c_j| = λ``, ``c = b − G u``) or an active coefficient reaches 0. All rows step
    together, masked: the active-set Gram ``G_AA`` is ``G`` with inactive rows/columns
    replaced by the identity, so one batched Cholesky solve gives every row's direction.

    Parameters
    ----------
    corr : (R, W) float64 correlations ``b`` at ``u = 0``.
    gram : (R, W, W) float64 Gram matrices of each row's atoms.

    Returns
    -------
    (R, W) coefficients and (R,) bool mask of rows whose path did not reach ``λ``
    (singular ``G_AA`` or ``max_steps`` events).
    """
    r, w = corr.shape
    eye = torch.eye(w, dtype=gram.dtype, device=gram.device)
    out = torch.zeros_like(corr)
    failed = torch.ones(r, dtype=torch.bool, device=corr.device)
    level, first = (corr if positive else corr.abs()).max(1)
    failed[level <= lam] = False                                      # u = 0 is optimal
    rows = (level > lam).nonzero().squeeze(1)
    c, g, level = corr[rows], gram[rows], level[rows]
    active = F.one_hot(first[rows], w).bool()
    sign = torch.sign(c) * active
    u = torch.zeros_like(c)
    for _ in range(max_steps):
        if not len(rows):
            break
        p = int(active.sum(1).max())                                  # active atoms first
        order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :p]
        on = active.gather(1, order)
        g_aa = g.gather(1, order[:, :, None].expand(-1, -1, w)).gather(2, order[:, None].expand(
            -1, p, -1))
        chol, info = torch.linalg.cholesky_ex(torch.where(on[:, :, None] & on[:, None], g_aa,
                                                          eye[:p, :p]))
        d = torch.zeros_like(c).scatter_(1, order, torch.cholesky_solve(    # G_AA d_A = s_A
            sign.gather(1, order)[:, :, None], chol).squeeze(2))
        a = (g @ d[:, :, None]).squeeze(2)                            # −dc/dλ
        floor = 1e-12 * level[:, None]
        join = (level[:, None] - c) / (1 - a)                         # c_j − γ a_j = +(λ − γ)
        join = torch.where(~active & (1 - a > 1e-12) & (join > floor), join, math.inf)
        if not positive:                                              # c_j − γ a_j = −(λ − γ)
            other = (level[:, None] + c) / (1 + a)
            join = torch.minimum(join, torch.where(~active & (1 + a > 1e-12) & (other > floor),
                                                   other, math.inf))
        drop = torch.where(active & (u * d < 0), -u / d, math.inf)
        g_join, j_join = join.min(1)
        g_drop, j_drop = drop.min(1)
        g_end = level - lam
        gamma = torch.minimum(torch.minimum(g_join, g_drop), g_end)
        u += gamma[:, None] * d
        c -= gamma[:, None] * a
        level -= gamma
        end = (gamma >= g_end) | (info != 0)
        joins = ~end & (g_drop > gamma)
        drops = ~end & ~joins
        at = torch.where(joins, j_join, j_drop)[:, None]
        active.scatter_(1, at, joins[:, None] | active.gather(1, at) & ~drops[:, None])
        sign.scatter_(1, at, torch.where(joins, torch.sign(c.gather(1, at).squeeze(1)),
                                         sign.gather(1, at).squeeze(1) * ~drops)[:, None])
        u.scatter_(1, at, u.gather(1, at) * ~drops[:, None])
        if end.any():
            out[rows[end]] = u[end] * active[end]
            failed[rows[end]] = info[end] != 0
            keep = ~end
            rows, c, g, level, active, sign, u = (t[keep] for t in (rows, c, g, level, active,
                                                                    sign, u))
    return out, failed


@torch.no_grad()
def _working_set(X: torch.Tensor, V: torch.Tensor, alpha: float, max_iter: int, tol: float,
                 positive: bool, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Working-set Lasso (celer / skglm's idea) with an exact homotopy inner solver.

    Every row keeps the ``W`` atoms most correlated with its residual (its current support
    first), solves the Lasso restricted to them exactly (:func:`_homotopy_path`), and checks
    the duality gap of the full problem; rows above the tolerance double ``W`` and repeat.

    Returns ``U`` and the (N,) bool mask of rows left unsolved.
    """
    n, c = X.shape
    k = V.shape[1]
    lam = alpha * c
    VT = V.T.contiguous()
    U = X.new_zeros(n, k)
    gap_tol = tol * X.square().sum(1)
    rows = torch.arange(n, device=X.device)
    score = X @ V
    left = torch.zeros(n, dtype=torch.bool, device=X.device)
    while len(rows):
        size = min(size, k)
        if not positive:
            score = score.abs()
        atoms = score.topk(size, dim=1).indices                              # (R, W)
        Vw = VT[atoms]                                                        # (R, W, C)
        gram = (Vw @ Vw.transpose(1, 2)).double()
        corr = (Vw @ X[rows, :, None]).squeeze(2).double()
        u, failed = _homotopy_path(corr, gram, lam, positive, max_iter)
        Ur = X.new_zeros(len(rows), k).scatter_(1, atoms, u.to(X.dtype))
        U[rows] = Ur
        residual = X[rows] - (u.to(X.dtype)[:, None, :] @ Vw).squeeze(1)
        dual = residual @ V
        done = _gap(X[rows], residual, dual, Ur, lam, positive) <= gap_tol[rows]
        stuck = ~done & (failed | (size == k))
        left[rows[stuck]] = True
        keep = ~done & ~stuck
        rows, size = rows[keep], 2 * size
        score = dual[keep] + torch.where(Ur[keep] != 0, math.inf, 0.0)
    return U, left


def decompose(X: torch.Tensor, V: torch.Tensor, alpha: float, *, max_iter: int = 1000,
              tol: float = 1e-4, positive: bool = False, check_every: int = 10,
              solver: Literal["auto", "homotopy", "fista"] = "auto",
              working_set: int = 16) -> torch.Tensor:
    """Lasso coefficients of every row of ``X`` over the dictionary ``V`` (Eq. 12), batched.

    Solves ``min_u (1/(2C))‖x − V u‖² + α‖u‖₁`` for all ``N`` rows at once, on the device of
    ``X``, without autograd, with one of two solvers:

    - ``"homotopy"``: a working-set method (celer / skglm's idea) whose inner solver is the
      exact Lasso homotopy (LARS-Lasso) on each row's ``working_set`` most correlated atoms,
      all rows stepping together; its cost grows with the number of non-zeros, not with the
      coherence of ``V``. Rows it cannot finish (singular active Gram) continue with FISTA.
    - ``"fista"``: FISTA (Beck & Teboulle 2009; step ``1/L``, ``L = σ_max(V)²/C``) with
      gradient-based adaptive restart (O'Donoghue & Candès 2015); its step collapses on
      coherent dictionaries such as k-means centroids.
    - ``"auto"`` (default): homotopy. It wins in the sparse regime of the papers (≈ 5
      non-zeros per row: 12–15× scikit-learn on k-means dictionaries of real PFVs, see
      ``benchmarks/bench_concepts_real.py``) and loses with ≳ 100 non-zeros per row, where
      every event costs a small Cholesky solve; ``"fista"`` is kept for that regime.

    Stopping rule: scikit-learn's. A row stops once its duality gap is ``≤ tol · ‖x‖²`` (gap
    of the objective scaled by ``C``, as in ``sklearn.linear_model.Lasso``); FISTA checks it
    every ``check_every`` iterations. In float32 the gap cannot certify much below
    ``tol=1e-7``.

    Parameters
    ----------
    X : (N, C) PFVs (embeddings already centred by ``μ_BN`` where GIG Eq. 9 applies).
    V : (C, K) dictionary; columns are concept vectors. Cast to ``X``'s dtype and device.
    alpha : L1 weight, scikit-learn convention; the papers' ``λ = α C``.
    max_iter : most FISTA iterations per row, and most homotopy events per working set;
        rows not converged by then raise a warning.
    tol : relative duality-gap tolerance (same meaning as scikit-learn's ``tol``).
    positive : constrain ``u ≥ 0``.
    check_every : FISTA iterations between two duality-gap checks.
    solver : ``"auto"``, ``"homotopy"`` or ``"fista"``.
    working_set : initial working-set size of the homotopy solver (doubled where needed).

    Returns
    -------
    (N, K) coefficients ``U``, so that ``X ≈ U Vᵀ`` (GIG Sec. 3.2.2).
    """
    if X.ndim != 2 or V.ndim != 2 or V.shape[0] != X.shape[1]:
        raise IerfError(f"expected X (N, C) and V (C, K); got {tuple(X.shape)} and "
                        f"{tuple(V.shape)}")
    if alpha < 0:
        raise IerfError(f"alpha must be >= 0, got {alpha}")
    require_finite(X, "decompose's X (PFVs)", "drop those rows or fix where they come from")
    require_finite(V, "decompose's dictionary V", "refit the concepts on finite PFVs")
    if solver not in ("auto", "homotopy", "fista"):
        raise IerfError(f"solver must be 'auto', 'homotopy' or 'fista', got {solver!r}")
    V = V.to(X)
    if solver == "fista":
        U, left = _fista(X, V, alpha, max_iter, tol, positive, check_every)
    else:
        U, left = _working_set(X, V, alpha, max_iter, tol, positive, working_set)
        if left.any():
            U[left], left[left.clone()] = _fista(X[left], V, alpha, max_iter, tol, positive,
                                                 check_every, U[left])
    if left.any():
        warnings.warn(f"decompose: {int(left.sum())} of {len(X)} rows did not reach tol={tol} "
                      f"in {max_iter} iterations; increase max_iter or tol", RuntimeWarning,
                      stacklevel=2)
    return U


def reconstruct(U: torch.Tensor, V: torch.Tensor,
                offset: torch.Tensor | None = None) -> torch.Tensor:
    """``X̂ = U Vᵀ + β`` (GIG Eq. 9; IERF Eq. 11 without the residual).

    Parameters
    ----------
    U : (N, K) coefficients.
    V : (C, K) dictionary.
    offset : optional (C,) shift ``β`` added to every row, ``μ_BN`` of GIG Eq. 8 when the
        dictionary was learnt on centred PFVs.

    Returns
    -------
    (N, C) reconstructions.
    """
    X_hat = U @ V.T
    return X_hat if offset is None else X_hat + offset


def relative_l2(X: torch.Tensor, X_hat: torch.Tensor) -> torch.Tensor:
    """Per-row relative reconstruction error ``‖x − x̂‖₂ / ‖x‖₂`` (Rel-ℓ2 of IERF Table III).

    Returns
    -------
    (N,) errors; a zero row reconstructed exactly scores 0.
    """
    eps = torch.finfo(X.dtype).tiny
    return (X - X_hat).norm(dim=1) / X.norm(dim=1).clamp_min(eps)


def l0_ratio(U: torch.Tensor) -> torch.Tensor:
    """Per-row sparsity ``1 − ‖u‖₀ / K`` (ℓ0 ratio of IERF Table III; higher = sparser).

    Returns
    -------
    (N,) ratios in ``[0, 1]``.
    """
    return 1 - (U != 0).sum(1).to(torch.float32) / U.shape[1]
