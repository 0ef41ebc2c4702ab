"""Interlayer Concept ATtribution, ICAT (IERF Sec. VI-B, Eqs. 13–16; GIG Sec. 3.3, Eqs. 3–7).

The edge from concept ``v_q^a`` of layer ``a`` to concept ``v_t^b`` of a later layer ``b`` is
``ICAT(v_q^a → v_t^b) = Σ_p AT(u_pq^a, S_ab)`` (Eq. 14), where the concept alignment score
``S_ab = Σ_i u_it^b cos(x̃_i^b, v_t^b)`` (Eq. 13) is computed on ``X̃^b = M_ab(X̂^a)``, layer
``a``'s reconstruction ``X̂^a = decode(U^a)`` propagated through the isolated sub-network
(:class:`ierf.models.Subnetwork`). With ``b = "output"`` the targets are classes and
``S = logit_c``: that is the class relevance of a concept (Sec. VI-A2, GIG Eq. 7).

How it is computed. The decoder is affine, ``X̂^a(U) = x̂_0 + U V^aᵀ``, so
``∂S/∂u_pq = ⟨∂S/∂x̂_p, v_q⟩``: gradients are taken with respect to ``X̂^a (N_a, C_a)``,
never the much larger ``U (N_a, K_a)``, averaged over the α-steps and only then contracted
with ``U`` and ``V``. For every forward through ``M_ab`` (a chunk of image × α rows) the
gradients of *all* target scores come from one backward vmapped over one-hot grad-outputs
(``torch.autograd.grad(..., is_grads_batched=True)``). A concept target whose coefficient is
zero at every position of every image in the batch has ``S ≡ 0`` and exactly zero edges; it
is not computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from captum.attr._utils.approximation_methods import approximation_parameters

from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError, unknown_name
from ierf.graph.pair import LayerPair, prepare
from ierf.models.pfv import PFVs
from ierf.models.subnetwork import Subnetwork

METHODS = ("ig", "gradient", "gradient_x_input", "coefficient", "random")
Targets = Sequence[int] | torch.Tensor | None


def alignment_score(X_tilde_b: torch.Tensor, U_b: torch.Tensor, V_b: torch.Tensor,
                    targets: Targets = None, offset: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Concept alignment score ``S_ab`` (Eq. 13) of every image for target concepts ``t``.

    ``S_t = Σ_i u_it^b · cos(x̃_i^b − o, v_t^b)``.

    Parameters
    ----------
    X_tilde_b : (B, N_b, C_b) propagated PFVs ``X̃^b = M_ab(X̂^a)``.
    U_b : (B, N_b, K_b) coefficients of the *original* image's layer-``b`` PFVs (constant
        along the attribution path).
    V_b : (C_b, K_b) concept vectors of layer ``b``.
    targets : indices ``t`` (T of them); all ``K_b`` when ``None``.
    offset : (C_b,) ``o = decode(0)`` of ``b``'s basis (``μ_BN`` for a centred k-means
        basis), so that PFVs are compared with concept vectors in the space the basis was
        fitted in; ``None`` (or an uncentred basis) is Eq. 13 literally.

    Returns
    -------
    (B, T) scores.
    """
    idx = target_indices(targets, V_b.shape[1]).to(V_b.device)
    X = X_tilde_b if offset is None else X_tilde_b - offset
    cos = F.normalize(X, dim=-1) @ F.normalize(V_b[:, idx], dim=0)       # (B, N_b, T)
    return (U_b[..., idx] * cos).sum(1)


def icat(sub: Subnetwork, basis_a: ConceptBasis, basis_b: ConceptBasis | None,
         inputs: torch.Tensor | PFVs, method: str = "ig", targets: Targets = None, *,
         n_steps: int = 32, rule: str = "gausslegendre",
         internal_batch_size: int | None = None, target_batch_size: int | None = None,
         U_a: torch.Tensor | None = None, U_b: torch.Tensor | None = None, seed: int = 0,
         return_convergence_delta: bool = False
         ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """ICAT edge weights ``ICAT(v_q^a → v_t^b)`` (Eq. 14) for a batch of images.

    Parameters
    ----------
    sub : ``Subnetwork(model, a, b)``; ``b = "output"`` gives class edges (``S = logit_c``).
    basis_a, basis_b : concept bases of layers ``a`` and ``b`` (``basis_b=None`` for the
        output).
    inputs : images ``(B, 3, H, W)``, layer ``a``'s :class:`PFVs`, or its PFVs ``(B, N_a, C_a)``.
    method : the attribution ``AT`` of Eq. 14:

        - ``"ig"``: Integrated Gradients over the coefficients (Eqs. 15–16): path ``α U^a``,
          ``X̂^a(α) = decode(α U^a) = x̂_0 + α U^a V^aᵀ``, ``α ∈ [0, 1]``. The baseline is
          ``decode(0) = x̂_0`` — ``μ_BN`` for a centred k-means basis (GIG Eq. 9), i.e. the
          "no concept" activation, not a zero activation. Quadrature ``rule`` (Captum's
          names: ``"gausslegendre"``, ``"riemann_trapezoid"``, ...), ``n_steps`` points.
        - ``"gradient"``: ``Σ_p ∂S/∂u_pq`` at ``α = 1`` (sensitivity to adding ``v_q``
          everywhere; positions where ``v_q`` is absent count too).
        - ``"gradient_x_input"``: ``Σ_p u_pq ∂S/∂u_pq`` at ``α = 1``.
        - ``"coefficient"``: ``Σ_p |u_pq|``, the same for every target (a baseline that
          ranks parents by presence alone).
        - ``"random"``: i.i.d. uniform scores, seeded by ``seed`` (baseline).
    targets : target concepts of ``b`` (or classes); all of them when ``None``.
    internal_batch_size : most (image, α) rows per forward / backward through ``M_ab``
        (Captum's meaning); all at once when ``None``.
    target_batch_size : most targets per vmapped backward; all at once when ``None``.
    U_a, U_b : precomputed coefficients (see :func:`ierf.graph.pair.prepare`).
    return_convergence_delta : ``"ig"`` only: also return the completeness error
        ``Σ_q ICAT(q → t) − (S(X̂^a) − S(x̂_0))`` (B, T), like Captum's.

    Returns
    -------
    (B, K_a, T) edge weights (and the (B, T) delta).
    """
    if method not in METHODS:
        raise unknown_name("ICAT method", method, METHODS)
    if return_convergence_delta and method != "ig":
        raise IerfError("return_convergence_delta needs method='ig'")
    pair = prepare(sub, basis_a, basis_b, inputs, U_a, U_b)
    idx = target_indices(targets, pair.n_targets).to(pair.U_a.device)
    B, _, K_a = pair.U_a.shape
    if method == "coefficient":
        return pair.U_a.abs().sum(1)[..., None].expand(B, K_a, len(idx)).clone()
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(B, K_a, len(idx), generator=gen).to(pair.U_a)
    if pair.U_b is None:
        active = torch.ones_like(idx, dtype=torch.bool)
    else:
        active = (pair.U_b[..., idx] != 0).flatten(0, 1).any(0)
    idx_active = idx[active]
    alphas, weights = quadrature(rule, n_steps) if method == "ig" else ([1.0], [1.0])
    G = _path_gradients(pair, idx_active, torch.tensor(alphas), torch.tensor(weights),
                        internal_batch_size, target_batch_size)
    edges = pair.U_a.new_zeros(B, K_a, len(idx))
    U = None if method == "gradient" else pair.U_a
    edges[..., active] = _contract(G, pair.V_a, U, target_batch_size)
    if not return_convergence_delta:
        return edges
    with torch.no_grad():
        rows = torch.arange(B, device=pair.U_a.device)
        end = _score(pair, pair.propagate(pair.decode(pair.U_a), rows), rows, idx_active)
        start = _score(pair, pair.propagate(pair.decode(torch.zeros_like(pair.U_a)), rows),
                       rows, idx_active)
    delta = edges.sum(1)
    delta[:, active] -= end - start
    return edges, delta


def concept_importance(sub: Subnetwork, basis: ConceptBasis, inputs: torch.Tensor | PFVs,
                       classes: int | Sequence[int] | torch.Tensor, method: str = "ig",
                       **kwargs: object) -> torch.Tensor:
    """Node importance of every concept for a class: ``Σ_i AT(u_iq, logit_c)``
    (Sec. VI-A2; GIG Eq. 7), i.e. :func:`icat` with ``sub.b = "output"``.

    Parameters
    ----------
    sub : ``Subnetwork(model, basis.layer, "output")``.
    classes : one class for all images, or one per image (B,).
    kwargs : passed to :func:`icat` (``n_steps``, ``internal_batch_size``, ...).

    Returns
    -------
    (B, K) importances for each image's class.
    """
    if not sub.to_output:
        raise IerfError(f"concept importance needs a sub-network to the output, got "
                        f"{sub.a!r} → {sub.b!r}")
    classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    unique, which = torch.unique(classes, return_inverse=True)
    edges = icat(sub, basis, None, inputs, method, unique, **kwargs)     # (B, K, T)
    which = which.expand(edges.shape[0]) if len(classes) == 1 else which
    if len(which) != edges.shape[0]:
        raise IerfError(f"got {len(classes)} classes for {edges.shape[0]} images")
    return edges[torch.arange(len(which), device=edges.device), :, which.to(edges.device)]


def quadrature(rule: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Points ``α_s`` and weights ``w_s`` approximating ``∫_0^1 f(α) dα`` (Eq. 15).

    Captum's rules (``captum.attr._utils.approximation_methods``), except
    ``"riemann_trapezoid"``: Captum 0.9 weights its ``n`` points ``1/n`` (halved at the
    ends), which sum to ``(n − 1)/n`` and bias IG's completeness by ``ΔS/n``; here they are
    ``1/(n − 1)`` (halved at the ends) and sum to 1.
    """
    if n_steps < 1 or (rule == "riemann_trapezoid" and n_steps < 2):
        raise IerfError(f"n_steps must be >= {2 if rule == 'riemann_trapezoid' else 1}, got "
                        f"{n_steps}")
    try:
        step_sizes, alphas = approximation_parameters(rule)
    except ValueError:
        raise unknown_name("integration rule", rule, ("gausslegendre", "riemann_left",
                           "riemann_right", "riemann_middle", "riemann_trapezoid")) from None
    if rule == "riemann_trapezoid":
        w = [1 / (n_steps - 1)] * n_steps
        w[0] = w[-1] = 0.5 / (n_steps - 1)
        return alphas(n_steps), w
    return alphas(n_steps), step_sizes(n_steps)


def target_indices(targets: Targets, n: int) -> torch.Tensor:
    """Target indices as a 1-D long tensor, checked against ``n`` targets."""
    if targets is None:
        return torch.arange(n)
    idx = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
        raise IerfError(f"targets must be indices in [0, {n}), got {idx.tolist()[:10]}")
    return idx


def _score(pair: LayerPair, out: torch.Tensor, rows: torch.Tensor,
           idx: torch.Tensor) -> torch.Tensor:
    """``S`` for the rows' images: Eq. 13 for concept targets, the logits for classes."""
    if pair.U_b is None:
        return out[:, idx]
    return alignment_score(out, pair.U_b[rows], pair.V_b, idx, pair.offset_b)


def _path_gradients(pair: LayerPair, idx: torch.Tensor, alphas: torch.Tensor,
                    weights: torch.Tensor, internal_batch_size: int | None,
                    target_batch_size: int | None) -> torch.Tensor:
    """``Σ_s w_s ∂S_t/∂X̂^a`` at ``X̂^a(α_s) = x̂_0 + α_s U V^aᵀ`` (Eq. 15's integral by
    quadrature): (T, B, N_a, C_a), all targets per backward, rows chunked."""
    U = pair.U_a
    B, device = U.shape[0], U.device
    delta = U @ pair.V_a.T                                              # X̂^a − x̂_0
    n = len(alphas)
    images = torch.arange(B, device=device).repeat_interleave(n)
    alphas = alphas.to(U).repeat(B)
    weights = weights.to(U).repeat(B)
    T = len(idx)
    G = U.new_zeros(T, B, *delta.shape[1:])
    chunk, t_chunk = internal_batch_size or len(images), target_batch_size or T
    if T == 0:
        return G
    for start in range(0, len(images), chunk):
        rows = images[start:start + chunk]
        a, w = alphas[start:start + chunk], weights[start:start + chunk]
        with torch.enable_grad():
            X_hat = (pair.x0_a + a[:, None, None] * delta[rows]).requires_grad_()
            S = _score(pair, pair.propagate(X_hat, rows), rows, idx)   # (m, T)
            eye = torch.eye(T, dtype=S.dtype, device=device)
            for t0 in range(0, T, t_chunk):
                t1 = min(t0 + t_chunk, T)
                grad_out = eye[t0:t1, None, :].expand(t1 - t0, len(rows), T)
                g, = torch.autograd.grad(S, X_hat, grad_out, is_grads_batched=True,
                                         retain_graph=t1 < T)
                G[t0:t1].index_add_(1, rows, g * w[:, None, None])
    return G


def _contract(G: torch.Tensor, V: torch.Tensor, U: torch.Tensor | None,
              target_batch_size: int | None) -> torch.Tensor:
    """Edges ``Σ_p u_pq ⟨Ḡ_tp, v_q⟩`` (Eqs. 14, 16), or ``Σ_p ⟨Ḡ_tp, v_q⟩`` when ``U`` is
    ``None``: (T, B, N, C) gradients → (B, K, T)."""
    if U is None:
        return (G.sum(2) @ V).permute(1, 2, 0)
    step = target_batch_size or max(len(G), 1)
    parts = [((G[t:t + step] @ V) * U).sum(2) for t in range(0, len(G), step)]
    return torch.cat(parts).permute(1, 2, 0) if parts else G.new_zeros(U.shape[0],
                                                                     U.shape[2], 0)
