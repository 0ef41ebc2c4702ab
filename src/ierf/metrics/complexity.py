"""Complexity: how concentrated is the attribution? (paper Appendix VII-G, Eq. 33)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ierf.metrics.base import Explain, Metric, normalise_map
from ierf.models.model import Model


def gini(v: torch.Tensor) -> torch.Tensor:
    """Gini index of each row of non-negative ``v`` (Eq. 33): ``1 − 2 Σ_k v_(k)/‖v‖₁ · (d−k+½)/d``.

    ``v_(k)`` are the values sorted ascending. 0 for a constant row, ``(d−1)/d`` for a
    one-hot row; an all-zero row scores 0.
    """
    v = v.flatten(1).double()
    d = v.shape[1]
    v, _ = v.sort(1)
    k = torch.arange(1, d + 1, device=v.device, dtype=v.dtype)
    total = v.sum(1)
    g = 1 - 2 * (v * (d - k + 0.5) / d).sum(1) / torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, g, 0.0).float()


class Sparseness(Metric):
    """Sparseness (Chalasani et al. 2020): the Gini index of ``|a|`` (Eq. 33).

    Parameters
    ----------
    normalise : divide each map by its max-abs value first (the Gini index is scale-free).
    absolute : take ``|a|`` (Quantus' default; the Gini index needs non-negative values).

    Returns the Gini index in [0, 1) per image. Higher (sparser) is better.
    """

    name: ClassVar[str] = "sparseness"
    score_direction: ClassVar[str] = "higher"

    def __init__(self, normalise: bool = True, absolute: bool = True) -> None:
        self.normalise, self.absolute = normalise, absolute

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        _, x, y, a, _ = self.validate(model, x, y, a, mask)
        a = normalise_map(a, self.normalise, self.absolute)
        return gini(a.clamp_min(0))
