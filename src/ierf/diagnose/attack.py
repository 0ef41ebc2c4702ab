"""Targeted L∞ attacks for the attack diagnosis (IERF Sec. VI-E2, Fig. 12 right).

The paper turns a border collie into a sea slug with the Fast Gradient Sign Method [54]
and then reads the concept graphs of the clean and the attacked image side by side. We
implement the two standard targeted L∞ attacks on batches of images in *pixel space*
(values in ``bounds``, ``[0, 1]`` for images before normalisation), so ``eps`` is in the
units of the image's pixels (``8 / 255`` ≈ 0.031 is the usual budget):

- **FGSM** (Goodfellow et al. 2015), targeted: one step against the gradient of the
  targeted loss ``L(x, t) = CE(f(x), t)`` (the cross-entropy of the target class ``t``),

      ``x' = clip_[lo, hi](x − ε · sign(∇_x L(x, t)))``;

- **PGD** (Madry et al. 2018), targeted: ``steps`` such steps of size ``α`` (default
  ``2.5 ε / steps``), each projected back onto the L∞ ball of radius ``ε`` around ``x``
  and onto the valid range,

      ``x_{k+1} = clip_[lo, hi](clip_[x − ε, x + ε](x_k − α · sign(∇_x L(x_k, t))))``,

  optionally from a uniform random start in the ball, and by default stopping (per image)
  at the first iterate the model assigns to ``t``.

``mask`` (``(B|1, 1|3, H, W)``, 0/1) restricts the perturbation to a region (a localised
attack: the ground-truth test of :mod:`ierf.diagnose.ground_truth` knows where the
perturbation is). Whether the target was reached is part of the result
(:attr:`AttackResult.success`); callers decide what a miss means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ierf.errors import IerfError, unknown_name

ATTACKS = ("fgsm", "pgd")
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AttackResult:
    """A batch of targeted attacks.

    Attributes
    ----------
    method : ``"fgsm"`` or ``"pgd"``.
    eps : the L∞ budget in pixel units.
    clean, adversarial : (B, 3, H, W) images in pixel space.
    target : (B,) the target classes.
    clean_pred, adv_pred : (B,) the model's top class before and after.
    clean_prob, adv_prob : (B,) the target's softmax probability before and after.
    success : (B,) ``adv_pred == target``.
    steps : (B,) gradient steps taken (PGD stops at the first success by default).
    losses : (n + 1, B) the targeted loss ``CE(f(x_k), t)`` at every iterate ``x_k`` (``x_0``
        the start: ``x``, or PGD's random start); iterates after an early stop repeat.
    """

    method: str
    eps: float
    clean: torch.Tensor
    adversarial: torch.Tensor
    target: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    clean_prob: torch.Tensor
    adv_prob: torch.Tensor
    success: torch.Tensor
    steps: torch.Tensor
    losses: torch.Tensor

    @property
    def delta(self) -> torch.Tensor:
        """(B, 3, H, W) the perturbation ``x' − x``."""
        return self.adversarial - self.clean

    @property
    def linf(self) -> torch.Tensor:
        """(B,) ``‖x' − x‖_∞``."""
        return self.delta.abs().flatten(1).amax(1)

    def to_dict(self, i: int = 0, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Image ``i``'s attack as plain JSON-ready values."""
        def name(c: torch.Tensor) -> str | int:
            return class_names[int(c)] if class_names is not None else int(c)

        return {"method": self.method, "eps": self.eps, "target": name(self.target[i]),
                "target_index": int(self.target[i]), "success": bool(self.success[i]),
                "clean_prediction": name(self.clean_pred[i]),
                "attacked_prediction": name(self.adv_pred[i]),
                "target_prob_clean": float(self.clean_prob[i]),
                "target_prob_attacked": float(self.adv_prob[i]),
                "steps": int(self.steps[i]), "linf": float(self.linf[i]),
                "loss_clean": float(self.losses[0, i]), "loss_attacked": float(self.losses[-1, i])}


def targeted_loss(forward: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) ``CE(f(x), t)``: lower means closer to the target."""
    return F.cross_entropy(forward(x), target, reduction="none")


def loss_gradient(forward: Forward, x: torch.Tensor, target: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The targeted loss (B,), its gradient with respect to the images (B, 3, H, W) and the
    logits (B, n_classes), from one forward and one backward pass."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = forward(xg)
        loss = F.cross_entropy(logits, target, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), xg)
    return loss.detach(), grad, logits.detach()


def fgsm(forward: Forward, x: torch.Tensor, target: torch.Tensor | int | Sequence[int],
         eps: float, *, bounds: tuple[float, float] = (0.0, 1.0),
         mask: torch.Tensor | None = None) -> AttackResult:
    """Targeted FGSM: ``x' = clip(x − ε sign(∇_x CE(f(x), t)))`` (one step; module docstring).

    Parameters
    ----------
    forward : pixel-space images (B, 3, H, W) → logits (B, n_classes), differentiable
        (e.g. :func:`pixel_forward` of an :class:`ierf.Model`).
    x : (B, 3, H, W) images inside ``bounds``.
    target : the target class of every image (an int for all).
    eps : L∞ budget, in pixel units.
    bounds : the valid pixel range.
    mask : optional 0/1 region the perturbation may touch (broadcast to ``x``).
    """
    x, target, mask = _check(forward, x, target, eps, bounds, mask)
    loss0, grad, _ = loss_gradient(forward, x, target)
    adv = (x - eps * grad.sign() * mask).clamp(*bounds).detach()
    return _result("fgsm", eps, forward, x, adv, target, torch.ones_like(target),
                   torch.stack([loss0, targeted_loss_nograd(forward, adv, target)]))


def pgd(forward: Forward, x: torch.Tensor, target: torch.Tensor | int | Sequence[int],
        eps: float, *, steps: int = 10, step_size: float | None = None,
        random_start: bool = False, early_stop: bool = True, seed: int = 0,
        bounds: tuple[float, float] = (0.0, 1.0), mask: torch.Tensor | None = None
        ) -> AttackResult:
    """Targeted PGD under an L∞ budget (module docstring).

    Parameters
    ----------
    forward, x, target, eps, bounds, mask : as for :func:`fgsm`.
    steps : most gradient steps.
    step_size : ``α``; ``2.5 ε / steps`` by default (Madry et al.).
    random_start : start from ``x + U(−ε, ε)`` (projected) instead of ``x``.
    early_stop : freeze an image at its first iterate classified as its target.
    seed : seed of the random start.
    """
    x, target, mask = _check(forward, x, target, eps, bounds, mask)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise IerfError(f"PGD needs steps >= 1, got {steps!r}")
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    if not alpha > 0:
        raise IerfError(f"the PGD step size must be > 0, got {step_size!r}")
    lo, hi = bounds
    adv = x.clone()
    if random_start:
        g = torch.Generator(device="cpu").manual_seed(seed)
        noise = (torch.rand(x.shape, generator=g) * 2 - 1).to(x) * eps * mask
        adv = (x + noise).clamp(lo, hi)
    used = torch.zeros_like(target)
    done = torch.zeros_like(target, dtype=torch.bool)
    losses = []
    for _ in range(steps):              # iterations of the attack; every image in one batch
        loss, grad, logits = loss_gradient(forward, adv, target)
        losses.append(loss)
        if early_stop:
            done |= logits.argmax(1) == target
            if bool(done.all()):
                break
        move = (~done).view(-1, 1, 1, 1).to(x)
        step = adv - alpha * grad.sign() * mask * move
        adv = torch.minimum(torch.maximum(step, x - eps), x + eps).clamp(lo, hi).detach()
        used += (~done).long()
    losses.append(targeted_loss_nograd(forward, adv, target))
    while len(losses) < steps + 1:      # frozen early: repeat the last loss
        losses.append(losses[-1])
    return _result("pgd", eps, forward, x, adv, target, used, torch.stack(losses))


def run_attack(method: str, forward: Forward, x: torch.Tensor,
               target: torch.Tensor | int | Sequence[int], eps: float, **options: Any
               ) -> AttackResult:
    """:func:`fgsm` or :func:`pgd` by name (``options`` go to the attack)."""
    if method not in ATTACKS:
        raise unknown_name("attack", method, ATTACKS)
    if method == "fgsm":
        bad = set(options) - {"bounds", "mask"}
        if bad:
            raise IerfError(f"FGSM takes no {', '.join(sorted(bad))}; those are PGD options")
        return fgsm(forward, x, target, eps, **options)
    return pgd(forward, x, target, eps, **options)


def pixel_forward(model: Any) -> Forward:
    """Pixel-space images ``[0, 1]`` → logits of an :class:`ierf.Model` (normalised inside)."""
    return lambda images: model(model.normalize(images))


def targeted_loss_nograd(forward: Forward, x: torch.Tensor, target: torch.Tensor
                         ) -> torch.Tensor:
    """:func:`targeted_loss` without a graph."""
    with torch.no_grad():
        return targeted_loss(forward, x, target)


def _check(forward: Forward, x: torch.Tensor, target: Any, eps: float,
           bounds: tuple[float, float], mask: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or len(x) == 0:
        raise IerfError(f"expected a non-empty batch of images (B, 3, H, W), got "
                        f"{getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < float("inf"):
        raise IerfError(f"eps must be a positive L∞ budget in pixel units (e.g. 8/255 = "
                        f"0.031), got {eps!r}")
    lo, hi = bounds
    if not lo < hi:
        raise IerfError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
        raise IerfError(f"images must lie in the pixel range {bounds} (attack before "
                        f"normalising), got values in [{float(x.min()):.3g}, "
                        f"{float(x.max()):.3g}]")
    target = torch.as_tensor(target, dtype=torch.long, device=x.device).reshape(-1)
    if len(target) == 1:
        target = target.expand(len(x)).clone()
    if len(target) != len(x):
        raise IerfError(f"got {len(target)} targets for {len(x)} images")
    with torch.no_grad():
        n = forward(x[:1]).shape[-1]
    if int(target.min()) < 0 or int(target.max()) >= n:
        raise IerfError(f"target class {target.tolist()[:5]} out of range: the model has {n} "
                        f"classes (0 … {n - 1})")
    if mask is None:
        mask = torch.ones(1, 1, 1, 1, dtype=x.dtype, device=x.device)
    else:
        mask = mask.to(x)
        if mask.dim() != 4:
            raise IerfError(f"mask must be (B|1, 1|3, H, W), got {tuple(mask.shape)}")
        try:
            torch.broadcast_shapes(mask.shape, x.shape)
        except RuntimeError as e:
            raise IerfError(f"mask {tuple(mask.shape)} does not broadcast to the images "
                            f"{tuple(x.shape)}") from e
    return x.detach(), target, mask


def _result(method: str, eps: float, forward: Forward, x: torch.Tensor, adv: torch.Tensor,
            target: torch.Tensor, steps: torch.Tensor, losses: torch.Tensor) -> AttackResult:
    with torch.no_grad():
        p0, p1 = forward(x).softmax(1), forward(adv).softmax(1)
    rows = torch.arange(len(x), device=x.device)
    adv_pred = p1.argmax(1)
    return AttackResult(method, float(eps), x, adv, target, p0.argmax(1), adv_pred,
                        p0[rows, target], p1[rows, target], adv_pred == target, steps, losses)
