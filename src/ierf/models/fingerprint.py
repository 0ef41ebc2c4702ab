"""A model's weights fingerprint: tells whether a reloaded model is the one an artefact
(atlas, concept basis, graph) was made with."""

from __future__ import annotations

from torch import nn


def weights_fingerprint(net: nn.Module) -> float:
    """Σ|θ| over the parameters and buffers, in float64 on the CPU (10 significant digits)."""
    state = net.state_dict().values()
    total = sum(float(t.detach().cpu().double().abs().sum()) for t in state if t.is_floating_point())
    return float(f"{total:.10g}")
