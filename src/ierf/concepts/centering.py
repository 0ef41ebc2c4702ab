"""``μ_BN``: the net shift of a BatchNorm layer (GIG Eq. 8), used to centre PFVs."""

from __future__ import annotations

import torch
from torch import nn

from ierf.errors import IerfError


def bn_shift(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``μ_BN = −γ μ_rn / sqrt(σ²_rn + ε) + β`` (GIG Eq. 8), the BN output of a zero input.

    PFVs taken after this BatchNorm are centred as ``x − μ_BN`` before clustering
    (GIG Appendix B) and reconstructed as ``U Vᵀ + μ_BN`` (GIG Eq. 9).

    Parameters
    ----------
    bn : a BatchNorm layer with running statistics.

    Returns
    -------
    (C,) shift, detached, on the layer's device.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise IerfError("bn_shift needs a BatchNorm with running statistics "
                        "(track_running_stats=True)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift * bn.weight + bn.bias
    return shift.detach()
