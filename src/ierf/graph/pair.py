"""A layer pair ``a → b`` prepared for ICAT and its validation (IERF Sec. VI-B, VI-C).

Everything that ICAT (Eqs. 13–16) and interlayer C-insertion / C-deletion share: layer
``a``'s coefficients ``U^a`` (Eq. 12) and its decoder written as the affine map
``X̂^a = x̂_0 + U^a V^aᵀ`` (``x̂_0 = decode(0)``: ``μ_BN`` for a centred k-means basis, the
decoder bias of an SAE, ``0`` otherwise), and, for a concept layer ``b``, the coefficients
``U^b`` of the *original* image's layer-``b`` PFVs, which weight the alignment score (Eq. 13)
and stay constant along every path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ierf.concepts.basis import BasisMismatchError, ConceptBasis
from ierf.errors import IerfError
from ierf.models.pfv import PFVs
from ierf.models.subnetwork import Subnetwork


@dataclass
class LayerPair:
    """Tensors of one batch of images for the pair ``sub.a → sub.b``.

    Attributes
    ----------
    sub : the isolated sub-network ``M_ab`` (Sec. VI-B1).
    U_a : (B, N_a, K_a) coefficients of layer ``a`` (Eq. 12).
    V_a : (C_a, K_a) its concept vectors; ``x0_a`` (C_a,) ``= decode(0)``.
    prefix : (B, P, C_a) prefix tokens (ViT CLS / registers) kept at their original value, or
        ``None``.
    U_b : (B, N_b, K_b) coefficients of the original layer-``b`` PFVs; ``None`` for the output.
    V_b : (C_b, K_b) concept vectors of ``b``; ``offset_b`` (C_b,) ``= decode(0)`` of ``b``'s
        basis: PFVs of ``b`` are compared with ``V_b`` after subtracting it (see
        :func:`ierf.graph.alignment_score`).
    n_targets : ``K_b``, or the number of classes when ``b`` is the output.
    """

    sub: Subnetwork
    U_a: torch.Tensor
    V_a: torch.Tensor
    x0_a: torch.Tensor
    prefix: torch.Tensor | None
    U_b: torch.Tensor | None
    V_b: torch.Tensor | None
    offset_b: torch.Tensor | None
    n_targets: int

    def decode(self, U: torch.Tensor) -> torch.Tensor:
        """``X̂^a = x̂_0 + U V^aᵀ`` for coefficients ``(..., N_a, K_a)``."""
        return self.x0_a + U @ self.V_a.T

    def propagate(self, X_hat: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``X̃^b = M_ab(X̂^a)`` (Sec. VI-B3) for rows of ``images`` (their prefix tokens)."""
        prefix = None if self.prefix is None else self.prefix[images]
        return self.sub(X_hat, prefix)


def affine_decoder(basis: ConceptBasis, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, x̂_0)`` with ``basis.decode(U) == x̂_0 + U Vᵀ``, checked on ``U (..., K)``.

    ICAT's straight-line path (Eq. 15) and the completeness of IG rest on the decoder being
    affine in the coefficients (k-means, dictionaries and the SAEs here all are).
    """
    V = basis.dictionary.to(U)
    x0 = basis.decode(U.new_zeros(1, U.shape[-1]))[0]
    with torch.no_grad():
        ref = basis.decode(U)
        mine = x0 + U @ V.T
    scale = ref.abs().amax().item() + 1e-12
    if not torch.allclose(mine, ref, rtol=1e-4, atol=1e-4 * scale):
        raise IerfError(f"the decoder of {basis!r} is not x̂_0 + U Vᵀ with V = its "
                        "dictionary; ICAT needs an affine decoder")
    return V, x0


def prepare(sub: Subnetwork, basis_a: ConceptBasis, basis_b: ConceptBasis | None,
            inputs: torch.Tensor | PFVs, U_a: torch.Tensor | None = None,
            U_b: torch.Tensor | None = None) -> LayerPair:
    """Check the bases against ``sub`` and compute what a pair needs, without gradients.

    Parameters
    ----------
    inputs : images ``(B, 3, H, W)`` (run up to ``a`` only), layer ``a``'s :class:`PFVs`,
        or its PFVs ``(B, N_a, C_a)``.
    U_a, U_b : precomputed coefficients (e.g. shared by the pairs ``(l-1, l)`` and
        ``(l, l+1)`` of a layer chain); encoded with the bases when ``None``.
    """
    _check_basis(sub, basis_a, sub.a)
    if sub.to_output:
        if basis_b is not None:
            raise IerfError(f"the pair {sub.a!r} → {sub.b!r} ends at the logits: pass "
                            "basis_b=None (the targets are classes)")
    else:
        if basis_b is None:
            raise IerfError(f"layer {sub.b!r} needs a concept basis (basis_b)")
        _check_basis(sub, basis_b, sub.b)
    with torch.no_grad():
        X_a, prefix = _source(sub, inputs)
        U_a = _coefficients("U_a", basis_a, X_a, U_a, sub.a)
        V_a, x0_a = affine_decoder(basis_a, U_a)
        if basis_b is None:
            n_targets = sub(X_a[:1], None if prefix is None else prefix[:1]).shape[-1]
            return LayerPair(sub, U_a, V_a, x0_a, prefix, None, None, None, n_targets)
        X_b = sub(X_a, prefix)
        U_b = _coefficients("U_b", basis_b, X_b, U_b, sub.b)
        V_b, offset_b = affine_decoder(basis_b, U_b)
    return LayerPair(sub, U_a, V_a, x0_a, prefix, U_b, V_b, offset_b, basis_b.n_concepts)


def _check_basis(sub: Subnetwork, basis: ConceptBasis, layer: str) -> None:
    if not isinstance(basis, ConceptBasis):
        raise IerfError(f"expected a ConceptBasis for layer {layer!r}, got "
                        f"{type(basis).__name__}")
    basis.check(sub.model, layer)
    if basis.tokens != "patch":
        raise IerfError(f"ICAT decomposes patch tokens / positions; the basis of {layer!r} "
                        f"is for {basis.tokens!r} tokens")


def _source(sub: Subnetwork, inputs: torch.Tensor | PFVs
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Layer ``a``'s PFVs and prefix tokens from images, :class:`PFVs` or a (B, N, C) tensor."""
    if isinstance(inputs, PFVs):
        return inputs.vectors, inputs.prefix
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        pfvs = sub.pfvs_a(inputs)
        return pfvs.vectors, pfvs.prefix
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 3:
        if sub.prefix_tokens:
            raise IerfError(f"layer {sub.a!r} carries prefix tokens: pass its PFVs "
                            "(sub.pfvs_a(x)) or the images instead of a bare tensor")
        return inputs, None
    raise IerfError("expected images (B, 3, H, W), PFVs, or layer-a PFVs (B, N, C); got "
                    f"{getattr(inputs, 'shape', type(inputs).__name__)}")


def _check_shape(name: str, U: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(U.shape) != shape:
        raise IerfError(f"{name} must have shape {shape}, got {tuple(U.shape)}")


def _coefficients(name: str, basis: ConceptBasis, X: torch.Tensor, U: torch.Tensor | None,
                  layer: str) -> torch.Tensor:
    """``U`` given, or ``basis.encode(X)``, checked against the PFVs ``X (B, N, C)``."""
    if X.shape[-1] != basis.n_channels:
        raise BasisMismatchError(f"layer {layer!r} has {X.shape[-1]} channels, the basis has "
                                 f"{basis.n_channels}-channel concepts")
    U = basis.encode(X) if U is None else U.to(X)
    _check_shape(name, U, (*X.shape[:2], basis.n_concepts))
    return U
