"""Attention-based maps for ViTs: raw attention, rollout and TransMM.

All three read the CLS row of a token-to-token matrix and upsample its patch entries to the
input size (:func:`ierf.local.attention.cls_row_map`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ierf.local.attention import attention_blocks, cls_row_map, trace
from ierf.local.base import Attributor
from ierf.models.model import Model


def identity_like(A: torch.Tensor) -> torch.Tensor:
    """(B, T, T) identity matching ``A``'s batch, size, dtype and device."""
    b, t, _ = A.shape
    return torch.eye(t, dtype=A.dtype, device=A.device).expand(b, t, t)


def weighted_attention(A: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``Ā = I + E_h[(∇A ⊙ A)⁺]`` (thesis Eq. 3.18): (B, h, T, T) → (B, T, T)."""
    E = (grad * A).clamp_min(0).mean(1)
    return identity_like(E) + E


def propagate(R: torch.Tensor, A_bar: torch.Tensor) -> torch.Tensor:
    """One relevancy update ``R^(ℓ) = R^(ℓ−1) + Ā^(ℓ) R^(ℓ−1)`` (thesis Eq. 3.19)."""
    return R + A_bar @ R


class AttentionAttributor(Attributor):
    """Checks at construction that the model is a supported CLS-token ViT."""

    kinds = ("vit",)

    def __init__(self, model: Model | nn.Module) -> None:
        super().__init__(model)
        self.blocks = attention_blocks(self.model)


class RawAttention(AttentionAttributor):
    """Raw attention: the last block's head-averaged CLS row, ``E_h[A^(L)]_{0, patches}``.

    Class-agnostic (the target is ignored), the classic weak baseline (Abnar & Zuidema 2020).
    """

    name = "raw-attention"

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        A = trace(self.model, x).attentions[-1].mean(1)
        return cls_row_map(A[:, 0], self.model, x.shape[-2:])


class Rollout(AttentionAttributor):
    """Attention rollout (Abnar & Zuidema 2020): ``Ã^(L) ⋯ Ã^(1)`` with
    ``Ã = (E_h[A] + I) / rowsum``, each row a distribution; class-agnostic."""

    name = "rollout"

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        return cls_row_map(self.rollout(x)[:, 0], self.model, x.shape[-2:])

    def rollout(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, T) rolled-out attention of a validated batch; every row sums to 1."""
        attentions = trace(self.model, self.model.check(x)).attentions
        R = identity_like(attentions[0][:, 0])
        for A in attentions:
            A_hat = A.mean(1) + identity_like(R)
            R = (A_hat / A_hat.sum(-1, keepdim=True)) @ R
        return R


class TransMM(AttentionAttributor):
    """TransMM (Chefer et al. 2021, "Generic attention-model explainability"; thesis Sec. 3.4).

    ``R^(0) = I`` (Eq. 3.16); for every block ``Ā^(ℓ) = I + E_h[(∇A^(ℓ) ⊙ A^(ℓ))⁺]``
    (Eq. 3.18) and ``R^(ℓ) = R^(ℓ−1) + Ā^(ℓ) R^(ℓ−1)`` (Eq. 3.19); the map is the CLS row
    ``R^(L)_{0, patches}`` (Eq. 3.20), upsampled bilinearly. One forward and one backward pass.

    As the thesis writes it, ``Ā`` includes ``I``, so each step is ``(2I + E) R``; Chefer et
    al.'s code updates ``R + E R``. The two differ by a factor ½ on every layer's ``E``
    relative to the identity path (and a global ``2^L``).
    """

    name = "transmm"

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        t = trace(self.model, x, lambda logits: self.score(logits, target))
        R = relevancy(t.attentions, t.attention_grads)
        return cls_row_map(R[:, 0], self.model, x.shape[-2:])


def relevancy(attentions: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              gates: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """TransMM's relevancy matrix ``R^(L)`` (B, T, T) (thesis Eqs. 3.16–3.19, 6.12–6.14).

    ``gates`` maps a block index to per-token column gates (B, T); at those blocks
    ``Ā_gated = Ā · diag(gates)`` (Eq. 6.12) replaces ``Ā`` (Eq. 6.14).
    """
    gates = gates or {}
    R = identity_like(attentions[0][:, 0])
    for i, (A, grad) in enumerate(zip(attentions, grads, strict=True)):
        A_bar = weighted_attention(A, grad)
        if i in gates:
            A_bar = A_bar * gates[i][:, None, :]
        R = propagate(R, A_bar)
    return R
