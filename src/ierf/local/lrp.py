"""Layer-wise Relevance Propagation wrapped from Zennit: the z⁺ rule (``lrp-zplus``, the paper's
baseline) and any of Zennit's composites (``lrp``), with LRP's sum rule at every residual sum."""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ierf.errors import IerfError, unknown_name
from ierf.local.base import Attributor
from ierf.local.patches import no_inplace
from ierf.models.model import Model

if TYPE_CHECKING:   # Zennit imports torchvision (~2 s): only when an LRP method runs
    from zennit.canonizers import Canonizer
    from zennit.composites import Composite, LayerMapComposite


class _ZennitLRP(Attributor):
    """LRP through ``zennit.attribution.Gradient`` with the composite of :meth:`_composite`;
    the output relevance is the target logit itself (one-hot × logits)."""

    @abstractmethod
    def _composite(self, x: torch.Tensor) -> Composite:
        """The Zennit composite for the batch ``x``."""

    def _sums(self) -> AbstractContextManager:
        """How residual sums share relevance beyond the canonizers (nothing by default)."""
        return nullcontext()

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        from zennit.attribution import Gradient

        net = self.model.net
        if any(isinstance(m, nn.MultiheadAttention) for m in net.modules()):
            # Zennit types it as an activation and its Pass rule breaks on q, k, v
            raise IerfError(f"{self.name} (Zennit) cannot pass relevance through "
                            "torch.nn.MultiheadAttention (open_clip and torchvision ViTs); use "
                            "--method attnlrp, LRP with rules for attention")
        index = self.class_indices(x, target)  # on the model as it is, before canonizing

        def output_relevance(logits: torch.Tensor) -> torch.Tensor:
            one_hot = torch.zeros_like(logits).scatter_(1, index[:, None], 1.0)
            return one_hot * logits.detach()

        with no_inplace(net), Gradient(net, self._composite(x)) as lrp, self._sums():
            _, relevance = lrp(x.detach(), output_relevance)
        return relevance.sum(1)


class LRPZPlus(_ZennitLRP):
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

    def _composite(self, x: torch.Tensor) -> Composite:
        return zplus_composite(self.model.net, self.stabilizer)


class LRP(_ZennitLRP):
    """LRP with a Zennit composite of the user's choice (Zennit's names), computed like
    :class:`LRPZPlus` (BatchNorms merged, torchvision ResNet sums canonized).

    Parameters
    ----------
    model : the model to explain.
    composite : ``"epsilon-plus-flat"`` (ε on dense layers, z⁺ on convolutions, Flat on the
        first layer; Zennit's recommendation for CNNs, the default), ``"epsilon-plus"``,
        ``"epsilon-gamma-box"`` (Z^B on the first layer, bounded by the model's normalised
        pixel range), ``"epsilon-alpha2-beta1"``, ``"epsilon-alpha2-beta1-flat"``.
    epsilon : ε of the ε-rule.

    With bias-free layers the ε / z⁺ / Flat composites conserve relevance (the input map sums
    to the logit, tested through a residual sum); biases absorb their share, which over the
    many BatchNorm-merged layers of EfficientNet-Lite0 leaves under 1 % of the logit at the
    pixels (as for ``lrp-zplus``). The α2β1 rules give ``2·R⁺ − R⁻`` per layer, not ``R``.
    """

    name = "lrp"
    COMPOSITES = ("epsilon-plus-flat", "epsilon-plus", "epsilon-gamma-box",
                  "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat")

    def __init__(self, model: Model | nn.Module, composite: str = "epsilon-plus-flat",
                 epsilon: float = 1e-6) -> None:
        super().__init__(model)
        if composite not in self.COMPOSITES:
            raise unknown_name("LRP composite", composite, self.COMPOSITES)
        self.composite, self.epsilon = composite, epsilon

    def _composite(self, x: torch.Tensor) -> Composite:
        from zennit.composites import COMPOSITES
        from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

        net = self.model.net
        canonizers = [batchnorm_merger(net), ResNetBottleneckCanonizer(),
                      ResNetBasicBlockCanonizer()]
        kwargs: dict[str, object] = {"epsilon": self.epsilon, "canonizers": canonizers}
        if self.composite == "epsilon-gamma-box":
            p = self.model.preprocessing
            if p is None:
                raise IerfError("epsilon-gamma-box bounds the first layer by the pixel range, "
                                "which a plain nn.Module does not carry; use ierf.load_model or "
                                "another composite")
            mean = torch.tensor(p.mean, device=x.device)[None, :, None, None]
            std = torch.tensor(p.std, device=x.device)[None, :, None, None]
            kwargs.update(low=((0 - mean) / std).expand_as(x), high=((1 - mean) / std).expand_as(x))
        return COMPOSITES[self.composite.replace("-", "_")](**kwargs)

    def _sums(self) -> AbstractContextManager:
        return ShareSums(self.epsilon)


class _ProportionalSum(torch.autograd.Function):
    """``a + b``, whose backward hands each term the share ``R · term / (a + b ± ε)`` of the
    relevance ``R`` of the sum (LRP's rule for sums; Zennit's ``Norm`` on its ``Sum``)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, epsilon: float) -> torch.Tensor:
        out = a + b
        ctx.save_for_backward(a, b, out)
        ctx.epsilon = epsilon
        return out

    @staticmethod
    def backward(ctx, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        a, b, out = ctx.saved_tensors
        ratio = R / (out + ctx.epsilon * torch.where(out >= 0, 1.0, -1.0))
        return ratio * a, ratio * b, None


_ADD = frozenset({torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__,
                  torch.Tensor.__iadd__})


class ShareSums(TorchFunctionMode):
    """While active, a sum of two tensors of one shape that both carry gradients (a residual
    connection, module or inlined code) is a :class:`_ProportionalSum`: LRP's sum rule for
    every architecture, where Zennit's canonizers know torchvision's ResNet blocks only."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__()
        self.epsilon = epsilon

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _ADD and len(args) == 2 and not kwargs
                and all(isinstance(t, torch.Tensor) and t.requires_grad for t in args)
                and args[0].shape == args[1].shape):
            return _ProportionalSum.apply(*args, self.epsilon)
        return func(*args, **kwargs)


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
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import ZPlus
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
    from zennit.types import Convolution

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
    from zennit.canonizers import NamedMergeBatchNorm
    from zennit.types import BatchNorm, Convolution

    pairs = []
    previous: tuple[str, nn.Module] | None = None
    for name, module in net.named_modules():
        if previous and isinstance(previous[1], Convolution) and isinstance(module, BatchNorm):
            pairs.append(((previous[0],), name))
        previous = (name, module)
    return NamedMergeBatchNorm(pairs)
