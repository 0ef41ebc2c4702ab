"""Targeted explanation manipulation (Dombrowski et al. 2019), paper Eq. 7 and Fig. 4.

``δ`` is optimised to minimise ``L = λ1 ‖φ(x_adv) − φ(x_target)‖² + λ2 ‖F(x_adv) − F(x_org)‖²``
with ``x_adv = x_org + δ``: the map moves towards a target map while the logits stay put.
During the attack every ReLU is replaced by ``softplus(β·)/β`` so that second derivatives
exist (Dombrowski et al.'s surrogate); the maps reported are those of the real network.
Robustness is the similarity (SSIM, Pearson) of the original and manipulated maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from ierf.metrics.base import Explain, check_attribution, check_choice, check_labels
from ierf.metrics.similarity import pearson, ssim
from ierf.models.model import Model, as_model, check_input

_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class SoftplusSurrogate(TorchFunctionMode):
    """While active, every ReLU call (module or functional) computes ``softplus(x, β)``."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            return F.softplus(args[0], beta=self.beta)
        return func(*args, **(kwargs or {}))


@dataclass
class AttackResult:
    """Outcome of :func:`manipulation_attack` (all tensors batched over images).

    x_adv : (B, C, H, W) manipulated input.
    map_original, map_adv : (B, H, W) maps of x and x_adv (real network, ``|φ|``, sum 1).
    ssim, pearson : (B,) similarity of the two maps (higher = more robust explainer).
    target_pearson_before, target_pearson_after : (B,) Pearson of the map with the target map.
    output_mse : (B,) mean squared change of the logits.
    steps : (B,) optimisation steps taken by each image.
    """

    x_adv: torch.Tensor
    map_original: torch.Tensor
    map_adv: torch.Tensor
    ssim: torch.Tensor
    pearson: torch.Tensor
    target_pearson_before: torch.Tensor
    target_pearson_after: torch.Tensor
    output_mse: torch.Tensor
    steps: torch.Tensor


def _heatmap(a: torch.Tensor) -> torch.Tensor:
    """``|φ|`` normalised to sum 1 per image, as Dombrowski et al."""
    a = a.abs()
    return a / a.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)


def _unit_max(a: torch.Tensor) -> torch.Tensor:
    """Each non-negative map divided by its maximum (SSIM's data range is then 1)."""
    return a / a.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def manipulation_attack(model: Model | nn.Module, x: torch.Tensor, target_map: torch.Tensor,
                        explain: Explain, y: torch.Tensor | int | None = None, *,
                        lambda1: float = 1e11, lambda2: float = 1e6, lr: float = 1e-3,
                        max_steps: int = 500, stop_mse: float = 1e-3, stop_on: str = "input",
                        epsilon: float = 8 / 255, beta: float = 30.0,
                        progress: bool = False) -> AttackResult:
    """Manipulate the explanations of ``x`` towards ``target_map`` (paper Eq. 7).

    Parameters
    ----------
    model : ``ierf.Model`` (its preprocessing gives the pixel scale) or ``nn.Module``
        (inputs taken to be pixels in [0, 1]).
    x : (B, C, H, W) normalised inputs.
    target_map : (B, H, W) map to steer towards (e.g. the map of another image).
    explain : ``explain(net, x, y) -> (B, H, W)``, differentiable w.r.t. ``x``
        (``create_graph=True`` for gradient maps). The paper attacks SRD with μ(L→O) = 1
        (``SRD(model, final="ones")``); ``SRD.attribute`` returns a detached map today, so
        SRD needs a differentiable mode before it can be attacked.
    y : classes to explain (default: the predicted classes).
    lambda1, lambda2, lr : Eq. 7's weights (paper: 1e11, 1e6) and Adam's learning rate (1e-3).
    max_steps : most optimisation steps.
    stop_mse, stop_on : an image stops before the step at which the mean squared change of
        its input (``"input"``, in the model's normalised input space: the paper's "MSE
        between x and x_adv reaches 0.001") or of its logits (``"output"``) would reach
        ``stop_mse``; its last iterate below the bound is kept. (In pixel units the 8/255
        bound alone keeps the input MSE below 0.001, so the paper's stop only makes sense in
        the normalised space.) The logits are kept close by Eq. 7's λ2 term.
    epsilon : largest change per channel in pixel units [0, 1] (paper: 8/255); pixels
        also stay in [0, 1].
    beta : β of the softplus surrogate of ReLU used while optimising.

    Returns
    -------
    :class:`AttackResult`.
    """
    check_choice("stop_on", stop_on, ("output", "input"))
    m = as_model(model)
    net = m.net
    x = check_input(x).detach()
    b = x.shape[0]
    with torch.no_grad():
        logits = net(x)
    y = logits.argmax(1) if y is None else check_labels(y, b, x.device)
    target = _heatmap(check_attribution(target_map, (b, *x.shape[2:]), x.device))
    p = m.preprocessing
    mean = x.new_tensor(p.mean if p else (0.0,) * x.shape[1]).view(1, -1, 1, 1)
    std = x.new_tensor(p.std if p else (1.0,) * x.shape[1]).view(1, -1, 1, 1)
    lo = torch.maximum((0 - mean) / std, x - epsilon / std)
    hi = torch.minimum((1 - mean) / std, x + epsilon / std)

    def real_map(z: torch.Tensor) -> torch.Tensor:
        z = z.detach().requires_grad_(True)
        return _heatmap(check_attribution(explain(net, z, y), target.shape, x.device))

    original = real_map(x)
    x_adv = x.clone().requires_grad_(True)
    best = x.clone()
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    steps = torch.zeros(b, dtype=torch.long, device=x.device)
    opt = torch.optim.Adam([x_adv], lr=lr)
    for _ in tqdm(range(max_steps), disable=not progress, desc="attack", leave=False):
        with SoftplusSurrogate(beta):
            phi = _heatmap(explain(net, x_adv, y))
            out = net(x_adv)
        loss = (lambda1 * (phi - target).pow(2).flatten(1).sum(1)
                + lambda2 * (out - logits).pow(2).sum(1))
        opt.zero_grad()
        (loss * active).sum().backward()
        opt.step()
        with torch.no_grad():
            x_adv.copy_(torch.where(active.view(-1, 1, 1, 1), torch.clamp(x_adv, lo, hi), best))
            if stop_on == "output":
                mse = (net(x_adv) - logits).pow(2).mean(1)
            else:
                mse = (x_adv - x).pow(2).flatten(1).mean(1)
            active &= mse < stop_mse
            best = torch.where(active.view(-1, 1, 1, 1), x_adv, best)
            steps += active.long()
            x_adv.copy_(best)
        if not active.any():
            break
    adv = real_map(best)
    with torch.no_grad():
        output_mse = (net(best) - logits).pow(2).mean(1)
    return AttackResult(best, original, adv, ssim(_unit_max(original), _unit_max(adv)),
                        pearson(original, adv), pearson(original, target), pearson(adv, target),
                        output_mse, steps)
