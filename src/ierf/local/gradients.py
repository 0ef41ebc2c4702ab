"""The gradient family (Simonyan et al. 2014)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ierf.local.base import Attributor
from ierf.models.model import Model


class ChannelMaps:
    """Mixin of the Captum-style input attributors: ``per_channel=True`` keeps Captum's
    (B, 3, H, W) attribution instead of reducing it over the colour channels."""

    call_options: ClassVar[tuple[str, ...]] = ("per_channel",)

    def __init__(self, model: Model | nn.Module, per_channel: bool = False) -> None:
        super().__init__(model)  # type: ignore[call-arg]
        self.per_channel = per_channel

    def channels(self, attr: torch.Tensor, reduce: str) -> torch.Tensor:
        """(B, 3, H, W) ``attr`` itself when ``per_channel``, else reduced over the colour
        channels (``"max"`` or ``"sum"``) to (B, H, W)."""
        if self.per_channel:
            return attr
        return attr.amax(1) if reduce == "max" else attr.sum(1)


class Gradient(ChannelMaps, Attributor):
    """Plain input gradient (saliency): max over colour channels of |∂y_c/∂x|
    (``per_channel=True``: the (B, 3, H, W) |∂y_c/∂x| itself)."""

    name = "gradient"

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            score = self.score(self.model.net(x), target)
            (grad,) = torch.autograd.grad(score.sum(), x)
        return self.channels(grad.abs(), "max")
