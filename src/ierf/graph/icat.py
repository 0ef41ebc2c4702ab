"""Interlayer Concept ATtribution, ICAT (IERF Sec. VI-B, Eqs. 13–16; GIG Sec. 3.3, Eqs. 3–7).

The edge from concept ``v_q^a`` of layer ``a`` to concept ``v_t^b`` of a later layer ``b`` is
``ICAT(v_q^a → v_t^b) = Σ_p AT(u_pq^a, S_ab)`` (Eq. 14), where the concept alignment score
``S_ab = Σ_i u_it^b cos(x̃_i^b, v_t^b)`` (Eq. 13) is computed on ``X̃^b = M_ab(X̂^a)``, layer
``a``'s reconstruction ``X̂^a = decode(U^a)`` propagated through the isolated sub-network
(:class:`ierf.models.Subnetwork`). With ``b = "output"`` the targets are classes and
``S = logit_c``: that is the class relevance of a concept (Sec. VI-A2, GIG Eq. 7).

How it is computed. The decoder is affine, ``X̂^a(U) = x̂_0 + U V^aᵀ``, so
``∂S/∂u_pq = ⟨∂S/∂x̂_p, v_q⟩`` and an edge is a bilinear form
``ICAT(q → t) = Σ_s w_s ⟨∇_{X̂} S_t(α_s), D_q⟩`` with ``D_q = u_{·q} ⊗ v_q`` (Eqs. 15–16 by
quadrature). Images are processed a few at a time (``internal_batch_size`` rows of
image × α), and only the targets active in those images are computed: a concept target whose
coefficient is zero at every position of an image has ``S ≡ 0`` there and exactly zero edges.
Two exact routes, chosen per image group by whichever needs fewer passes through ``M_ab``:

- **reverse** (many sources, few targets): one backward per target, vmapped over one-hot
  grad-outputs (``torch.func.vjp`` + ``vmap``, which batches convolution backwards where
  ``is_grads_batched`` loops), gradients taken with respect to ``X̂^a (N_a, C_a)``,
  never the much larger ``U (N_a, K_a)``, summed over the α-steps and only then contracted
  with ``U`` and ``V`` — over ``U``'s non-zeros only when it is sparse (Lasso, nearest);
- **forward** (few active sources, many targets): one forward-mode pass per active source
  concept with tangent ``D_q`` (``torch.func.jvp``, vmapped), giving all targets at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.module import register_module_forward_hook

from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError, unknown_name
from ierf.graph.icat_variants import VARIANTS, variant_edges
from ierf.graph.pair import LayerPair, prepare
from ierf.models.pfv import PFVs
from ierf.models.subnetwork import Subnetwork

METHODS = ("ig", "gradient", "gradient_x_input", *VARIANTS, "coefficient", "random")
COMPLETE = ("ig", "deeplift", "shapley")
"""Methods whose edges add up to ``S(X̂^a) − S(x̂_0)`` (exactly, or as IG up to quadrature)."""
MODES = ("auto", "reverse", "forward")
Targets = Sequence[int] | torch.Tensor | None
BUDGET = 1 << 26
"""Most activations (floats) one vmapped pass through ``M_ab`` holds by default: its width
is ``BUDGET // (rows × activations per row)`` (measured once per call)."""
SPARSE = 0.1
"""Contract over ``U``'s non-zeros when at most this fraction of it is non-zero."""


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
         return_convergence_delta: bool = False, mode: str = "auto", n_samples: int = 16
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
        - ``"deeplift"``, ``"lrp"``, ``"shapley"``: DeepLIFT-Rescale, LRP-ε and Shapley
          value sampling over the concepts (:mod:`ierf.graph.icat_variants`).
        - ``"coefficient"``: ``Σ_p |u_pq|``, the same for every target (a baseline that
          ranks parents by presence alone).
        - ``"random"``: i.i.d. uniform scores, seeded by ``seed`` (baseline).
    targets : target concepts of ``b`` (or classes); all of them when ``None``.
    internal_batch_size : most (image, α) rows per forward / backward through ``M_ab``
        (Captum's meaning); the α-steps of one image when ``None``.
    target_batch_size : most targets per vmapped backward (or source concepts per vmapped
        forward-mode pass); by default as many as fit in :data:`BUDGET` floats.
    U_a, U_b : precomputed coefficients (see :func:`ierf.graph.pair.prepare`).
    return_convergence_delta : methods of :data:`COMPLETE` only: also return the
        completeness error ``Σ_q ICAT(q → t) − (S(X̂^a) − S(x̂_0))`` (B, T), like Captum's.
    mode : ``"reverse"`` (one backward per active target), ``"forward"`` (one forward-mode
        pass per active source concept) or ``"auto"``: per group of images, whichever needs
        fewer passes. Both give the same edges up to float rounding. IG and the gradients
        only.
    n_samples : ``"shapley"``: permutations per image (all of them when the image's active
        concepts have no more orderings than this: exact Shapley values).

    Returns
    -------
    (B, K_a, T) edge weights (and the (B, T) delta).
    """
    if method not in METHODS:
        raise unknown_name("ICAT method", method, METHODS)
    if mode not in MODES:
        raise unknown_name("ICAT mode", mode, MODES)
    if return_convergence_delta and method not in COMPLETE:
        raise IerfError(f"return_convergence_delta needs a method of {', '.join(COMPLETE)}; "
                        f"{method!r} does not add up to S(X̂^a) − S(x̂_0)")
    if any(n is not None and n < 1 for n in (internal_batch_size, target_batch_size,
                                                n_samples)):
        raise IerfError("internal_batch_size, target_batch_size and n_samples must be >= 1")
    pair = prepare(sub, basis_a, basis_b, inputs, U_a, U_b)
    idx = target_indices(targets, pair.n_targets).to(pair.U_a.device)
    B, _, K_a = pair.U_a.shape
    if method == "coefficient":
        return pair.U_a.abs().sum(1)[..., None].expand(B, K_a, len(idx)).clone()
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(B, K_a, len(idx), generator=gen).to(pair.U_a)
    if pair.U_b is None:                                      # classes: always active
        active = torch.ones(B, len(idx), dtype=torch.bool, device=idx.device)
    else:
        active = (pair.U_b[..., idx] != 0).any(1)                          # (B, T)
    if method in VARIANTS:
        per_row = _activations(pair)
        edges = variant_edges(pair, method, idx, active, _score, _contract,
                              width=target_batch_size, rows=internal_batch_size or max(1, BUDGET // per_row),
                              n_samples=n_samples, seed=seed)
        if not return_convergence_delta:
            return edges
        delta = edges.sum(1) - _difference(pair, 0, B, idx)
        return edges, delta.masked_fill(~active, 0.0)
    sources = (pair.U_a != 0).any(1) if method != "gradient" else \
        torch.ones(B, K_a, dtype=torch.bool, device=idx.device)           # (B, K_a)
    alphas, weights = quadrature(rule, n_steps) if method == "ig" else ([1.0], [1.0])
    alphas, weights = torch.tensor(alphas).to(pair.U_a), torch.tensor(weights).to(pair.U_a)
    edges = pair.U_a.new_zeros(B, K_a, len(idx))
    delta = pair.U_a.new_zeros(B, len(idx)) if return_convergence_delta else None
    per_row = _activations(pair) if target_batch_size is None else 0
    for i0, i1, steps in _groups(B, len(alphas), internal_batch_size):
        tgt = active[i0:i1].any(0).nonzero().flatten()
        src = sources[i0:i1].any(0).nonzero().flatten()
        if not len(tgt) or not len(src):
            continue
        forward = mode == "forward" or (mode == "auto" and len(src) < len(tgt))
        args = (pair, i0, i1, idx[tgt], src, alphas, weights, steps, method,
                target_batch_size, per_row)
        edges[i0:i1, :, tgt], forward_ok = _group_edges(args, forward, mode == "forward")
        mode = mode if forward_ok else "reverse"
        if delta is not None:
            delta[i0:i1, tgt] = edges[i0:i1, :, tgt].sum(1) - _difference(pair, i0, i1,
                                                                          idx[tgt])
    return edges if delta is None else (edges, delta)


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
    from captum.attr._utils.approximation_methods import approximation_parameters

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


def _group_edges(args: tuple, forward: bool, forced: bool) -> tuple[torch.Tensor, bool]:
    """One group's edges by forward or reverse mode, and whether forward mode worked: an op
    of ``M_ab`` without forward-mode AD falls back to reverse mode unless ``forced``."""
    # plain-op attention: the fused kernels lack jvp and a vmapped backward; ops whose
    # vmap batching rule is missing (e.g. adaptive pooling's as_strided_) loop, correctly
    with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        try:
            return (_forward_group if forward else _reverse_group)(*args), True
        except NotImplementedError as e:
            if forced:
                sub = args[0].sub
                raise IerfError(f"forward-mode ICAT is not available for {sub.a!r} → "
                                f"{sub.b!r} ({str(e).splitlines()[0]}); use mode='reverse'"
                                ) from None
            return _reverse_group(*args), False


def _difference(pair: LayerPair, i0: int, i1: int, idx: torch.Tensor) -> torch.Tensor:
    """``S(X̂^a) − S(x̂_0)`` (n, T) for images ``i0 … i1 − 1``: what IG's edges add up to."""
    rows = torch.arange(i0, i1, device=pair.U_a.device)
    U = pair.U_a[i0:i1]
    with torch.no_grad():
        end = _score(pair, pair.propagate(pair.decode(U), rows), rows, idx)
        start = _score(pair, pair.propagate(pair.decode(torch.zeros_like(U)), rows), rows, idx)
    return end - start


def _groups(B: int, n: int, internal_batch_size: int | None
            ) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """Groups of images ``i0 … i1 − 1`` with the α-step ranges of their row chunks: whole
    images while ``internal_batch_size`` rows hold them, else one image in step chunks."""
    rows = internal_batch_size or n
    if rows >= n:
        per = rows // n
        for i0 in range(0, B, per):
            yield i0, min(i0 + per, B), [(0, n)]
    else:
        for i in range(B):
            yield i, i + 1, [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _scores(pair: LayerPair, images: torch.Tensor, idx: torch.Tensor
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``X̂^a ↦ S`` (rows, T) for the rows' ``images``: Eq. 13 on ``M_ab(X̂^a)``."""

    def scores(X: torch.Tensor) -> torch.Tensor:
        return _score(pair, pair.propagate(X, images), images, idx)

    return scores


def _rows(pair: LayerPair, i0: int, i1: int, s0: int, s1: int, alphas: torch.Tensor,
          weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                          torch.Tensor]:
    """Rows (image-major) of images ``i0 … i1 − 1`` × steps ``s0 … s1 − 1``: their image,
    position in the group, path point ``X̂^a(α) = x̂_0 + α U V^aᵀ`` and quadrature weight."""
    n = s1 - s0
    local = torch.arange(i1 - i0, device=alphas.device).repeat_interleave(n)
    a, w = alphas[s0:s1].repeat(i1 - i0), weights[s0:s1].repeat(i1 - i0)
    delta = pair.U_a[i0:i1] @ pair.V_a.T                                # X̂^a − x̂_0
    X_hat = pair.x0_a + a[:, None, None] * delta[local]
    return local + i0, local, X_hat, w


def _width(target_batch_size: int | None, n: int, per_slice: int) -> int:
    """Slices per vmapped pass: ``target_batch_size``, or as many as fit in the budget."""
    return target_batch_size or max(1, min(n, BUDGET // max(per_slice, 1)))


def _activations(pair: LayerPair) -> int:
    """Floats that one row of ``M_ab`` produces: the sum of its modules' output sizes (a
    no-grad forward of one image at ``α = 1``, counted by a global forward hook)."""
    total = [0]

    def count(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    rows = torch.zeros(1, dtype=torch.long, device=pair.U_a.device)
    with torch.no_grad(), register_module_forward_hook(count):
        pair.propagate(pair.decode(pair.U_a[:1]), rows)
    return max(total[0], pair.U_a[0].shape[0] * pair.V_a.shape[0])


def _reverse_group(pair: LayerPair, i0: int, i1: int, idx: torch.Tensor, src: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor, steps: list[tuple[int, int]],
                   method: str, target_batch_size: int | None, per_row: int) -> torch.Tensor:
    """Edges (n, K_a, T) of images ``i0 … i1 − 1`` by reverse mode: ``Σ_s w_s ∂S_t/∂X̂^a``
    for all targets per vmapped backward, contracted with ``U`` and ``V`` (Eqs. 14, 16)."""
    T, n = len(idx), i1 - i0
    U = None if method == "gradient" else pair.U_a[i0:i1]
    out = pair.U_a.new_zeros(n, pair.U_a.shape[2], T)
    for s0, s1 in steps:
        images, local, X_hat, w = _rows(pair, i0, i1, s0, s1, alphas, weights)
        scores = _scores(pair, images, idx)
        width = _width(target_batch_size, T, len(images) * per_row)
        with torch.enable_grad():
            S, pull = vjp(scores, X_hat)                                    # (rows, T)
        eye = torch.eye(T, dtype=S.dtype, device=S.device)
        for t0 in range(0, T, width):
            t1 = min(t0 + width, T)
            grad_out = eye[t0:t1, None, :].expand(t1 - t0, len(images), T)
            with torch.no_grad():
                g, = vmap(pull)(grad_out)
            G = g.new_zeros(t1 - t0, n, *g.shape[2:]).index_add_(1, local, g * w[:, None, None])
            out[..., t0:t1] += _contract(G, pair.V_a, U)
    return out


def _forward_group(pair: LayerPair, i0: int, i1: int, idx: torch.Tensor, src: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor, steps: list[tuple[int, int]],
                   method: str, target_batch_size: int | None, per_row: int) -> torch.Tensor:
    """Edges (n, K_a, T) of images ``i0 … i1 − 1`` by forward mode: for every active source
    ``q`` the directional derivative of all targets' ``S`` along ``D_q = u_{·q} ⊗ v_q``
    (``1 ⊗ v_q`` for ``"gradient"``), vmapped over sources, weighted over α (Eqs. 14–16)."""
    n, K_a = i1 - i0, pair.U_a.shape[2]
    out = pair.U_a.new_zeros(n, K_a, len(idx))
    for s0, s1 in steps:
        images, local, X_hat, w = _rows(pair, i0, i1, s0, s1, alphas, weights)
        scores = _scores(pair, images, idx)

        def derivative(D: torch.Tensor, X_hat: torch.Tensor = X_hat,
                       scores: Callable = scores) -> torch.Tensor:
            return jvp(scores, (X_hat,), (D,))[1]

        # tangents are not kept along the pass, but every call recomputes the primal: ≥ 8
        width = max(_width(target_batch_size, len(src), len(images) * per_row),
                    min(8, len(src)))
        for q0 in range(0, len(src), width):
            q = src[q0:q0 + width]
            v = pair.V_a.T[q][:, None, None, :]                          # (Q, 1, 1, C)
            if method == "gradient":
                D = v.expand(len(q), *X_hat.shape)
            else:
                D = pair.U_a[i0:i1][..., q][local].permute(2, 0, 1)[..., None] * v
            with torch.no_grad():                # forward mode needs no autograd graph
                dS = vmap(derivative)(D.contiguous()) * w[:, None]        # (Q, rows, T)
            part = dS.new_zeros(len(q), n, len(idx)).index_add_(1, local, dS)
            out[:, q] += part.transpose(0, 1)
    return out


def _contract(G: torch.Tensor, V: torch.Tensor, U: torch.Tensor | None) -> torch.Tensor:
    """Edges ``Σ_p u_pq ⟨Ḡ_tp, v_q⟩`` (Eqs. 14, 16), or ``Σ_p ⟨Ḡ_tp, v_q⟩`` when ``U`` is
    ``None``: (T, n, N, C) gradients → (n, K, T). Over ``U``'s non-zeros when it is sparse."""
    T, n = G.shape[:2]
    if U is None:
        return (G.sum(2) @ V).permute(1, 2, 0)
    b, p, q = U.nonzero(as_tuple=True)
    if len(b) > SPARSE * U.numel():
        return ((G @ V) * U).sum(2).permute(1, 2, 0)
    out = G.new_zeros(n * U.shape[2], T)
    step = max(1, BUDGET // max(T * G.shape[-1], 1))
    for k0 in range(0, len(b), step):
        bk, pk, qk = b[k0:k0 + step], p[k0:k0 + step], q[k0:k0 + step]
        d = torch.einsum("tkc,kc->kt", G[:, bk, pk], V.T[qk])            # ⟨Ḡ_t,bp, v_q⟩
        out.index_add_(0, bk * U.shape[2] + qk, d * U[bk, pk, qk][:, None])
    return out.reshape(n, U.shape[2], T)
