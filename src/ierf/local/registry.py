"""The method registry: ``ierf.attributor(name, model, **opts)`` and ``ierf.methods()``."""

from __future__ import annotations

from torch import nn

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
from ierf.registry import Registry

METHODS: Registry[type[Attributor]] = Registry("method", {
    cls.name: cls for cls in (SRD, SRDHigh, SRDLow, Gradient, Saliency, GuidedBackprop,
                              GradientXInput, IntegratedGradients, SmoothGrad, LRPZPlus, AttnLRP,
                              RawAttention, Rollout, TransMM, GatedTransMM, *CAMS)
})


def methods() -> list[str]:
    """Names of the available attribution methods."""
    return sorted(METHODS)


def attributor(name: str, model: Model | nn.Module, **opts: object) -> Attributor:
    """Build the attributor ``name`` for ``model`` (an ``ierf.Model`` or a plain ``nn.Module``)."""
    return METHODS[name](model, **opts)
