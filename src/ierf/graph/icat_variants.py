"""ICAT with the propagation-based and sampling attributions the paper compares IG against
(IERF Sec. VI-C, Fig. 11: Grad × Input [5], DeepLIFT [7], LRP [8]; plus a SHAP variant).

Each computes ``ICAT(v_q^a → v_t^b) = Σ_p AT(u_pq^a, S_ab)`` (Eq. 14) for the same score
``S_ab`` (Eq. 13, or a logit for class edges) as :func:`ierf.graph.icat`, batched over images
and targets:

- ``"deeplift"`` — DeepLIFT with the Rescale rule (Shrikumar et al. 2017), reference
  ``U = 0`` (``X̂ = x̂_0``, IG's baseline). Input and reference rows run in one batch; every
  elementwise activation call of ``M_ab`` (module or functional, as SRD sees them:
  :class:`ierf.local.nonlinearity.NonlinearityMode`) passes ``Δy / Δx`` back instead of its
  derivative; linear ops, max-pooling, normalisation, softmax and the cosine of Eq. 13 keep
  their gradients (as Captum's ``DeepLift`` does for modules it has no rule for). Edges are
  ``Σ_p u_pq ⟨m_p, v_q⟩`` with ``m`` the multipliers at ``X̂^a``; for class edges of networks
  of linear layers, eval-mode BatchNorm, sums and elementwise activations they add up to
  ``logit(X̂^a) − logit(x̂_0)`` exactly (summation-to-delta).
- ``"lrp"`` — LRP-ε (Bach et al. 2015) through Zennit: ``Epsilon`` on every convolution and
  linear layer of ``M_ab`` with its BatchNorms merged into them, Zennit's base rules elsewhere;
  the output relevance is the logit (class edges) or, for a concept target, Eq. 13 read as
  one linear neuron per position with the norm held constant (as LRP treats normalisations)
  and ``−⟨o, v̂_t⟩`` as its bias: ``R_ic = u_it x̃_ic v̂_tc / ‖x̃_i − o‖``, which sums to
  ``S_t`` less what that bias absorbs (LRP-0 on a linear layer); the decoder ``X̂ = x̂_0 + U Vᵀ`` is one
  more ε-layer, ``R(u_pq) = Σ_c u_pq v_cq R(x̂_pc) / (x̂_pc ± ε)``. ``M_ab`` is traced with
  ``torch.fx``, which inlines the residual blocks, so Zennit's residual canonizers cannot
  find them; instead every sum of two tensors in ``M_ab`` shares its relevance in proportion
  to its terms (the rule those canonizers set up, :class:`ierf.local.lrp.ShareSums`). With bias-free
  layers, ReLUs and ``ε → 0`` this is Gradient × Input, exactly (tested).
- ``"shapley"`` — Shapley values of the concepts as players (the SHAP family; Štrumbelj &
  Kononenko 2014 permutation sampling, as Captum's ``ShapleyValueSampling``), a concept
  absent from a coalition has its coefficients ``u_·q`` set to 0. Forward passes only, all
  targets at once; permutations are drawn in antithetic pairs, and when the image's active
  concepts have at most ``n_samples`` orderings, all of them are used and the values are
  exact. Efficiency holds per image: ``Σ_q φ_q = S(X̂^a) − S(x̂_0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import permutations

import torch
from torch import nn
from torch.func import vjp, vmap

from ierf.graph.pair import LayerPair
from ierf.local.nonlinearity import NonlinearityMode
from ierf.local.patches import no_inplace

VARIANTS = ("deeplift", "lrp", "shapley")
EPSILON = 1e-6
"""ε of LRP-ε (Zennit's ``Epsilon``) and of the decoder rule."""
DX = 1e-4
"""|Δx| below which DeepLIFT's Rescale uses the derivative at the input (a central
difference with this step: exact for piecewise-linear activations away from their kinks)."""

Score = Callable[[LayerPair, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Contract = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def variant_edges(pair: LayerPair, method: str, idx: torch.Tensor, active: torch.Tensor,
                  score: Score, contract: Contract, *, width: int | None, rows: int,
                  n_samples: int, seed: int) -> torch.Tensor:
    """Edges (B, K_a, T) of ``method`` (one of :data:`VARIANTS`) for targets ``idx``.

    Parameters
    ----------
    active : (B, T) targets present in each image (absent ones have ``S ≡ 0``, no edges).
    score : ``S`` of rows of images (:func:`ierf.graph.icat._score`).
    contract : ``(T, n, N, C)`` per-position relevance over ``X̂^a`` → (n, K_a, T) edges.
    width : most targets per backward pass (DeepLIFT, LRP); as many as ``rows`` allows when
        ``None``.
    rows : most rows (image × target, or image × coalition) per pass through ``M_ab``.
    n_samples : Shapley permutations per image.
    """
    B, _, K_a = pair.U_a.shape
    edges = pair.U_a.new_zeros(B, K_a, len(idx))
    per = max(1, rows // (len(idx) if method != "shapley" else 1))
    gen = torch.Generator().manual_seed(seed)
    for i0 in range(0, B, per):
        i1 = min(i0 + per, B)
        tgt = active[i0:i1].any(0).nonzero().flatten()
        if not len(tgt):
            continue
        if method == "shapley":
            for i in range(i0, i1):
                edges[i:i + 1, :, tgt] = _shapley(pair, i, idx[tgt], score, rows, n_samples,
                                                  gen)
            continue
        step = width or max(1, rows // (i1 - i0))
        for t0 in range(0, len(tgt), step):
            t = tgt[t0:t0 + step]
            G = (_deeplift if method == "deeplift" else _lrp)(pair, i0, i1, idx[t], score)
            edges[i0:i1, :, t] = contract(G, pair.V_a, pair.U_a[i0:i1])
    return edges


class _Rescale(torch.autograd.Function):
    """``y = act(x)`` on rows ``[inputs; references]``; backward: the input rows get the
    Rescale multiplier ``(act(x) − act(x_ref)) / (x − x_ref)`` (the central difference
    with step :data:`DX` where ``|Δx| < DX``, i.e. the derivative), the reference rows nothing
    (DeepLIFT, Shrikumar et al. 2017, Sec. 3.3). Written for ``torch.func``: ``vjp`` and a
    ``vmap`` over the backward batch all targets."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        y = act(x)
        n = x.shape[0] // 2
        dx, dy = x[:n] - x[n:], y[:n] - y[n:]
        small = dx.abs() < DX
        slope = (act(x[:n] + DX) - act(x[:n] - DX)) / (2 * DX)
        return y, torch.where(small, slope, dy / torch.where(small, 1.0, dx))

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, g: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, None]:
        m, = ctx.saved_tensors
        return torch.cat([g[:len(m)] * m, torch.zeros_like(g[len(m):])]), None


def _rescaled(x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return _Rescale.apply(x, act)[0]


def _deeplift(pair: LayerPair, i0: int, i1: int, idx: torch.Tensor, score: Score
              ) -> torch.Tensor:
    """DeepLIFT multipliers (T, n, N_a, C_a) of ``S_t`` at ``X̂^a`` against ``x̂_0``: one
    forward of the image group and its references, one vmapped backward over the targets."""
    T, n = len(idx), i1 - i0
    images = torch.arange(i0, i1, device=idx.device)
    X_in = pair.decode(pair.U_a[i0:i1])
    X_ref = pair.x0_a.expand_as(X_in)
    both = images.repeat(2)

    def scores(X: torch.Tensor) -> torch.Tensor:
        out = pair.propagate(torch.cat([X, X_ref]), both)
        return score(pair, out, both, idx)[:n]                                  # (n, T)

    with torch.enable_grad(), NonlinearityMode(_rescaled):
        _, pull = vjp(scores, X_in)
        eye = torch.eye(T, dtype=X_in.dtype, device=X_in.device)
        g, = vmap(pull)(eye[:, None, :].expand(T, n, T))
    return g


def _lrp(pair: LayerPair, i0: int, i1: int, idx: torch.Tensor, score: Score) -> torch.Tensor:
    """LRP-ε relevance of ``X̂^a`` (T, n, N_a, C_a) divided by the stabilised ``X̂^a``: what
    the decoder's ε-rule contracts with ``u_pq v_cq``."""
    # Zennit (and torchvision, which it imports: ~2 s) only when LRP is asked for
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.types import Convolution

    from ierf.local.lrp import ShareSums, batchnorm_merger

    T, n = len(idx), i1 - i0
    images = torch.arange(i0, i1, device=idx.device).repeat(T)
    X = pair.decode(pair.U_a[i0:i1]).repeat(T, 1, 1).requires_grad_()
    net = pair.sub.net
    layers = layer_map_base(EPSILON) + [(Convolution, Epsilon(EPSILON)),
                                        (nn.Linear, Epsilon(EPSILON))]
    composite = LayerMapComposite(layer_map=layers, canonizers=[batchnorm_merger(net)])
    which = torch.arange(T, device=idx.device).repeat_interleave(n)
    with torch.enable_grad(), no_inplace(net), composite.context(net), ShareSums(EPSILON):
        out = pair.propagate(X, images)
        seed = _output_relevance(pair, out.detach(), images, idx, which, score)
        R, = torch.autograd.grad(out, X, seed)
    X = X.detach()
    stable = X + EPSILON * torch.where(X >= 0, 1.0, -1.0)
    return (R / stable).reshape(T, n, *X.shape[1:])


def _output_relevance(pair: LayerPair, out: torch.Tensor, images: torch.Tensor,
                      idx: torch.Tensor, which: torch.Tensor, score: Score) -> torch.Tensor:
    """LRP's initial relevance on ``M_ab``'s output, row ``r`` for target ``idx[which[r]]``:
    the logit, or ``u_it x̃_ic v̂_tc / ‖x̃_i − o‖`` (Eq. 13 as a linear neuron, LRP-0)."""
    rows = torch.arange(len(out), device=out.device)
    if pair.U_b is None:
        seed = torch.zeros_like(out)
        seed[rows, idx[which]] = out[rows, idx[which]]
        return seed
    centred = out if pair.offset_b is None else out - pair.offset_b
    v = pair.V_b[:, idx[which]].T                                               # (rows, C)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u = pair.U_b[images, :, idx[which]]                                         # (rows, N)
    norm = centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return u[..., None] * out * v[:, None, :] / norm


def _shapley(pair: LayerPair, i: int, idx: torch.Tensor, score: Score, rows: int,
             n_samples: int, gen: torch.Generator) -> torch.Tensor:
    """Shapley values (1, K_a, T) of image ``i``'s active concepts for ``S_t``: marginal
    gains ``S(coalition ∪ {q}) − S(coalition)`` along permutations, averaged."""
    U = pair.U_a[i]
    src = (U != 0).any(0).nonzero().flatten()
    out = U.new_zeros(1, U.shape[1], len(idx))
    if not len(src):
        return out
    order = _permutations(len(src), n_samples, gen).to(src.device)              # (P, Q)
    P, Q = order.shape
    rank = order.argsort(1)                                                     # (P, Q)
    absent = rank[:, None, :] >= torch.arange(Q + 1, device=src.device)[:, None]  # (P,Q+1,Q)
    absent = absent.flatten(0, 1).to(U)                                         # (R, Q)
    X_full, V_src, U_src = pair.decode(U), pair.V_a[:, src], U[:, src]
    image = torch.tensor([i], device=src.device)
    S = []
    with torch.no_grad():
        for r0 in range(0, len(absent), rows):
            a = absent[r0:r0 + rows]                                            # (r, Q)
            X = X_full - (U_src * a[:, None, :]) @ V_src.T                      # (r, N, C)
            r = image.expand(len(a))
            S.append(score(pair, pair.propagate(X, r), r, idx))
    S = torch.cat(S).reshape(P, Q + 1, len(idx))
    gains = (S[:, 1:] - S[:, :-1]).reshape(P * Q, len(idx))                    # (P·Q, T)
    phi = gains.new_zeros(Q, len(idx)).index_add_(0, order.flatten(), gains) / P
    out[0, src] = phi
    return out


def _permutations(Q: int, n_samples: int, gen: torch.Generator) -> torch.Tensor:
    """All ``Q!`` orderings when there are at most ``n_samples``; else ``n_samples`` random
    ones (rounded up to even) in antithetic pairs (each followed by its reverse)."""
    if math.factorial(Q) <= n_samples:
        return torch.tensor(list(permutations(range(Q))), dtype=torch.long).reshape(-1, Q)
    half = torch.rand((n_samples + 1) // 2, Q, generator=gen).argsort(1)
    return torch.stack([half, half.flip(1)], 1).reshape(-1, Q)
