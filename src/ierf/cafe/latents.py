"""SAE latents of a layer's tokens: activations, firing tokens, and one-latent-per-image targets.

CAFE (IERF Sec. V) explains a latent ``z_k`` of an SAE on a layer's tokens (Eqs. 8–9). A
:class:`~ierf.concepts.basis.ConceptBasis` says which tokens: ``patch`` (the patch tokens),
``cls`` (the class token) or ``all`` (prefix tokens, then patch tokens). Token ``t`` of that
sequence is addressed as :func:`ierf.targets.select_tokens` does: patch token ``n`` is ``n``,
prefix token ``i`` is ``-(i + 1)`` (``-1`` = CLS).

The scalar ``z_k(I)`` whose iERF CAFE draws (Eq. 10) is read out in one of two ways:

- ``"peak"``: the latent at its firing token ``p*`` — the token where it is largest on the
  original image (Fig. 5's red box), held fixed when the image changes;
- ``"sum"``: the latent summed over the basis' tokens (an image-level activation).

For a ``cls`` basis both are the class token's latent: there is no firing patch.

:class:`LatentPairs` lists (image, latent, firing token) pairs and :class:`PairTarget` is the
target of many pairs at once — image ``i`` explains its own latent ``k_i`` — so one batched
forward/backward pass of any attributor grounds many latents on many images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ierf.concepts.basis import BasisMismatchError, ConceptBasis
from ierf.errors import IerfError
from ierf.models.model import Model
from ierf.models.pfv import PFVs
from ierf.targets import PFVRelevance, select_tokens

READOUTS = ("peak", "sum")


def basis_tokens(basis: ConceptBasis, pfvs: PFVs) -> torch.Tensor:
    """The tokens of ``basis``' kind in ``pfvs``: ``(B, T, C)`` (see module docstring)."""
    return basis.select(pfvs)


def token_positions(basis: ConceptBasis, pfvs: PFVs) -> torch.Tensor:
    """``(T,)`` position of each of :func:`basis_tokens` in :func:`select_tokens`' convention."""
    n = pfvs.vectors.shape[1]
    p = 0 if pfvs.prefix is None else pfvs.prefix.shape[1]
    device = pfvs.vectors.device
    patch = torch.arange(n, device=device)
    if basis.tokens == "patch":
        return patch
    if basis.tokens == "cls":
        return torch.tensor([-1], device=device)
    return torch.cat([-(torch.arange(p, device=device) + 1), patch])


def check_latents(basis: ConceptBasis, latents: torch.Tensor | list[int]) -> torch.Tensor:
    """Latent indices as a long tensor; raises for one outside ``0..K-1``."""
    idx = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
    bad = idx[(idx < 0) | (idx >= basis.n_concepts)]
    if len(bad):
        raise IerfError(f"latent {bad[0].item()} is out of range: this basis has "
                        f"{basis.n_concepts} latents (0..{basis.n_concepts - 1})")
    return idx


def check_basis(model: Model, basis: ConceptBasis) -> None:
    """Refuse a basis of another model (name or weights), of a layer the model lacks, or a
    CLS basis on a CLS-less model (a basis of another width fails at its first encode)."""
    basis.check(model)
    model.module(basis.layer)
    if basis.tokens != "patch" and not model.num_prefix_tokens:
        raise BasisMismatchError(f"this basis is for {basis.tokens!r} tokens but {model.name} "
                                 "has no CLS token")


@torch.no_grad()
def latent_activations(model: Model, basis: ConceptBasis, x: torch.Tensor,
                       latents: torch.Tensor | None = None, batch_size: int = 64
                       ) -> torch.Tensor:
    """``(B, T, K)`` activations of every latent (or ``(B, T, L)`` of ``latents``) on the
    basis' tokens of images ``x``, ``batch_size`` images per forward pass."""
    check_basis(model, basis)
    out = []
    for chunk in x.split(batch_size):
        pfvs = model.pfvs(chunk, basis.layer)[basis.layer]
        z = basis.encode(basis_tokens(basis, pfvs))
        out.append(z if latents is None else z[..., latents.to(z.device)])
    return torch.cat(out)


@dataclass(frozen=True)
class LatentPairs:
    """(image, latent) pairs to ground, with the firing token and the activation ``z_k(I)``.

    Attributes
    ----------
    image : (P,) index of each pair's image in the image batch it was selected from.
    latent : (P,) latent index ``k``.
    position : (P,) firing token ``p*`` (patch index, or ``-1`` for the CLS token).
    activation : (P,) ``z_k(I)`` under ``readout``.
    readout : ``"peak"`` or ``"sum"`` (module docstring).
    """

    image: torch.Tensor
    latent: torch.Tensor
    position: torch.Tensor
    activation: torch.Tensor
    readout: str = "peak"

    def __len__(self) -> int:
        return len(self.latent)

    def __getitem__(self, index: torch.Tensor | slice) -> LatentPairs:
        return LatentPairs(self.image[index], self.latent[index], self.position[index],
                           self.activation[index], self.readout)

    @property
    def is_cls(self) -> torch.Tensor:
        """(P,) bool: pairs whose firing token is a prefix (CLS) token."""
        return self.position < 0

    def target(self, basis: ConceptBasis, repeat: int = 1) -> PairTarget:
        """The :class:`PairTarget` of these pairs (each tiled ``repeat`` times, pair-major)."""
        position = self.position if self.readout == "peak" else None
        rep = (lambda t: t.repeat_interleave(repeat)) if repeat > 1 else (lambda t: t)
        return PairTarget(basis.layer, basis, rep(self.latent),
                          None if position is None else rep(position))


def readout_values(acts: torch.Tensor, positions: torch.Tensor, readout: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` value of each latent on each image under ``readout`` and ``(B, K)`` its firing
    token, from ``(B, T, K)`` activations and the ``(T,)`` token positions."""
    if readout not in READOUTS:
        raise IerfError(f"unknown readout {readout!r}; use one of {READOUTS}")
    peak, arg = acts.max(1)
    return (peak if readout == "peak" else acts.sum(1)), positions.to(arg.device)[arg]


def select_pairs(acts: torch.Tensor, positions: torch.Tensor, latents: torch.Tensor,
                 per_latent: int, readout: str = "peak", min_activation: float = 0.0
                 ) -> LatentPairs:
    """The ``per_latent`` images on which each latent is largest (and above
    ``min_activation``), from ``(B, T, K)`` activations: pairs ordered latent by latent."""
    values, firing = readout_values(acts, positions, readout)
    values, firing = values[:, latents], firing[:, latents]            # (B, L)
    n = min(per_latent, values.shape[0])
    top, image = values.topk(n, dim=0)                                 # (n, L)
    keep = (top > min_activation).T.reshape(-1)
    image = image.T.reshape(-1)
    latent = latents.to(image.device).repeat_interleave(n)
    position = firing.T.gather(1, image.reshape(len(latents), n)).reshape(-1)
    return LatentPairs(image[keep], latent[keep], position[keep], top.T.reshape(-1)[keep],
                       readout)


@dataclass(frozen=True)
class PairTarget(PFVRelevance):
    """One SAE latent per image: image ``i`` explains ``z_{k_i}`` of ``layer`` (Eq. 10), at its
    firing token ``positions[i]`` or, with ``positions=None``, summed over the basis' tokens.

    A PFV-level target (:class:`ierf.targets.LayerTarget`), so AttnLRP, SRD and the gradient
    family explain many (latent, image) pairs in one batched pass; with a single latent and
    position it equals :class:`ierf.LatentTarget`. ``basis.encode`` must be differentiable
    (every SAE's is).
    """

    layer: str
    basis: ConceptBasis
    latents: torch.Tensor
    positions: torch.Tensor | None = None

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        b = pfvs.vectors.shape[0]
        latents = self._per_image(self.latents, b)
        if self.positions is None:
            tokens = basis_tokens(self.basis, pfvs)
        else:
            tokens = select_tokens(pfvs, self._per_image(self.positions, b), self.layer)[:, None]
        z = self.basis.encode(tokens)                                   # (B, T, K)
        if ((latents < 0) | (latents >= z.shape[-1])).any():
            check_latents(self.basis, latents)
        index = latents.to(z.device)[:, None, None].expand(b, z.shape[1], 1)
        return z.gather(2, index).sum((1, 2))

    def _per_image(self, values: torch.Tensor, b: int) -> torch.Tensor:
        values = torch.as_tensor(values, dtype=torch.long).reshape(-1)
        if values.numel() == 1:
            return values.expand(b)
        if values.numel() == b:
            return values
        if b % values.numel() == 0:   # a batch tiled step-major (integrated-gradients paths)
            return values.repeat(b // values.numel())
        raise IerfError(f"got {values.numel()} latents/positions for a batch of {b} images")
