"""The gradient family, wrapped from Captum: saliency, guided backprop, gradient × input,
Integrated Gradients and SmoothGrad.

Each method reduces Captum's (B, 3, H, W) attribution to one (B, H, W) map (``per_channel=True``
keeps Captum's (B, 3, H, W) attribution as it is; ``ierf.viz`` sums such maps over channels
for display, as Captum's ``visualize_image_attr`` does):

============================  ===================================================
``saliency``                  max over channels of |∂y/∂x| (same as ``gradient``)
``guided-backprop``           max over channels of |guided gradient|
``grad-x-input``              sum over channels of x ⊙ ∂y/∂x (signed)
``integrated-gradients``      sum over channels (signed; sums to f(x) − f(x̄))
``smoothgrad``                max over channels of the mean over samples of |∂y/∂x|
============================  ===================================================
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import ClassVar

import torch
from torch import nn

from ierf.local.base import Attributor
from ierf.local.gradients import ChannelMaps, Gradient
from ierf.local.patches import no_inplace
from ierf.models.model import Model


class Saliency(Gradient):
    """Saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR-W 2014).

    The ``gradient`` attributor under its Captum name: max over colour channels of |∂y_c/∂x|,
    equal to ``captum.attr.Saliency(net).attribute(x, target, abs=True).amax(1)``.
    """

    name = "saliency"


class GuidedBackprop(ChannelMaps, Attributor):
    """Guided backpropagation (Springenberg et al., "Striving for Simplicity: The All
    Convolutional Net", ICLR-W 2015), via ``captum.attr.GuidedBackprop``.

    Map: max over colour channels of the absolute guided gradient. Captum guides
    ``nn.ReLU`` modules only; ``nn.ReLU6`` modules (timm's EfficientNet-Lite) are guided too,
    by presenting them to Captum as ReLUs for the call (their forward is unchanged, the
    backward passes only positive gradients where 0 < x < 6). Other activations (SiLU,
    GELU) are differentiated normally. In-place activations are switched off for the call.
    """

    name = "guided-backprop"

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        index = self.class_indices(x, target)
        net = self.model.net
        with no_inplace(net), _relu6_seen_as_relu(net), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Setting backward hooks on ReLU")  # documented
            gbp = _captum_attr().GuidedBackprop(net)
            attr = gbp.attribute(x.detach().requires_grad_(), target=index)
        return self.channels(attr.abs(), "max")


class GradientXInput(ChannelMaps, Attributor):
    """Gradient × input (Shrikumar et al., "Not Just a Black Box: Learning Important Features
    Through Propagating Activation Differences", arXiv:1605.01713, 2016), via
    ``captum.attr.InputXGradient``.

    Map: sum over colour channels of x ⊙ ∂y_c/∂x, signed, in the normalised input space.
    """

    name = "grad-x-input"

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        index = self.class_indices(x, target)
        gxi = _captum_attr().InputXGradient(self.model.net)
        attr = gxi.attribute(x.detach().requires_grad_(), target=index)
        return self.channels(attr, "sum")


class IntegratedGradients(ChannelMaps, Attributor):
    """Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep
    Networks", ICML 2017), via ``captum.attr.IntegratedGradients``.

    Map: sum over colour channels, signed; it sums to about f(x) − f(baseline)
    (completeness), the closer the more ``n_steps``.

    Parameters
    ----------
    model : the model to explain.
    n_steps : points of the path integral (32 by default for speed; the paper's 50+ for
        tighter completeness).
    baselines : the reference input x̄: ``None`` for zeros in the normalised input space, a
        number, or a tensor broadcastable to the input.
    method : Captum's quadrature: ``"gausslegendre"`` (default), ``"riemann_trapezoid"``, ...
    internal_batch_size : at most this many images per forward/backward pass (the path
        expands the batch to B × n_steps images); 16 was fastest per image on a 2-core CPU
        for ResNet50 and EfficientNet-Lite0; raise it on a GPU.
    per_channel : keep the colour channels, (B, 3, H, W).

    Every option can also be given to :meth:`attribute` for one call, and
    ``attribute(x, target, return_convergence_delta=True)`` returns ``(maps, delta)`` with
    Captum's per-image completeness error δ = Σ attribution − (f(x) − f(x̄)).
    """

    name = "integrated-gradients"
    call_options: ClassVar[tuple[str, ...]] = ("n_steps", "baselines", "method",
                                               "internal_batch_size", "per_channel")

    def __init__(self, model: Model | nn.Module, n_steps: int = 32,
                 baselines: float | torch.Tensor | None = None, method: str = "gausslegendre",
                 internal_batch_size: int = 16, per_channel: bool = False) -> None:
        super().__init__(model, per_channel)
        self.n_steps = n_steps
        self.baselines = baselines
        self.method = method
        self.internal_batch_size = internal_batch_size

    def attribute(self, x: torch.Tensor, target: object = None, *,
                  return_convergence_delta: bool = False, **options: object
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Maps as :meth:`Attributor.attribute`; with ``return_convergence_delta`` also the
        (B,) completeness error δ of each image (Captum's ``compute_convergence_delta``)."""
        if not return_convergence_delta:
            return super().attribute(x, target, **options)
        method = self.with_options(**options)
        x = method.model.check(x)
        attr, delta = method._integrate(x, target, delta=True)
        return method.channels(attr, "sum").to(x.device), delta.to(x.device)

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        return self.channels(self._integrate(x, target, delta=False), "sum")

    def _integrate(self, x: torch.Tensor, target: object, delta: bool
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Captum's (B, 3, H, W) attribution (and δ when ``delta``)."""
        index = self.class_indices(x, target)
        ig = _captum_attr().IntegratedGradients(self.model.net)
        return ig.attribute(x.detach(), baselines=self.baselines, target=index,
                            n_steps=self.n_steps, method=self.method,
                            internal_batch_size=self.internal_batch_size,
                            return_convergence_delta=delta)


class SmoothGrad(ChannelMaps, Attributor):
    """SmoothGrad (Smilkov et al., "SmoothGrad: Removing Noise by Adding Noise",
    arXiv:1706.03825, 2017), via ``captum.attr.NoiseTunnel(Saliency)``.

    Map: max over colour channels of the mean over noisy samples of |∂y_c/∂x| (Captum's
    ``Saliency(abs=True)`` averaged by ``NoiseTunnel(nt_type="smoothgrad")``). Random: seed
    torch (``torch.manual_seed``) for repeatable maps.

    Parameters
    ----------
    model : the model to explain.
    nt_samples : noisy copies per image (25 by default for speed; the paper uses 50).
    stdevs : standard deviation of the Gaussian noise in the normalised input space;
        ``None`` for 15 % of the batch's value range (x.max() − x.min()), the paper's
        recommended noise level.
    internal_batch_size : at most this many images per forward/backward pass (the noise
        expands the batch to B × nt_samples images); as for Integrated Gradients.
    per_channel : keep the colour channels, (B, 3, H, W).
    """

    name = "smoothgrad"
    call_options: ClassVar[tuple[str, ...]] = ("nt_samples", "stdevs", "internal_batch_size",
                                               "per_channel")

    def __init__(self, model: Model | nn.Module, nt_samples: int = 25,
                 stdevs: float | None = None, internal_batch_size: int = 16,
                 per_channel: bool = False) -> None:
        super().__init__(model, per_channel)
        self.nt_samples = nt_samples
        self.stdevs = stdevs
        self.internal_batch_size = internal_batch_size

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        index = self.class_indices(x, target)
        stdevs = self.stdevs if self.stdevs is not None else 0.15 * float(x.max() - x.min())
        captum = _captum_attr()
        tunnel = captum.NoiseTunnel(captum.Saliency(self.model.net))
        attr = tunnel.attribute(x.detach(), nt_type="smoothgrad", nt_samples=self.nt_samples,
                                nt_samples_batch_size=max(1, self.internal_batch_size // len(x)),
                                stdevs=stdevs, target=index, abs=True)
        return self.channels(attr, "max")


def _captum_attr() -> ModuleType:
    """``captum.attr``, imported on first use (it takes about half a second)."""
    return importlib.import_module("captum.attr")


class _ReLU6AsReLU(nn.ReLU6, nn.ReLU):
    """A ReLU6 (forward unchanged) that passes Captum's ``isinstance(module, nn.ReLU)`` test."""


@contextmanager
def _relu6_seen_as_relu(net: nn.Module) -> Iterator[None]:
    """Give every ``nn.ReLU6`` module the class :class:`_ReLU6AsReLU` for the duration."""
    relu6 = [m for m in net.modules() if type(m) is nn.ReLU6]
    for m in relu6:
        m.__class__ = _ReLU6AsReLU
    try:
        yield
    finally:
        for m in relu6:
            m.__class__ = nn.ReLU6
