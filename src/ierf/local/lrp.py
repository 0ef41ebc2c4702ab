"""Layer-wise Relevance Propagation with the z⁺ rule, wrapped from Zennit."""

from __future__ import annotations

import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, NamedMergeBatchNorm
from zennit.composites import LayerMapComposite, layer_map_base
from zennit.rules import ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import BatchNorm, Convolution

from ierf.local.base import Attributor
from ierf.local.patches import no_inplace
from ierf.models.model import Model


class LRPZPlus(Attributor):
    """LRP-z⁺ (Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
    Layer-Wise Relevance Propagation", PLoS ONE 2015; z⁺ rule: Montavon et al., "Explaining
    Nonlinear Classification Decisions with Deep Taylor Decomposition", Pattern Recognition
    2017), computed by ``zennit.attribution.Gradient`` with the composite of
    :func:`zplus_composite`.

    The output relevance is the target logit itself (one-hot × logits), so the input relevance
    sums to the logit where the rules conserve it (bias-free layers, canonized sums). Map: sum
    over colour channels of the input relevance, signed.

    Parameters
    ----------
    model : the model to explain.
    stabilizer : added to the z⁺ denominators (Zennit's ``stabilizer``).
    """

    name = "lrp-zplus"

    def __init__(self, model: Model | nn.Module, stabilizer: float = 1e-6) -> None:
        super().__init__(model)
        self.stabilizer = stabilizer

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        index = self.class_indices(x, target)  # on the model as it is, before canonizing
        net = self.model.net

        def output_relevance(logits: torch.Tensor) -> torch.Tensor:
            one_hot = torch.zeros_like(logits).scatter_(1, index[:, None], 1.0)
            return one_hot * logits.detach()

        with no_inplace(net), Gradient(net, zplus_composite(net, self.stabilizer)) as lrp:
            _, relevance = lrp(x.detach(), output_relevance)
        return relevance.sum(1)


def zplus_composite(net: nn.Module, stabilizer: float = 1e-6) -> LayerMapComposite:
    """Zennit composite for LRP-z⁺: ``ZPlus`` on every convolution and linear layer.

    That includes the pixel layer, where Zennit's z⁺ (α=1, β=0) keeps the positive
    contributions x⁺w⁺ + x⁻w⁻ of the signed, normalised inputs; no special first-layer rule
    (Flat, zᴮ) is used. Zennit's base map handles the rest: activations ``Pass`` relevance
    through, sums and average pools share it by contribution (``Norm``), BatchNorm is passed.

    Canonizers: every BatchNorm (timm's fused ``BatchNormAct2d`` included) is merged into the
    convolution registered right before it (:func:`batchnorm_merger`), and torchvision ResNet
    blocks get Zennit's residual-sum canonizers, so the skip connections share relevance
    instead of copying it. Other residual additions (timm's EfficientNet blocks) have no
    canonizer in Zennit: relevance is copied to both branches there and not conserved.
    """
    layer_map = layer_map_base(stabilizer) + [
        (Convolution, ZPlus(stabilizer=stabilizer)),
        (torch.nn.Linear, ZPlus(stabilizer=stabilizer)),
    ]
    canonizers = [batchnorm_merger(net), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
    return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)


def batchnorm_merger(net: nn.Module) -> Canonizer:
    """``NamedMergeBatchNorm`` for each BatchNorm registered right after a convolution.

    Zennit's ``SequentialMergeBatchNorm`` looks at leaf modules only, so it misses BatchNorms
    that have children (timm's ``BatchNormAct2d`` holds its activation); this pairs modules
    in ``named_modules()`` order instead, which also covers torchvision's ResNets and VGGs.
    """
    pairs = []
    previous: tuple[str, nn.Module] | None = None
    for name, module in net.named_modules():
        if previous and isinstance(previous[1], Convolution) and isinstance(module, BatchNorm):
            pairs.append(((previous[0],), name))
        previous = (name, module)
    return NamedMergeBatchNorm(pairs)
