"""SAE feature-gradient gated TransMM (thesis Ch. 6, Algorithm 6.1).

At chosen blocks ``ℓ ∈ 𝓛`` the residual stream after the block, ``x_t`` (its patch tokens),
is encoded by a sparse autoencoder, ``f_t = SAE.encode(x_t)``; the residual gradient
``g_t = ∂y/∂x_t`` is projected through the decoder ``D (C, K)``, ``∇f_t = Dᵀ g_t`` (Eq. 6.1);
a per-token score ``s_t`` (Eqs. 6.4–6.6) is median/MAD-normalised (Eq. 6.7) and mapped to a
multiplicative gate ``w_t = exp(log c_max · tanh(κ ŝ_t)) ∈ [1/c_max, c_max]`` (Eq. 6.8) that
scales TransMM's columns, ``Ā_gated = Ā · diag(1, w)`` (Eq. 6.12).

The SAE sits on the residual stream *after* block ``ℓ`` (ierf layer ``blocks.ℓ``, Prisma's
``hook_resid_post``), the stream an SAE of "layer ℓ" is trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError
from ierf.local.attention import block_index, cls_row_map, trace
from ierf.local.transmm import AttentionAttributor, relevancy
from ierf.models.model import Model

VARIANTS = ("combined", "activation", "gradient")
MAD_SCALE = 1.4826
"""Scales the MAD to the standard deviation of normal data (thesis Sec. 6.2.1)."""
EPS = 1e-8
TOY_VIT_SAE = Path(__file__).parents[1] / "models" / "weights" / "toy-vit-sae"
TOY_VIT_SAE_LAYER = "blocks.1"
"""The toy ViT block whose output the shipped SAE encodes (see scripts/train_toy_vit_sae.py)."""
SHUFFLE_SEED = 0


class SAE(Protocol):
    """What the gating needs: ``encode`` (N, C) → (N, K) and the decoder ``D (C, K)``
    (every :class:`ierf.concepts.extractors.SAEBase` qualifies)."""

    def encode(self, X: torch.Tensor) -> torch.Tensor: ...

    def get_dictionary(self) -> torch.Tensor: ...


def load_toy_vit_sae() -> ConceptBasis:
    """The TopK SAE shipped for ``toy-vit``, a :class:`~ierf.concepts.ConceptBasis` of the
    output of :data:`TOY_VIT_SAE_LAYER`."""
    return ConceptBasis.load(TOY_VIT_SAE)


def token_scores(f: torch.Tensor, grad_f: torch.Tensor, variant: str) -> torch.Tensor:
    """Per-token score ``s_t`` from codes ``f`` and feature gradients ``∇f`` (…, K) → (…).

    combined: ``Σ_k ∇f_k f_k`` (Eq. 6.4); activation: ``Σ_k f_k`` (Eq. 6.5);
    gradient: ``Σ_k |∇f_k|`` (Eq. 6.6).
    """
    if variant == "combined":
        return (grad_f * f).sum(-1)
    if variant == "activation":
        return f.sum(-1)
    return grad_f.abs().sum(-1)


def robust_normalise(s: torch.Tensor) -> torch.Tensor:
    """``ŝ = (s − median s) / (1.4826 · MAD(s) + ε)`` over the last dim (Eq. 6.7, Alg. 6.1)."""
    med = s.quantile(0.5, dim=-1, keepdim=True)
    mad = MAD_SCALE * (s - med).abs().quantile(0.5, dim=-1, keepdim=True)
    return (s - med) / (mad + EPS)


def gate(s_hat: torch.Tensor, kappa: float, c_max: float) -> torch.Tensor:
    """``w = exp(log(c_max) · tanh(κ ŝ))``, in ``[1/c_max, c_max]`` (Eqs. 6.8–6.11)."""
    return torch.exp(math.log(c_max) * torch.tanh(kappa * s_hat))


class GatedTransMM(AttentionAttributor):
    """TransMM with SAE feature-gradient gates at chosen blocks (thesis Algorithm 6.1).

    Parameters
    ----------
    model : a CLS-token ViT.
    sae : a :class:`~ierf.concepts.ConceptBasis` (gates its own block, checked against the
        model), an SAE (``encode``, ``get_dictionary() -> D (C, K)``) for every block of
        ``layers``, or a mapping block → SAE. Default for ``toy-vit``: the shipped basis
        (:func:`load_toy_vit_sae`) at :data:`TOY_VIT_SAE_LAYER`.
    layers : gated blocks ``𝓛``, as indices or names (``blocks.1``); default: the basis'
        layer, the keys of a mapping ``sae``, or the shipped SAE's block.
    kappa, c_max : gate temperature ``κ`` and bound ``c_max`` (Eq. 6.8); defaults 0.5 and 10
        (thesis Sec. 7.3.1). ``c_max = 1`` gives vanilla TransMM exactly.
    variant : ``"combined"`` (Eq. 6.4), ``"activation"`` (6.5) or ``"gradient"`` (6.6).
    shuffled_decoder : the control of thesis Sec. 7.4.1: decoder columns permuted,
        ``D[:, π]`` with a fixed-seed ``π``, so ``∇f_k`` no longer belongs to latent ``k``.
        Only the combined score depends on it (the other two are permutation-invariant).
    """

    name = "gated-transmm"

    def __init__(self, model: Model | nn.Module, sae: SAE | Mapping[int | str, SAE] | None = None,
                 layers: Sequence[int | str] | int | str | None = None, kappa: float = 0.5,
                 c_max: float = 10.0, variant: str = "combined",
                 shuffled_decoder: bool = False) -> None:
        super().__init__(model)
        if variant not in VARIANTS:
            raise IerfError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if not c_max >= 1.0 or not kappa >= 0.0:
            raise IerfError(f"need c_max >= 1 and kappa >= 0 (gates lie in [1/c_max, c_max]); "
                            f"got c_max = {c_max}, kappa = {kappa}")
        self.kappa, self.c_max, self.variant = kappa, c_max, variant
        self.shuffled_decoder = shuffled_decoder
        if isinstance(layers, int | str):
            layers = [layers]
        if sae is None:
            if self.model.name != "toy-vit":
                raise IerfError(f"gated-transmm needs an SAE for {self.model.name}: pass sae= "
                                "(a ConceptBasis fitted with `ierf concepts fit --method "
                                "topk-sae` on a block's residual stream, or any object with "
                                "encode and get_dictionary plus layers=); only toy-vit ships one")
            sae = load_toy_vit_sae()
        if isinstance(sae, ConceptBasis):
            sae.check(self.model)
            if layers is not None and {block_index(self.blocks, k) for k in layers} != \
                    {block_index(self.blocks, sae.layer)}:
                raise IerfError(f"this SAE basis belongs to {sae.layer!r}; leave layers= out "
                                "or pass sae={block: SAE} to gate other blocks")
            layers = [sae.layer]
        if isinstance(sae, Mapping):
            if layers is not None:
                raise IerfError("give either a mapping sae={block: SAE} or layers=, not both")
            saes = {block_index(self.blocks, k): v for k, v in sae.items()}
        else:
            if layers is None:
                raise IerfError("say which blocks to gate: layers=[...] (indices or names such "
                                "as 'blocks.6'), or pass sae={block: SAE}")
            saes = {block_index(self.blocks, k): sae for k in layers}
        if not saes:
            raise IerfError("no gated blocks given; use transmm for ungated TransMM")
        self.saes = saes
        self.decoders = {i: self._decoder(s) for i, s in saes.items()}

    def _decoder(self, sae: SAE) -> torch.Tensor:
        if not all(callable(getattr(sae, a, None)) for a in ("encode", "get_dictionary")):
            raise IerfError(f"sae must have encode and get_dictionary (got "
                            f"{type(sae).__name__}); see ierf.concepts.extractors.TopKSAE")
        D = sae.get_dictionary().detach()
        if self.shuffled_decoder:
            g = torch.Generator().manual_seed(SHUFFLE_SEED)
            D = D[:, torch.randperm(D.shape[1], generator=g).to(D.device)]
        return D

    def gates(self, x_res: torch.Tensor, g_res: torch.Tensor, block: int) -> torch.Tensor:
        """Column gates (B, T) of one block from its residual stream and gradient (B, T, C).

        Prefix tokens (CLS, registers) get gate 1 (Eq. 6.12); patch tokens ``w_t`` (Eq. 6.8).
        """
        p = self.model.num_prefix_tokens
        D = self.decoders[block]
        if D.shape[0] != x_res.shape[-1]:
            raise IerfError(f"the SAE of block {self.blocks[block].name} expects {D.shape[0]} "
                            f"channels, the residual stream has {x_res.shape[-1]}")
        b, t, c = x_res.shape
        D = D.to(x_res)
        sae = self.saes[block]
        if isinstance(sae, nn.Module):
            sae.to(x_res.device)
        with torch.no_grad():
            f = sae.encode(x_res[:, p:].reshape(-1, c)).reshape(b, t - p, -1)
        grad_f = g_res[:, p:] @ D  # ∇f_t = Dᵀ g_t (Eq. 6.1)
        w = gate(robust_normalise(token_scores(f, grad_f, self.variant)), self.kappa, self.c_max)
        return torch.cat([w.new_ones(b, p), w], 1)

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        blocks = sorted(self.saes)
        t = trace(self.model, x, lambda logits: self.score(logits, target), blocks)
        names = [self.blocks[i].name for i in blocks]
        gates = {i: self.gates(t.residuals[n], t.residual_grads[n], i)
                 for i, n in zip(blocks, names, strict=True)}
        R = relevancy(t.attentions, t.attention_grads, gates)
        return cls_row_map(R[:, 0], self.model, x.shape[-2:])
