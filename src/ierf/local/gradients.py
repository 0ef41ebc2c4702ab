"""The gradient family (Simonyan et al. 2014)."""

from __future__ import annotations

import torch

from ierf.local.base import Attributor


class Gradient(Attributor):
    """Plain input gradient (saliency): max over colour channels of |∂y_c/∂x|."""

    name = "gradient"

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            score = self.score(self.model.net(x), target)
            (grad,) = torch.autograd.grad(score.sum(), x)
        return grad.abs().amax(1)
