"""The AttnLRP propagation rules as modified backward functions (Gradient × Input form).

Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024; the efficient formulation of their library lxt
(LRP-eXplains-Transformers, ``lxt.efficient``). Relevance of any tensor ``t`` is
``R_t = t ⊙ ĝ_t``, where ``ĝ`` is the gradient of one backward pass whose local
derivatives are replaced so that this product follows the LRP rules:

- linear maps (``nn.Linear``, convolutions, token mixing by constants): plain gradient, i.e.
  the ε-rule with ε → 0, ``R_i = Σ_j x_i w_ij R_j / z_j``; a bias ``b_j`` keeps its share
  ``b_j R_j / z_j`` (it is not redistributed). With ``epsilon > 0`` the ε-rule proper:
  ``R_i = Σ_j x_i w_ij R_j / (z_j + ε sign z_j)`` (paper Eq. 8);
- element-wise activations (GELU, …): the identity rule ``R_in = R_out`` (paper Eq. 9),
  i.e. the local derivative becomes ``f(x)/x``;
- LayerNorm: σ held constant (mean centring kept), which makes it linear in ``x``: the
  identity rule on ``1/σ`` (paper Prop. 3.4), as lxt does (written out once, with attention,
  in :mod:`ierf.local.frozen_ops`);
- softmax: plain gradient, because ``x ⊙ Jᵀ(R/s) = x ⊙ (R − s Σ R)`` is exactly the AttnLRP
  softmax rule (paper Prop. 3.1, the Taylor decomposition at ``x`` with its bias term, which
  is where relevance is not conserved);
- bilinear products of two input-dependent tensors (``q·kᵀ``, ``A·v``, gating ``a ⊙ b``):
  the uniform rule, each factor gets half (paper Eq. 7, Props. 3.2–3.3), i.e. each
  factor's gradient halved.

:class:`AttnLRPMode` applies these rules to every matching ``torch`` call while active, so
timm ViTs (fused ``scaled_dot_product_attention`` or explicit softmax) and any other network
built from these operations are covered without editing them. All functions are vmap-able,
so many targets share one forward pass (``is_grads_batched``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ierf.local import frozen_ops
from ierf.local.nonlinearity import _OUT_OF_PLACE, ACTIVATION_FUNCTIONS

#: bilinear operations that get the uniform rule when both operands depend on the input
BILINEAR_FUNCTIONS: set[Callable] = {
    torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm,
    torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
}
SOFTMAX_FUNCTIONS: set[Callable] = {torch.softmax, F.softmax, torch.Tensor.softmax}
#: layers that get the ε-rule when ``epsilon > 0``
EPSILON_FUNCTIONS: set[Callable] = {F.linear, F.conv1d, F.conv2d, F.conv3d}


class _IdentityRule(torch.autograd.Function):
    """``y = f(x)`` with local derivative ``f(x)/x``: ``x ⊙ ĝ_x = y ⊙ ĝ_y`` (Eq. 9)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return act(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _act = inputs
        safe = torch.where(x == 0, torch.ones_like(x), x)
        ctx.save_for_backward(torch.where(x == 0, torch.zeros_like(x), output / safe))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class _HalfGradient(torch.autograd.Function):
    """Identity forward, gradient halved: one factor's share under the uniform rule (Eq. 7)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad / 2


class _EpsilonRule(torch.autograd.Function):
    """Identity forward on ``z``; backward scales by ``z / (z + ε sign z)`` (ε-rule, Eq. 8)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: torch.Tensor, epsilon: float) -> torch.Tensor:
        return z.view_as(z)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, epsilon = inputs
        stabilised = z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        ctx.save_for_backward(z / stabilised)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def depends_on_input(t: object) -> bool:
    """A tensor that carries gradient and is not a parameter (the attributor also switches
    parameters' gradients off, so tensors computed from parameters alone do not count)."""
    return isinstance(t, torch.Tensor) and t.requires_grad and not isinstance(t, nn.Parameter)


def uniform(a: torch.Tensor) -> torch.Tensor:
    """Mark one factor of a bilinear product for the uniform rule."""
    return _HalfGradient.apply(a)


def bilinear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with the uniform rule when both factors depend on the input (Eq. 7)."""
    return uniform(a) @ uniform(b) if depends_on_input(a) and depends_on_input(b) else a @ b


def attention(*args, cp: bool = False, **kwargs) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (same arguments): uniform rule on ``q·kᵀ`` and
    ``A·v`` (Prop. 3.3), softmax rule (Prop. 3.1) between them.

    With ``cp=True`` (CP-LRP, Ali et al. 2022) the attention weights are constants: no
    relevance flows through the softmax to ``q`` and ``k``, and relevance is conserved.
    """
    return frozen_ops.attention(*args, **kwargs, weights=frozen_ops.constant if cp else
                                frozen_ops.computed, matmul=bilinear)


class AttnLRPMode(TorchFunctionMode):
    """Apply the AttnLRP rules to every ``torch`` call made while active.

    Parameters
    ----------
    epsilon : ε of the ε-rule on linear and convolution layers (0: plain gradient).
    cp : hold attention weights constant (CP-LRP) instead of the AttnLRP softmax rule.

    Set ``active = False`` to let later calls run untouched.
    """

    def __init__(self, epsilon: float = 0.0, cp: bool = False) -> None:
        super().__init__()
        self.epsilon, self.cp = epsilon, cp
        self.active = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.active:
            return func(*args, **kwargs)
        if func in ACTIVATION_FUNCTIONS:
            x, rest = args[0], args[1:]
            kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
            if rest and isinstance(rest[-1], bool):
                rest = rest[:-1]  # a positional `inplace` flag: computed out of place
            act = _OUT_OF_PLACE.get(func, func)
            return _IdentityRule.apply(x, lambda t: act(t, *rest, **kwargs))
        if func is F.layer_norm:
            return frozen_ops.layer_norm(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return attention(*args, **kwargs, cp=self.cp)
        if func in BILINEAR_FUNCTIONS and len(args) == 2 and all(map(depends_on_input, args)):
            return func(uniform(args[0]), uniform(args[1]), **kwargs)
        if func in SOFTMAX_FUNCTIONS and self.cp:
            return func(*args, **kwargs).detach()  # CP-LRP: attention weights are constants
        out = func(*args, **kwargs)
        if self.epsilon > 0 and func in EPSILON_FUNCTIONS and depends_on_input(out):
            return _EpsilonRule.apply(out, self.epsilon)
        return out
