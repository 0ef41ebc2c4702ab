"""What to explain: each target is one differentiable score per image, ``scalar(...) -> (B,)``.

Like pytorch-grad-cam's ``ClassifierOutputTarget``, targets are objects, so the same
attributor explains a class logit, a PFV, a concept direction or an SAE latent:

- class-level targets (:class:`ClassTarget`, :class:`OutputTarget`) score the model output,
  ``scalar(logits)``;
- PFV-level targets (:class:`PFVTarget`, :class:`ConceptTarget`, :class:`ScalarTarget`,
  :class:`LatentTarget`, or any object with a ``layer`` name and a ``scalar(pfvs)``) score the
  :class:`~ierf.models.pfv.PFVs` of ``layer``; their relevance maps are iERFs (paper Eqs. 1–2, 10).

A PFV-level target's starting relevance is gradient × input of its scalar at the layer,
``R_p = ⟨v_p, ∂z/∂v_p⟩``: :func:`start_gradient` computes ``∂z/∂v`` once for SRD (which
propagates ``R``, Eqs. 20–21) and AttnLRP (which seeds its backward pass with it), so a new
target type needs no change in either attributor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ierf.errors import IerfError, unknown_name
from ierf.local.patches import frozen_params
from ierf.models.pfv import PFVs, to_pfvs


@runtime_checkable
class Target(Protocol):
    """Anything with a differentiable score per image: ``scalar(logits or PFVs) -> (B,)``."""

    def scalar(self, values: torch.Tensor | PFVs) -> torch.Tensor: ...


@runtime_checkable
class LayerTarget(Protocol):
    """A PFV-level target: ``scalar(pfvs) -> (B,)`` on the :class:`PFVs` of layer ``layer``."""

    layer: str

    def scalar(self, pfvs: PFVs) -> torch.Tensor: ...


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

    def scalar(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits → (B,) selected logits."""
        idx = self.indices(logits.shape[0], logits.device)
        n = logits.shape[1]
        if (idx < 0).any() or (idx >= n).any():
            bad = idx[(idx < 0) | (idx >= n)][0].item()
            raise IerfError(f"target class {bad} is out of range: this model has {n} classes "
                            f"(0..{n - 1})")
        return logits.gather(1, idx[:, None]).squeeze(1)


@dataclass(frozen=True)
class OutputTarget:
    """Any score of the model output: ``fn`` maps the (B, classes) logits to (B,) scores."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def scalar(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(logits)


def resolve_target(target: object, logits: torch.Tensor, class_names: Sequence[str] = ()
                   ) -> Target:
    """Turn what a user passes as ``target`` into a target object.

    ``None`` or ``"auto"``: each image's top class; an int, a list of ints or a tensor:
    class indices; a string: a class name (exact, case-insensitive) or a digit string;
    an object with ``scalar`` is returned unchanged; a plain callable on the logits becomes
    an :class:`OutputTarget`.
    """
    if target is None or (isinstance(target, str) and target == "auto"):
        return ClassTarget(logits.argmax(1))
    if isinstance(target, Target):
        return target
    if isinstance(target, (str, int, Sequence, torch.Tensor)) and not callable(target):
        index = class_index(target, class_names) if isinstance(target, str) else target
        target_obj = ClassTarget(index)
        target_obj.scalar(logits)  # validates range and batch size now
        return target_obj
    if callable(target):
        return OutputTarget(target)
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


def target_layer(target: object) -> str | None:
    """The layer of a PFV-level target, ``None`` for a class-level one; raises for an object
    that has a ``layer`` but does not follow :class:`LayerTarget`."""
    if not hasattr(target, "layer"):
        return None
    if not isinstance(target, LayerTarget) or not callable(target.scalar):
        raise IerfError(f"{type(target).__name__} has a layer but no scalar(pfvs) method: a "
                        "PFV-level target maps the layer's PFVs to one score per image")
    if not isinstance(target.layer, str):
        raise IerfError(f"a target's layer must be a module name (str), got {target.layer!r}")
    return target.layer


def one_layer(targets: Sequence[object]) -> str:
    """The one layer of a non-empty list of PFV-level targets (what ``ierfs()`` takes)."""
    layers = {target_layer(t) for t in targets}
    if not targets or None in layers:
        raise IerfError("ierfs() takes a non-empty list of PFV-level targets (objects with a "
                        "layer and scalar(pfvs), e.g. ierf.PFVTarget or ierf.ConceptTarget)")
    if len(layers) != 1:
        raise IerfError(f"ierfs() takes targets of one layer, got {sorted(layers)}")
    return layers.pop()


def start_gradient(target: LayerTarget, out: torch.Tensor, num_prefix_tokens: int = 0,
                   grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``∂z/∂out`` of a PFV-level target's scalar ``z`` at its layer's output ``out``.

    ``out`` is (B, C, H, W) or (B, T, C); the result has its shape. Gradient × input of it,
    ``R_p = ⟨v_p, ∂z/∂v_p⟩``, is the target's starting relevance per position (SRD, Eq. 2;
    AttnLRP seeds with the gradient itself, so its start relevance is the same ``R``, computed
    under whatever rule mode is active). Parameters of modules the target holds (an SAE) are
    constants here.
    """
    leaf = out.detach().requires_grad_(True)
    held = [m for m in (target, *getattr(target, "__dict__", {}).values())
            if isinstance(m, nn.Module)]
    with torch.enable_grad(), ExitStack() as stack:
        for m in held:
            stack.enter_context(frozen_params(m))
        z = target.scalar(to_pfvs(leaf, num_prefix_tokens, grid))
        if not isinstance(z, torch.Tensor) or z.shape != (leaf.shape[0],):
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise IerfError(f"{type(target).__name__}.scalar must return one score per image, "
                            f"shape ({leaf.shape[0]},); got {shape}")
        (grad,) = torch.autograd.grad(z.sum(), leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def start_relevance(target: LayerTarget, pfvs: torch.Tensor) -> torch.Tensor:
    """(B, N, C) PFVs of the target's layer → (B, N) starting relevance ``⟨v_p, ∂z/∂v_p⟩``
    (gradient × input of its scalar; the positions are laid out as one row)."""
    return (pfvs.detach() * start_gradient(target, pfvs, grid=(1, pfvs.shape[1]))).sum(-1)


class PFVRelevance:
    """Mixin of the built-in PFV-level targets: ``relevance`` is :func:`start_relevance`."""

    def relevance(self, pfvs: torch.Tensor) -> torch.Tensor:
        """(B, N, C) PFVs of ``layer`` → (B, N) starting relevance ``⟨v_p, ∂z/∂v_p⟩``."""
        return start_relevance(self, pfvs)


def select_tokens(pfvs: PFVs, position: int | Sequence[int] | torch.Tensor, layer: str
                  ) -> torch.Tensor:
    """(B, C) PFV of each image at ``position`` (one, or one per image): a grid position
    (row-major), or prefix token ``i`` of a ViT for ``position = -(i + 1)`` (``-1`` = CLS)."""
    b, n, _ = pfvs.vectors.shape
    prefix = 0 if pfvs.prefix is None else pfvs.prefix.shape[1]
    pos = torch.as_tensor(position, device=pfvs.vectors.device, dtype=torch.long).reshape(-1)
    pos = pos.expand(b) if pos.numel() == 1 else pos
    if pos.numel() != b or (pos >= n).any() or (pos < -prefix).any():
        tokens = (f" and {prefix} prefix tokens (patch tokens 0..{n - 1}, prefix tokens "
                  f"-1..-{prefix})") if prefix else f" (0..{n - 1})"
        raise IerfError(f"positions {pos.tolist()} do not fit a batch of {b} images with {n} "
                        f"positions{tokens} in layer {layer!r}")
    tokens = pfvs.vectors if pfvs.prefix is None else torch.cat([pfvs.prefix.flip(1),
                                                                 pfvs.vectors], 1)
    return tokens[torch.arange(b, device=pos.device), pos + prefix]


@dataclass(frozen=True)
class PFVTarget(PFVRelevance):
    """The PFV at ``position`` of ``layer``: its iERF (paper Eqs. 1–2).

    ``position`` is a flat index into the layer's (H, W) grid (row-major), one per image or
    shared; ``-(i + 1)`` addresses a ViT's prefix token ``i`` (``-1`` = CLS). The scalar is
    ``⟨v_p, v_p⟩ / ‖v_p‖²`` with the denominator held constant: relevance 1 sits on that PFV,
    so its iERF sums to 1 under conservation.
    """

    layer: str
    position: int | Sequence[int] | torch.Tensor

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        v = select_tokens(pfvs, self.position, self.layer)
        norm2 = (v * v).sum(-1, keepdim=True)
        return (v * (v / torch.where(norm2 == 0, 1.0, norm2)).detach()).sum(-1)


@dataclass(frozen=True)
class ConceptTarget(PFVRelevance):
    """A direction ``vector`` u in ``layer``'s PFV space: scalar ``Σ_p ⟨u, v_p⟩``, relevance
    ``⟨u, v_p⟩`` per position.

    With ``position`` given, only that PFV's projection is explained (a concept's iERF at
    one location); otherwise every grid position's.
    """

    layer: str
    vector: torch.Tensor
    position: int | None = None

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        v = pfvs.vectors
        u = torch.as_tensor(self.vector, device=v.device, dtype=v.dtype).detach()
        if u.shape != (v.shape[-1],):
            raise IerfError(f"concept vector of shape {tuple(u.shape)} does not match the "
                            f"{v.shape[-1]} channels of layer {self.layer!r}")
        if self.position is not None:
            v = select_tokens(pfvs, self.position, self.layer)[:, None]
        return (v @ u).sum(1)


@dataclass(frozen=True)
class ScalarTarget(PFVRelevance):
    """Any scalar built on ``layer``'s PFVs: ``fn`` maps (B, N, C) PFVs to (B,) scores.

    Its relevance per position is gradient × input at the PFV level, ``R_p = ⟨v_p, ∂z/∂v_p⟩``
    (for a linear ``fn`` such as a concept projection this equals the projection itself).
    """

    layer: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        return self.fn(pfvs.vectors)


@dataclass(frozen=True)
class LatentTarget(PFVRelevance):
    """Latent ``latent`` of a sparse autoencoder on ``layer``'s PFVs: ``z_k = sae.encode(v_p)[k]``
    (the scalar of CAFE, paper Eq. 10).

    ``sae.encode`` maps (N, C) PFVs to (N, K) latents. With ``position`` given, only that
    PFV's latent is explained; otherwise the latent summed over all grid positions. Its
    relevance per position is gradient × input at the PFV level, as for :class:`ScalarTarget`.
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

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        v = pfvs.vectors if self.position is None else \
            select_tokens(pfvs, self.position, self.layer)[:, None]
        return self.activations(v).sum(1)
