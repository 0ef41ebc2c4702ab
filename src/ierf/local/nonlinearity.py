"""Where SRD sees the network: every nonlinearity call, as module or functional.

SRD takes PFVs at the input of every nonlinearity (pre-activations) and lets relevance
pass through a nonlinearity position by position (paper Sec. IV-A, Appendix VII-A).
:class:`NonlinearityMode` intercepts the activation functions at the
``torch.nn.functional`` level, so ``nn.ReLU`` modules (even one reused several times, as
in torchvision's Bottleneck), ``F.gelu`` calls and ``torch.tanh`` are all seen, and hands
each call to a callback that may replace its output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

#: Functional activations SRD treats as nonlinearities (ReLU6 is F.hardtanh).
ACTIVATION_FUNCTIONS: set[Callable] = {
    F.relu, F.relu6, F.hardtanh, F.elu, F.selu, F.celu, F.leaky_relu, F.silu, F.gelu,
    F.hardswish, F.mish, F.softplus, F.tanh, F.sigmoid, F.hardsigmoid,
    torch.relu, torch.relu_, torch.tanh, torch.sigmoid, torch.selu,
    torch.Tensor.relu, torch.Tensor.relu_, torch.Tensor.tanh, torch.Tensor.sigmoid,
}

#: Activation module types (for the structural check of a model).
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.SiLU, nn.GELU,
    nn.Hardswish, nn.Mish, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid,
)

#: Module types that are affine between two nonlinearities (or fixed index selection).
AFFINE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.MaxPool1d,
    nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten,
    nn.ZeroPad2d, nn.ConstantPad2d,
)

Callback = Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]


class NonlinearityMode(TorchFunctionMode):
    """Route every activation-function call through ``callback(x, act)`` while active.

    ``callback`` gets the pre-activation ``x`` and a function computing the activation
    out of place, and returns the output to use. Set ``active = False`` to let later
    calls (e.g. the classifier head) run untouched.
    """

    def __init__(self, callback: Callback) -> None:
        super().__init__()
        self.callback = callback
        self.active = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.active or func not in ACTIVATION_FUNCTIONS:
            return func(*args, **kwargs)
        x, rest = args[0], args[1:]
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        out_of_place = _OUT_OF_PLACE.get(func, func)
        if rest and isinstance(rest[-1], bool):
            rest = rest[:-1]  # a positional `inplace` flag: the callback computes out of place
        return self.callback(x, lambda t: out_of_place(t, *rest, **kwargs))


_OUT_OF_PLACE: dict[Callable, Callable] = {
    torch.relu_: torch.relu, torch.Tensor.relu_: torch.relu, torch.Tensor.relu: torch.relu,
    torch.Tensor.tanh: torch.tanh, torch.Tensor.sigmoid: torch.sigmoid,
}
