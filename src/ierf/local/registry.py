"""The method registry: ``ierf.attributor(name, model, **opts)`` and ``ierf.methods()``."""

from __future__ import annotations

import inspect

from torch import nn

from ierf.errors import IerfError
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
from ierf.local.lrp import LRP, LRPZPlus
from ierf.local.srd import SRD, SRDHigh, SRDLow
from ierf.local.transmm import RawAttention, Rollout, TransMM
from ierf.models.model import Model
from ierf.registry import Registry

METHODS: Registry[type[Attributor]] = Registry("method", {
    cls.name: cls for cls in (SRD, SRDHigh, SRDLow, Gradient, Saliency, GuidedBackprop,
                              GradientXInput, IntegratedGradients, SmoothGrad, LRPZPlus, LRP, AttnLRP,
                              RawAttention, Rollout, TransMM, GatedTransMM, *CAMS)
})


#: one line per method for ``ierf methods``
SUMMARIES = {
    "srd": "Sharing Ratio Decomposition: PFV iERFs propagated to the pixels (the paper's method)",
    "srd-high": "SRD stopped at the stride-8 layer, upsampled (the paper's SRD-high)",
    "srd-low": "SRD's class contribution μ(L→O) at the encoder output, upsampled",
    "gradient": "|∂y/∂x|, max over colour channels",
    "saliency": "Captum Saliency (Simonyan et al. 2014)",
    "guided-backprop": "guided backpropagation (Springenberg et al. 2015), Captum",
    "grad-x-input": "gradient × input, Captum",
    "integrated-gradients": "Integrated Gradients (Sundararajan et al. 2017), Captum",
    "smoothgrad": "SmoothGrad: saliency averaged over noisy copies, Captum",
    "lrp-zplus": "LRP with the z⁺ rule, Zennit",
    "lrp": "LRP with a Zennit composite (composite=epsilon-plus-flat, epsilon-gamma-box, ...)",
    "attnlrp": "attention-aware LRP (Achtibat et al. 2024), conserving through a ViT",
    "raw-attention": "the last block's CLS attention row (class-agnostic)",
    "rollout": "attention rollout (Abnar & Zuidema 2020, class-agnostic)",
    "transmm": "TransMM (Chefer et al. 2021): gradient-weighted attention relevancy",
    "gated-transmm": "TransMM gated by SAE feature gradients (thesis Algorithm 6.1)",
    "gradcam": "Grad-CAM at the encoder output, pytorch-grad-cam",
    "gradcam++": "Grad-CAM++ at the encoder output, pytorch-grad-cam",
    "xgradcam": "XGrad-CAM at the encoder output, pytorch-grad-cam",
    "layercam": "LayerCAM at the encoder output, pytorch-grad-cam",
    "scorecam": "Score-CAM at the encoder output (one forward per channel), pytorch-grad-cam",
    "ablationcam": "Ablation-CAM at the encoder output (one forward per channel)",
    "fullgrad": "FullGrad: input and bias gradients of every layer, pytorch-grad-cam",
    **{f"{cam}-high": f"{cam} at the stride-8 layer (the paper's -high variant)"
       for cam in ("gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "ablationcam")},
}


def methods() -> list[str]:
    """Names of the available attribution methods."""
    return sorted(METHODS)


def attributor(name: str, model: Model | nn.Module, **opts: object) -> Attributor:
    """Build the attributor ``name`` for ``model`` (an ``ierf.Model`` or a plain ``nn.Module``)."""
    cls = METHODS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise IerfError(f"method {name!r} has no option {', '.join(map(repr, unknown))}; its "
                        f"options: {', '.join(accepted) or 'none'}")
    return cls(model, **opts)
