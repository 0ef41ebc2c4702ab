"""What to explain: small callables mapping a model output to one scalar per image.

Like pytorch-grad-cam's ``ClassifierOutputTarget``: the same attributor explains a class
logit now, and a PFV, a concept direction or an SAE latent once those targets land.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ierf.errors import IerfError, unknown_name


@dataclass(frozen=True)
class ClassTarget:
    """The logit of class ``index`` (one index, or one per image)."""

    index: int | Sequence[int] | torch.Tensor

    def indices(self, batch: int, device: torch.device) -> torch.Tensor:
        idx = torch.as_tensor(self.index, device=device, dtype=torch.long).reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.numel() != batch:
            raise IerfError(f"got {idx.numel()} target classes for a batch of {batch} images")
        return idx

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits → (B,) selected logits."""
        idx = self.indices(logits.shape[0], logits.device)
        n = logits.shape[1]
        if (idx < 0).any() or (idx >= n).any():
            bad = idx[(idx < 0) | (idx >= n)][0].item()
            raise IerfError(f"target class {bad} is out of range: this model has {n} classes "
                            f"(0..{n - 1})")
        return logits.gather(1, idx[:, None]).squeeze(1)


def resolve_target(target: object, logits: torch.Tensor, class_names: Sequence[str] = ()
                   ) -> ClassTarget | object:
    """Turn what a user passes as ``target`` into a target object.

    ``None`` or ``"auto"``: each image's top class; an int, a list of ints or a tensor:
    class indices; a string: a class name (exact, case-insensitive) or a digit string;
    a callable target object is returned unchanged.
    """
    if target is None or (isinstance(target, str) and target == "auto"):
        return ClassTarget(logits.argmax(1))
    if isinstance(target, (str, int, Sequence, torch.Tensor)) and not callable(target):
        index = class_index(target, class_names) if isinstance(target, str) else target
        target_obj = ClassTarget(index)
        target_obj(logits)  # validates range and batch size now
        return target_obj
    if callable(target):
        return target
    raise IerfError(f"cannot use {target!r} as a target: give a class index, a class name, "
                    "'auto', or a target object such as ierf.ClassTarget(3)")


def class_index(name: str, class_names: Sequence[str]) -> int:
    """Index of a class given by name (case-insensitive) or as a digit string."""
    if name.isdigit():
        return int(name)
    lowered = [c.lower() for c in class_names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    raise unknown_name("class", name, class_names)


@dataclass(frozen=True)
class PFVTarget:
    """The PFV at ``position`` of ``layer``: its iERF (paper Eq. 1–2).

    ``position`` is a flat index into the layer's (H, W) grid (row-major), one per image or
    shared. Relevance 1 sits on that PFV, so its iERF sums to 1 under conservation.
    """

    layer: str
    position: int | Sequence[int] | torch.Tensor

    def relevance(self, pfvs: torch.Tensor) -> torch.Tensor:
        """(B, N, C) PFVs of ``layer`` → (B, N) starting relevance."""
        b, n, _ = pfvs.shape
        pos = torch.as_tensor(self.position, device=pfvs.device, dtype=torch.long).reshape(-1)
        pos = pos.expand(b) if pos.numel() == 1 else pos
        if pos.numel() != b or (pos < 0).any() or (pos >= n).any():
            raise IerfError(f"PFV positions {pos.tolist()} do not fit a batch of {b} images "
                            f"with {n} positions in layer {self.layer!r}")
        return torch.zeros(b, n, device=pfvs.device, dtype=pfvs.dtype).scatter_(1, pos[:, None], 1.0)


@dataclass(frozen=True)
class ConceptTarget:
    """A direction ``vector`` in ``layer``'s PFV space: relevance ⟨vector, v_p⟩ per position.

    With ``position`` given, only that PFV's projection is explained (a concept's iERF at
    one location); otherwise every position's.
    """

    layer: str
    vector: torch.Tensor
    position: int | None = None

    def relevance(self, pfvs: torch.Tensor) -> torch.Tensor:
        """(B, N, C) PFVs of ``layer`` → (B, N) starting relevance."""
        u = torch.as_tensor(self.vector, device=pfvs.device, dtype=pfvs.dtype)
        if u.shape != (pfvs.shape[-1],):
            raise IerfError(f"concept vector of shape {tuple(u.shape)} does not match the "
                            f"{pfvs.shape[-1]} channels of layer {self.layer!r}")
        r = pfvs @ u
        if self.position is not None:
            r = torch.zeros_like(r).index_copy_(1, torch.tensor([self.position], device=r.device),
                                                r[:, self.position:self.position + 1])
        return r


@dataclass(frozen=True)
class ScalarTarget:
    """Any scalar built on ``layer``'s PFVs: ``fn`` maps (B, N, C) PFVs to (B,) scores.

    Its relevance per position is gradient × input at the PFV level, ``R_p = ⟨v_p, ∂z/∂v_p⟩``
    (for a linear ``fn`` such as a concept projection this equals the projection itself).
    """

    layer: str
    fn: object

    def relevance(self, pfvs: torch.Tensor) -> torch.Tensor:
        """(B, N, C) PFVs of ``layer`` → (B, N) starting relevance."""
        v = pfvs.detach().requires_grad_(True)
        with torch.enable_grad():
            z = self.fn(v)
            if z.shape != (v.shape[0],):
                raise IerfError(f"a ScalarTarget's fn must return one score per image, shape "
                                f"({v.shape[0]},); got {tuple(z.shape)}")
            (grad,) = torch.autograd.grad(z.sum(), v)
        return (v * grad).sum(-1).detach()


@dataclass(frozen=True)
class LatentTarget:
    """Latent ``latent`` of a sparse autoencoder on ``layer``'s PFVs: ``z_k = sae.encode(v_p)[k]``
    (the scalar of CAFE, paper Eq. 10).

    ``sae.encode`` maps (N, C) PFVs to (N, K) latents. With ``position`` given, only that
    PFV's latent is explained; otherwise the latent summed over all positions. Its
    relevance per position is gradient × input at the PFV level, as for
    :class:`ScalarTarget`.
    """

    layer: str
    sae: object
    latent: int
    position: int | None = None

    def activations(self, pfvs: torch.Tensor) -> torch.Tensor:
        """(B, N, C) PFVs → (B, N) activations of the latent."""
        b, n, c = pfvs.shape
        z = self.sae.encode(pfvs.reshape(b * n, c))
        if z.dim() != 2 or z.shape[0] != b * n:
            raise IerfError(f"sae.encode must map (N, C) PFVs to (N, K) latents; got shape "
                            f"{tuple(z.shape)} for {b * n} PFVs")
        if not 0 <= self.latent < z.shape[1]:
            raise IerfError(f"latent {self.latent} is out of range: the SAE has {z.shape[1]} "
                            f"latents (0..{z.shape[1] - 1})")
        return z[:, self.latent].reshape(b, n)

    def relevance(self, pfvs: torch.Tensor) -> torch.Tensor:
        """(B, N, C) PFVs of ``layer`` → (B, N) starting relevance ``⟨v_p, ∂z_k/∂v_p⟩``."""
        v = pfvs.detach().requires_grad_(True)
        with torch.enable_grad():
            z = self.activations(v)
            if self.position is not None:
                if not 0 <= self.position < z.shape[1]:
                    raise IerfError(f"position {self.position} is outside the {z.shape[1]} "
                                    f"positions of layer {self.layer!r}")
                z = z[:, self.position]
            (grad,) = torch.autograd.grad(z.sum(), v, allow_unused=True)
        return torch.zeros(v.shape[:2], device=v.device, dtype=v.dtype) if grad is None \
            else (v * grad).sum(-1).detach()
