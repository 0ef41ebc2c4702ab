"""Interlayer C-insertion / C-deletion (IERF Sec. VI-C1, Fig. 11; GIG Sec. 4.2.3).

For a layer pair ``a → b`` and a target concept ``v_t^b``, the parent concepts of layer ``a``
are deleted from (coefficients set to 0 at every position) or inserted into ``X̂^a`` in the
order an ICAT method ranks them; each modified ``X̂'^a`` is propagated through ``M_ab`` and
the response ``max_i cos(x̃'_i^b, v_t^b)`` is recorded, normalised to 1 at the unmodified
``X̂^a``. A faithful ranking makes deletion fall (low AUC) and insertion rise (high AUC) fast.

Only the concepts *active* in an image (a non-zero coefficient at some position) are ranked:
zeroing an inactive concept changes nothing, so the curve's x-axis is the fraction of the
image's active concepts, and inactive ones are never deleted or inserted. The "empty" end
(all active concepts deleted, or none inserted yet) is ``X̂^a = decode(0)``, i.e. ``μ_BN``
for a centred k-means basis.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError
from ierf.graph.icat import Targets, target_indices
from ierf.graph.pair import LayerPair, prepare
from ierf.models.pfv import PFVs
from ierf.models.subnetwork import Subnetwork


def interlayer_curves(sub: Subnetwork, basis_a: ConceptBasis, basis_b: ConceptBasis,
                      inputs: torch.Tensor | PFVs, scores: torch.Tensor,
                      targets: Targets = None, *,
                      mode: Literal["deletion", "insertion"] = "deletion", steps: int = 20,
                      batch_size: int | None = None, U_a: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Interlayer C-deletion or C-insertion curves and their AUCs (Sec. VI-C1).

    Parameters
    ----------
    sub : ``Subnetwork(model, a, b)`` between two concept layers.
    basis_a, basis_b : concept bases of ``a`` and ``b``.
    inputs : images, layer ``a``'s :class:`PFVs` or its PFVs ``(B, N_a, C_a)``.
    scores : (B, K_a, T) parent scores per target, e.g. :func:`ierf.graph.icat`'s edges;
        concepts are removed / added in descending score (ties: lower index first).
    targets : the T target concepts of ``b`` that the columns of ``scores`` belong to.
    mode : ``"deletion"`` (start from ``X̂^a``, delete) or ``"insertion"`` (start from
        ``decode(0)``, insert).
    steps : the curve has ``steps + 1`` points; at point ``s`` the top
        ``round(s / steps · n_active)`` active concepts are deleted / inserted.
    batch_size : most modified ``X̂'^a`` per forward through ``M_ab`` (all when ``None``).
    U_a : precomputed coefficients of layer ``a``.

    Returns
    -------
    curves : (B, T, steps + 1) ``max_i cos(x̃'_i^b − o, v_t^b)`` divided by its value at
        the unmodified ``X̂^a`` (``o = decode(0)`` of ``b``'s basis, as in
        :func:`ierf.graph.alignment_score`). Close to 0 at the reference the ratio is
        ill-conditioned; pick targets that are active in the image.
    auc : (B, T) trapezoid areas over the fraction of active concepts, ``[0, 1]``.
    """
    if mode not in ("deletion", "insertion"):
        raise IerfError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if sub.to_output:
        raise IerfError("interlayer insertion/deletion is between two concept layers; "
                        f"{sub.a!r} → {sub.b!r} ends at the logits")
    if steps < 1:
        raise IerfError(f"steps must be >= 1, got {steps}")
    pair = prepare(sub, basis_a, basis_b, inputs, U_a, None)
    U = pair.U_a
    B, _, K = U.shape
    idx = target_indices(targets, pair.n_targets).to(U.device)
    if scores.shape != (B, K, len(idx)):
        raise IerfError(f"scores must have shape {(B, K, len(idx))}, got "
                        f"{tuple(scores.shape)}")
    active = (U != 0).any(1)                                            # (B, K)
    masked = torch.where(active[..., None], scores.to(U), -torch.inf).transpose(1, 2)
    order = masked.argsort(dim=-1, descending=True, stable=True)            # (B, T, K)
    rank = order.argsort(dim=-1)
    fraction = torch.arange(steps + 1, device=U.device) / steps
    n_moved = (fraction[:, None] * active.sum(1)).round()               # (S, B)
    moved = rank[:, :, None, :] < n_moved.T[:, None, :, None]           # (B, T, S, K)
    keep = moved if mode == "insertion" else ~moved
    keep = torch.cat([keep, torch.ones_like(keep[:, :, :1])], 2)        # + the reference
    values = _max_alignment(pair, keep.to(U), idx, batch_size)          # (B, T, S + 1)
    curves = values[..., :-1] / values[..., -1:]
    return curves, torch.trapezoid(curves, dx=1 / steps, dim=-1)


@torch.no_grad()
def _max_alignment(pair: LayerPair, keep: torch.Tensor, idx: torch.Tensor,
                   batch_size: int | None) -> torch.Tensor:
    """``max_i cos(M_ab(decode(U ⊙ keep))_i − o, v_t^b)`` for keep masks (B, T, S, K)."""
    B, T, S, _ = keep.shape
    image = torch.arange(B, device=keep.device)[:, None, None].expand(B, T, S).reshape(-1)
    target = idx[None, :, None].expand(B, T, S).reshape(-1)
    keep = keep.reshape(B * T * S, -1)
    v = F.normalize(pair.V_b, dim=0)
    out = []
    chunk = batch_size or len(keep)
    for start in range(0, len(keep), chunk):
        rows, t = image[start:start + chunk], target[start:start + chunk]
        X_hat = pair.decode(pair.U_a[rows] * keep[start:start + chunk, None, :])
        X_b = F.normalize(pair.propagate(X_hat, rows) - pair.offset_b, dim=-1)
        out.append((X_b * v.T[t][:, None, :]).sum(-1).amax(1))
    return torch.cat(out).reshape(B, T, S)
