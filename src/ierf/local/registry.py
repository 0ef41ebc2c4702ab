"""The method registry: ``ierf.attributor(name, model, **opts)`` and ``ierf.methods()``."""

from __future__ import annotations

from torch import nn

from ierf.errors import unknown_name
from ierf.local.attnlrp import AttnLRP
from ierf.local.base import Attributor
from ierf.local.cams import CAMS
from ierf.local.captum_methods import (
    GradientXInput,
    GuidedBackprop,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from ierf.local.gated import GatedTransMM
from ierf.local.gradients import Gradient
from ierf.local.lrp import LRPZPlus
from ierf.local.srd import SRD, SRDHigh, SRDLow
from ierf.local.transmm import RawAttention, Rollout, TransMM
from ierf.models.model import Model

_REGISTRY: dict[str, type[Attributor]] = {
    cls.name: cls for cls in (SRD, SRDHigh, SRDLow, Gradient, Saliency, GuidedBackprop,
                              GradientXInput, IntegratedGradients, SmoothGrad, LRPZPlus, AttnLRP,
                              RawAttention, Rollout, TransMM, GatedTransMM, *CAMS)
}
DEFAULT_METHOD = "srd"


def methods() -> list[str]:
    """Names of the available attribution methods."""
    return sorted(_REGISTRY)


def attributor(name: str, model: Model | nn.Module, **opts: object) -> Attributor:
    """Build the attributor ``name`` for ``model`` (an ``ierf.Model`` or a plain ``nn.Module``)."""
    if name not in _REGISTRY:
        raise unknown_name("method", name, methods())
    return _REGISTRY[name](model, **opts)
