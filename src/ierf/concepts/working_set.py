"""Batched working-set Lasso (IERF Eq. 12, GIG Eq. 2) that exploits sparsity.

Every row ``x`` of ``X (N, C)`` is decomposed over the dictionary ``V (C, K)`` by the Lasso in
scikit-learn's convention (the ``C`` channels play the role of samples)

    min_u  P(u) = (1 / (2C)) ‖x − V u‖² + α ‖u‖₁        (``u ≥ 0`` if ``positive``),

equivalently ``½‖x − V u‖² + λ‖u‖₁`` with ``λ = α C`` (the papers' Eq. 12). The stopping rule is
scikit-learn's (``enet_coordinate_descent``): with the residual ``r = x − V u`` rescaled into the
dual feasible set, ``θ = s r``, ``s = min(1, λ / ‖Vᵀ r‖_∞)`` (``max Vᵀ r`` when ``positive``),
the duality gap of the ``λ`` form is

    gap(u) = ½‖r‖² (1 + s²) + λ‖u‖₁ − s rᵀx ,

and a row has converged once ``gap(u) ≤ tol · ‖x‖²``. Divided by ``C`` it is the gap of ``P``,
scikit-learn's ``Lasso.dual_gap_``, which is what :func:`lasso_working_set` returns.

Method: an active-set method that exploits sparsity. By default (``working_set=None``) every
row follows the exact Lasso homotopy (Osborne et al. 2000; LARS-Lasso, Efron et al. 2004) over
all ``K`` atoms, all rows stepping together: the active set is the small problem, solved by a
``(p, p)`` Cholesky per row and event, and the screening ``|Vᵀ r|`` of all atoms at every event
is exactly what grows it (an atom joins when its correlation reaches the current level), so the
cost is ``O(events · N K C)`` with events ≈ non-zeros, whatever the coherence of ``V``. With an
integer ``working_set`` it is celer's / skglm's scheme (Massias et al. 2018; Bertrand et al.
2022): every row keeps its support plus the ``W`` atoms nearest to entering (celer's priority
``(λ − |v_jᵀθ|)/‖v_j‖``), solves the restricted Lasso by the same homotopy, checks the full
duality gap, and doubles ``W`` where it is above the tolerance. On k-means dictionaries of real
PFVs the support is rarely among the atoms most correlated with ``x`` (median rank ~60 of 512),
so the growing working set costs 2–4 restarts: the all-atom active set wins for small
dictionaries (toy-resnet, K·C = 3·10⁴: 1.3×), ties at K·C = 3·10⁵ (EfficientNet-Lite0,
K = 1 536) and loses 4× at paper scale (K·C = 8·10⁶), where every event costs ``N K C``
(``benchmarks/bench_lasso.py``). First-order methods (FISTA, step ``1/L``) are slow there because
``L`` is large when atoms are correlated, as k-means centroids are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["duality_gap_terms", "lasso_duality_gap", "lasso_homotopy", "lasso_working_set"]


def duality_gap_terms(X: torch.Tensor, residual: torch.Tensor, correlation: torch.Tensor, U: torch.Tensor,
         lam: float, positive: bool) -> torch.Tensor:
    """(N,) duality gap ``½‖r‖²(1 + s²) + λ‖u‖₁ − s rᵀx`` given ``r`` and ``Vᵀ r``."""
    dual_norm = correlation.amax(1) if positive else correlation.abs().amax(1)
    scale = torch.where(dual_norm > lam, lam / dual_norm, torch.ones_like(dual_norm))
    return (0.5 * residual.square().sum(1) * (1 + scale.square()) + lam * U.abs().sum(1)
            - scale * (residual * X).sum(1))


def lasso_duality_gap(X: torch.Tensor, V: torch.Tensor, U: torch.Tensor, alpha: float,
                      positive: bool = False) -> torch.Tensor:
    """Per-row duality gap of ``P(u) = (1/(2C))‖x − V u‖² + α‖u‖₁`` (scikit-learn's
    ``Lasso.dual_gap_``).

    ``gap = (½‖r‖²(1 + s²) + λ‖u‖₁ − s rᵀx) / C`` with ``λ = α C``, ``r = x − V u`` and
    ``s = min(1, λ / ‖Vᵀ r‖_∞)`` (``max Vᵀ r`` instead of ``‖Vᵀ r‖_∞`` when ``positive``).
    It bounds ``P(u) − P(u*)``; scikit-learn stops when it is ``≤ tol · ‖x‖² / C``.

    Parameters
    ----------
    X : (N, C) rows. V : (C, K) dictionary. U : (N, K) coefficients.
    alpha : L1 weight, scikit-learn convention.
    positive : whether the problem constrains ``u ≥ 0``.

    Returns
    -------
    (N,) gaps of ``P``.
    """
    residual = X - U @ V.T
    return duality_gap_terms(X, residual, residual @ V, U, alpha * X.shape[1], positive) / X.shape[1]


@torch.no_grad()
def lasso_homotopy(corr: torch.Tensor, atoms: torch.Tensor, lam: float, positive: bool = False,
                   max_steps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Lasso homotopy on a batch of small problems, all rows stepping together.

    Row ``i`` solves ``min_u ½ uᵀ G_i u − b_iᵀ u + λ‖u‖₁`` (``u ≥ 0`` if ``positive``) by
    following the piecewise-linear solution path from ``λ_max = ‖b_i‖_∞`` down to ``λ``. With
    active set ``A``, signs ``s`` and correlation ``c = b − G u`` (``|c_A| = level``), a segment
    moves ``u_A`` by ``γ d_A`` with ``G_AA d_A = s_A`` and ``c`` by ``−γ G d``; it ends when an
    inactive atom reaches ``|c_j| = level − γ`` (joins), an active coefficient reaches 0
    (drops) or ``level − γ = λ``. Rows are masked: inactive rows/columns of ``G_AA`` are
    replaced by the identity so one batched Cholesky solve gives every row's direction.
    ``G`` is never formed: ``G_AA = V_Aᵀ V_A`` and ``G d = V_Wᵀ (V_A d_A)`` cost ``O(p² C)`` and
    ``O(W C)`` per row and event, so ``W`` may be the whole dictionary.

    Parameters
    ----------
    corr : (R, W) correlations ``b = V_Wᵀ x``.
    atoms : (W, C) atoms shared by all rows (``V_Wᵀ``), or (R, W, C), each row's own.
    lam : the ``λ`` of the ``½‖·‖²`` scaling (``α C``).
    positive : constrain ``u ≥ 0``.
    max_steps : most path events per row.

    Returns
    -------
    (R, W) coefficients and (R,) bool mask of rows whose path did not reach ``λ`` (singular
    ``G_AA`` or ``max_steps`` events); those rows hold the last point of their path, a valid
    Lasso solution for a larger ``λ``.
    """
    r, w = corr.shape
    shared = atoms.ndim == 2
    eye = torch.eye(w, dtype=atoms.dtype, device=atoms.device)
    out = torch.zeros_like(corr)
    failed = torch.zeros(r, dtype=torch.bool, device=corr.device)
    level, first = (corr if positive else corr.abs()).max(1)
    rows = (level > lam).nonzero().squeeze(1)                          # others: u = 0
    c, level = corr[rows], level[rows]
    g = atoms if shared else atoms[rows]
    active = F.one_hot(first[rows], w).bool()
    sign = torch.sign(c) * active
    u = torch.zeros_like(c)
    for _ in range(max_steps):
        if not len(rows):
            break
        p = int(active.sum(1).max())                                   # active atoms first
        order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :p]
        on = active.gather(1, order)
        v_a = g[order] if shared else g.gather(1, order[:, :, None].expand(-1, -1, g.shape[2]))
        g_aa = v_a @ v_a.transpose(1, 2)                               # (R, p, p)
        chol, info = torch.linalg.cholesky_ex(
            torch.where(on[:, :, None] & on[:, None], g_aa, eye[:p, :p]))
        singular = info != 0
        d_a = torch.cholesky_solve(sign.gather(1, order)[:, :, None], chol).squeeze(2)
        d_a = torch.where(singular[:, None] | ~on, 0.0, d_a)
        d = torch.zeros_like(c).scatter_(1, order, d_a)
        step = (d_a[:, None, :] @ v_a).squeeze(1)                      # V_A d_A, (R, C)
        a = step @ g.T if shared else (g @ step[:, :, None]).squeeze(2)   # G d = −dc/dγ
        floor = 1e-12 * level[:, None]
        join = (level[:, None] - c) / (1 - a)                          # c_j − γ a_j = level − γ
        join = torch.where(~active & (1 - a > 1e-12) & (join > floor), join, math.inf)
        if not positive:                                               # c_j − γ a_j = γ − level
            other = (level[:, None] + c) / (1 + a)
            join = torch.minimum(join, torch.where(~active & (1 + a > 1e-12) & (other > floor),
                                                   other, math.inf))
        drop = torch.where(active & (u * d < 0), -u / d, math.inf)
        g_join, j_join = join.min(1)
        g_drop, j_drop = drop.min(1)
        g_end = level - lam
        gamma = torch.where(singular, 0.0, torch.minimum(torch.minimum(g_join, g_drop), g_end))
        u += gamma[:, None] * d
        c -= gamma[:, None] * a
        level -= gamma
        end = (gamma >= g_end) | singular
        joins = ~end & (g_drop > gamma)
        drops = ~end & ~joins
        at = torch.where(joins, j_join, j_drop)[:, None]
        active.scatter_(1, at, joins[:, None] | active.gather(1, at) & ~drops[:, None])
        sign.scatter_(1, at, torch.where(joins, torch.sign(c.gather(1, at).squeeze(1)),
                                         sign.gather(1, at).squeeze(1) * ~drops)[:, None])
        u.scatter_(1, at, u.gather(1, at) * ~drops[:, None])
        if end.any():
            out[rows[end]] = u[end] * active[end]
            failed[rows[end]] = singular[end]
            keep = ~end
            rows, c, level, active, sign, u = (t[keep] for t in (rows, c, level, active, sign,
                                                                 u))
            g = g if shared else g[keep]
    if len(rows):                                                      # out of steps
        out[rows], failed[rows] = u * active, True
    return out, failed


def _priority(dual: torch.Tensor, support: torch.Tensor, inv_norm: torch.Tensor, lam: float,
              positive: bool) -> torch.Tensor:
    """(R, K) working-set score, higher first: the current support, then celer's priority,
    minus the distance ``(λ − |v_jᵀθ|) / ‖v_j‖`` of the dual point ``θ = s r`` to atom ``j``'s
    constraint (``v_jᵀθ`` instead of ``|v_jᵀθ|`` when ``positive``), so that atoms are ranked
    by how close they are to entering, whatever their norm."""
    corr = dual if positive else dual.abs()
    top = corr.amax(1, keepdim=True)
    scale = torch.where(top > lam, lam / top, torch.ones_like(top))
    score = (scale * corr - lam) * inv_norm
    return torch.where(support, math.inf, score)


@torch.no_grad()
def lasso_working_set(X: torch.Tensor, V: torch.Tensor, alpha: float, *, positive: bool = False,
                      tol: float = 1e-4, max_iter: int = 1000, working_set: int | None = None,
                      max_working_set: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Lasso coefficients of every row of ``X`` over ``V`` by a batched working-set method.

    Solves ``min_u (1/(2C))‖x − V u‖² + α‖u‖₁`` (``u ≥ 0`` if ``positive``) for all ``N`` rows
    on the device of ``X``, by the exact homotopy (:func:`lasso_homotopy`, in float64) with
    the active set screened over all atoms (``working_set=None``), or restricted to per-row
    working sets that start at ``working_set`` atoms (support first, then celer's priority)
    and double until the full problem's duality gap ``½‖r‖²(1 + s²) + λ‖u‖₁ − s rᵀx``
    (:func:`lasso_duality_gap`, ``λ = α C``) is ``≤ tol · ‖x‖²`` — scikit-learn's rule. Only
    rows still running are carried from one growth to the next. The all-atom homotopy is exact
    (gap at rounding level whatever ``tol``); its gap is still computed and returned.

    Parameters
    ----------
    X : (N, C) rows (PFVs), float32 or float64, any device.
    V : (C, K) dictionary, one concept per column; cast to ``X``'s dtype and device.
    alpha : L1 weight, scikit-learn convention (papers' ``λ = α C``).
    positive : constrain ``u ≥ 0``.
    tol : relative duality-gap tolerance, as scikit-learn's ``tol``.
    max_iter : most homotopy events per row and working set.
    working_set : ``None`` (default): active set over all atoms, ``O(N K)`` memory. An
        integer: initial per-row working-set size ``W``.
    max_working_set : largest ``W`` (memory is ``N · W²`` floats); rows that would need more
        are returned unconverged.

    Returns
    -------
    U : (N, K) coefficients, ``X ≈ U Vᵀ``.
    gap : (N,) duality gaps of ``P`` (as scikit-learn's ``dual_gap_``, see
        :func:`lasso_duality_gap`); rows with ``gap > tol · ‖x‖² / C`` did not converge
        (singular restricted Gram, ``max_iter`` events or ``max_working_set`` reached) and
        hold a feasible point a caller can warm-start another solver from.
    """
    n, c = X.shape
    k = V.shape[1]
    V = V.to(X)
    lam = alpha * c
    VT = V.T.contiguous()
    norms = V.norm(dim=0)
    U = X.new_zeros(n, k)
    gap = X.new_zeros(n)
    gap_tol = tol * X.square().sum(1)
    rows = torch.arange(n, device=X.device)
    inv_norm = torch.where(norms > 0, 1 / norms.clamp_min(torch.finfo(X.dtype).tiny), 0.0)
    dual = X @ V                                                                  # Vᵀ r at u = 0
    support = torch.zeros_like(dual, dtype=torch.bool)
    if working_set is None or working_set >= k:                 # active set over all K atoms
        u, _ = lasso_homotopy(dual.double(), VT.double(), lam, positive, max_iter)
        U = u.to(X.dtype)
        return U, lasso_duality_gap(X, V, U, alpha, positive)
    size = min(working_set, k)
    while len(rows):
        x = X[rows]
        atoms = _priority(dual, support, inv_norm, lam, positive).topk(size, dim=1).indices
        Vw = VT[atoms]                                                            # (R, W, C)
        corr = (Vw @ x[:, :, None]).squeeze(2).double()
        u, failed = lasso_homotopy(corr, Vw.double(), lam, positive, max_iter)
        u = u.to(X.dtype)
        Ur = X.new_zeros(len(rows), k).scatter_(1, atoms, u)
        residual = x - (u[:, None, :] @ Vw).squeeze(1)
        dual = residual @ V
        g = duality_gap_terms(x, residual, dual, Ur, lam, positive)
        U[rows], gap[rows] = Ur, g
        grow = (g > gap_tol[rows]) & ~failed
        if size >= min(k, max_working_set) or not grow.any():
            break
        rows, size = rows[grow], min(2 * size, k, max_working_set)
        dual, support = dual[grow], Ur[grow] != 0
    return U, gap / c
