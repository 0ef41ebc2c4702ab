"""B-cos layers (FaCT Sec. 3 "B-cos Networks", Eqs. 2–3; B-cos v2 by Böhle et al.).

A B-cos layer has unit-norm weight rows ``ŵ``, no bias, and scales the linear response by
``|cos(x, ŵ)|^(B−1)``::

    B-cos(x) = |cos(x, ŵ)|^(B−1) · (ŵᵀ x),   cos(x, ŵ) = ŵᵀ x / ‖x‖     (FaCT Eq. 2)

In *explanation mode* the scale is detached from the autograd graph, so each layer is a
dynamic-linear map ``W(x) x`` and a stack of them is ``W_{1→L}(x) x`` (Eq. 3): gradient × input
then reproduces every output exactly. Norms are bias-free and uncentred (B-cos v2), so they are
linear maps too. Inputs use the 6-channel encoding ``[x, 1 − x]`` (:func:`encode_input`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: stabiliser inside the square root of the input norm ``‖x‖`` (as B-cos v2)
NORM_EPS = 1e-6


def encode_input(x: Tensor) -> Tensor:
    """``[x, 1 − x]`` along the channel axis: (B, 3, H, W) in [0, 1] → (B, 6, H, W).

    With both a colour and its inverse, every pixel has a non-zero norm and black pixels can
    still be encoded by a bias-free network (B-cos v2 "AddInverse").
    """
    return torch.cat([x, 1 - x], dim=1)


def _cos_scale(linear: Tensor, norm: Tensor, b: float) -> Tensor:
    """``|cos|^(B−1)`` with ``cos = linear / norm``."""
    cos = linear.abs() / norm
    return cos if b == 2 else (cos + 1e-6).pow(b - 1)


class _BcosB2(torch.autograd.Function):
    """``linear · |linear| / norm`` (B = 2) with a hand-written backward: the same values and
    gradients as the plain expression, with fewer passes over memory (training speed only;
    explanation mode uses the plain expression)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, linear: Tensor,  # type: ignore[override]
                norm: Tensor) -> Tensor:
        cos = linear.abs().div_(norm)
        ctx.save_for_backward(linear, cos, norm)
        return cos * linear

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # type: ignore[override]
                 grad: Tensor) -> tuple[Tensor, Tensor]:
        linear, cos, norm = ctx.saved_tensors  # type: ignore[attr-defined]
        g_cos = grad * cos
        prod = g_cos * linear  # d/d norm of cos·linear is −cos·linear / norm
        dims = [i for i, (a, n) in enumerate(zip(prod.shape, norm.shape)) if n == 1 and a != 1]
        g_norm = (prod.sum(dims, keepdim=True) if dims else prod).div_(norm).neg_()
        return g_cos.mul_(2), g_norm


def _bcos(linear: Tensor, norm: Tensor, b: float, explain: bool) -> Tensor:
    """``|cos|^(B−1) · linear``; in explanation mode the scale is a constant (detached)."""
    if b == 1:
        return linear
    if b == 2 and not explain and torch.is_grad_enabled():
        return _BcosB2.apply(linear, norm)
    scale = _cos_scale(linear, norm, b)
    return (scale.detach() if explain else scale) * linear


class _Detachable(nn.Module):
    """A module whose dynamic factors can be detached (explanation mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.explain = False

    def set_explanation_mode(self, active: bool = True) -> None:
        """Detach the input-dependent scale (True) or train through it (False)."""
        self.explain = active


class BcosConv2d(_Detachable):
    """2-D B-cos convolution: unit-norm kernels, no bias, ``|cos|^(B−1)`` scaling (Eq. 2).

    ``‖x‖`` is the norm of each input patch over all channels and kernel positions (zero
    padding included), so ``cos`` is the cosine between a patch and a unit kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, padding: int = 0, b: float = 2.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.b = kernel_size, stride, padding, b
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size,
                                               kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def unit_weight(self) -> Tensor:
        """Kernels scaled to unit L2 norm, ``ŵ`` (out, in, k, k)."""
        return self.weight / torch.linalg.vector_norm(self.weight, dim=(1, 2, 3), keepdim=True)

    def patch_norm(self, x: Tensor) -> Tensor:
        """``‖x‖`` of every input patch, (B, 1, H_out, W_out)."""
        k = self.kernel_size
        total = F.avg_pool2d(x.square().sum(1, keepdim=True), k, self.stride, self.padding)
        return (total * (k * k) + NORM_EPS).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        linear = F.conv2d(x, self.unit_weight(), None, self.stride, self.padding)
        norm = self.patch_norm(x) if self.b != 1 else linear
        return _bcos(linear, norm, self.b, self.explain)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, B={self.b:g}")


class BcosLinear(_Detachable):
    """B-cos linear layer on the last axis: unit-norm rows, no bias, ``|cos|^(B−1)`` (Eq. 2)."""

    def __init__(self, in_features: int, out_features: int, b: float = 2.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.b = in_features, out_features, b
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def unit_weight(self) -> Tensor:
        """Rows scaled to unit L2 norm, ``ŵ`` (out, in)."""
        return F.normalize(self.weight, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        linear = F.linear(x, self.unit_weight())
        norm = (x.square().sum(-1, keepdim=True) + NORM_EPS).sqrt() if self.b != 1 else linear
        return _bcos(linear, norm, self.b, self.explain)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, B={self.b:g}"


class UncenteredBatchNorm2d(_Detachable):
    """Bias-free, uncentred batch norm (B-cos v2): ``y = γ · x / sqrt(Var[x] + ε)``.

    No mean is subtracted and there is no bias, so in eval mode it is a fixed per-channel
    scale (linear); in training the batch variance is used (detached in explanation mode).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_var.lerp_(var.detach(), self.momentum)
            if self.explain:
                var = var.detach()
        else:
            var = self.running_var
        return x * (self.weight / (var + self.eps).sqrt()).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


@contextmanager
def explanation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Detach the dynamic scales of every B-cos module (ours or the ``bcos`` package's) in
    ``module`` and put it in eval mode; both are restored on exit."""
    mods = [m for m in module.modules() if hasattr(m, "set_explanation_mode")]
    before = [(m, bool(getattr(m, "explain", getattr(m, "detach", False)))) for m in mods]
    was_training = module.training
    module.eval()
    for m in mods:
        m.set_explanation_mode(True)
    try:
        yield module
    finally:
        for m, state in before:
            m.set_explanation_mode(state)
        module.train(was_training)
