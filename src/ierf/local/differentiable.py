"""Differentiable forms of the registry's methods: maps that stay in the autograd graph.

The manipulation attack (paper Eq. 7, :func:`ierf.metrics.manipulation_attack`) moves the
input so that a *map* moves, so it differentiates the map with respect to the input: the map
must be computed with ``create_graph=True``. Most wrapped libraries (Captum,
pytorch-grad-cam, Zennit) detach their results, so each attack-able method has a second,
graph-keeping implementation here, bound to an attributor of the registry and reading its
settings (layer, steps, stabiliser, ...)::

    method = ierf.attributor("integrated-gradients", model, n_steps=16, method="riemann_middle")
    explain = differentiable(method)  # explain(x, y) -> (B, H, W), in the graph of x
    differentiable_methods()          # which registry methods have one

Each form gives its method's map on the real network (tested against the registry):

======================  ===========================================================
``gradient``            max over channels of |∂F_y/∂x| (``saliency`` too)
``grad-x-input``        sum over channels of x ⊙ ∂F_y/∂x
``integrated-gradients`` the attributor's ``n_steps`` / ``method`` quadrature and
                        ``baselines``, sum over channels; the whole path in one pass
                        (with ``create_graph`` every chunk's graph is kept anyway)
``guided-backprop``     max over channels of |guided gradient|, guided at every ReLU
                        call (module or functional); ReLU6 is not guided here
``lrp-zplus``           the attributor's Zennit z⁺ composite, sum over channels
``gradcam`` (+ ``-high``) ReLU(Σ_k mean(∂F_y/∂A_k) A_k) at the attributor's layer, upsampled
                        bilinearly; pytorch-grad-cam's per-image min–max scaling and
                        OpenCV resize are left out (the attack normalises maps itself)
``srd`` (+ ``-high``, ``-low``) the attributor itself with ``create_graph=True``; exact
                        for ``final="ones"`` (other μ(L→O) enter as constants)
======================  ===========================================================
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from zennit.composites import LayerMapComposite

from ierf.errors import IerfError
from ierf.local.base import Attributor
from ierf.local.cams import GradCAM
from ierf.local.captum_methods import GradientXInput, GuidedBackprop, IntegratedGradients
from ierf.local.gradients import Gradient
from ierf.local.lrp import LRPZPlus, zplus_composite
from ierf.local.srd import SRD
from ierf.models.hooks import record_outputs

DifferentiableMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain(x, y) -> (B, H, W)``: the map of classes ``y``, differentiable w.r.t. ``x``
(which must require grad)."""

_FORMS: dict[type[Attributor], Callable[[Attributor], DifferentiableMap]] = {}


def _form_of(cls: type[Attributor]):
    """Register the decorated builder as the differentiable form of ``cls`` (and subclasses)."""
    def register(build: Callable[[Attributor], DifferentiableMap]):
        _FORMS[cls] = build
        return build
    return register


def differentiable(method: Attributor) -> DifferentiableMap:
    """The differentiable form of a registry attributor, with the attributor's settings.

    Looked up by class along the MRO, so subclasses (``saliency``, ``gradcam-high``,
    ``srd-high``) share their parent's form. Raises :class:`~ierf.errors.IerfError` for a
    method without one (see :func:`differentiable_methods`).
    """
    if getattr(method, "per_channel", False):
        raise IerfError(f"method {method.name!r} was made with per_channel=True; the "
                        "differentiable forms give (B, H, W) maps: make it without per_channel")
    for cls in type(method).__mro__:
        if cls in _FORMS:
            return _FORMS[cls](method)
    raise IerfError(f"method {method.name!r} has no differentiable form; methods that have "
                    f"one: {', '.join(differentiable_methods())}")


def differentiable_methods() -> list[str]:
    """Registry names of the methods that have a differentiable form."""
    from ierf.local.registry import METHODS  # the registry imports the methods, not this

    return sorted(n for n, cls in METHODS.items() if any(c in _FORMS for c in cls.__mro__))


def _input_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂F_y/∂x with the graph kept (x must require grad)."""
    score = net(x).gather(1, y[:, None]).sum()
    return torch.autograd.grad(score, x, create_graph=True)[0]


@_form_of(Gradient)
def _gradient(method: Gradient) -> DifferentiableMap:
    net = method.model.net
    return lambda x, y: _input_gradient(net, x, y).abs().amax(1)


@_form_of(GradientXInput)
def _grad_x_input(method: GradientXInput) -> DifferentiableMap:
    net = method.model.net
    return lambda x, y: (_input_gradient(net, x, y) * x).sum(1)


@_form_of(IntegratedGradients)
def _integrated_gradients(method: IntegratedGradients) -> DifferentiableMap:
    from captum.attr._utils.approximation_methods import approximation_parameters

    net, steps = method.model.net, method.n_steps
    step_sizes, alphas = approximation_parameters(method.method)
    weights, points = step_sizes(steps), alphas(steps)

    def explain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = x.new_tensor(points).view(-1, 1, 1, 1, 1)
        w = x.new_tensor(weights).view(-1, 1, 1, 1, 1)
        if method.baselines is None:  # zeros: the path α·x, the difference x
            path, diff = a * x, x
        else:
            base = torch.as_tensor(method.baselines, dtype=x.dtype, device=x.device)
            diff = x - base
            path = base + a * diff
        g = _input_gradient(net, path.flatten(0, 1), y.repeat(steps)).view(steps, *x.shape)
        return ((w * g).sum(0) * diff).sum(1)
    return explain


_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _GuidedBackward(torch.autograd.Function):
    """Forward: the activation's output ``a``; backward: ``relu(g) · slope`` into ``x`` only.

    The backward is made of torch ops on the saved ``slope`` (a graph function of ``x``), so
    with ``create_graph`` the guided gradient is itself differentiable w.r.t. the input.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(slope)
        return a.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (slope,) = ctx.saved_tensors
        return g.clamp_min(0) * slope, None, None  # clamp_min: no ReLU call for a mode to see


class _ReLUSlopes(TorchFunctionMode):
    """While active, record the local slope σ'(x) of every ReLU call, in call order.

    ``σ`` is whatever the ReLU call computes under the modes outside this one: the ReLU itself
    (slope 1[x > 0]), or the attack's softplus surrogate (slope sigmoid(βx)). The slope is
    taken by autograd with ``create_graph``, so it stays a graph function of the input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.slopes: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _RELUS:
            return func(*args, **(kwargs or {}))
        x = args[0]
        a = torch.relu(x)  # out of place; the softplus surrogate when the attack runs
        self.slopes.append(torch.autograd.grad(a, x, torch.ones_like(a), create_graph=True)[0])
        return a


class _GuidedReLU(TorchFunctionMode):
    """While active, the k-th ReLU call back-propagates ``relu(g) · slopes[k]``."""

    def __init__(self, slopes: list[torch.Tensor]) -> None:
        super().__init__()
        self.slopes = iter(slopes)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _RELUS:
            return func(*args, **(kwargs or {}))
        return _GuidedBackward.apply(args[0], torch.relu(args[0]), next(self.slopes))


@_form_of(GuidedBackprop)
def _guided_backprop(method: GuidedBackprop) -> DifferentiableMap:
    """Guided backprop (Springenberg et al. 2015): max over channels of |guided ∂F_y/∂x|.

    At every ReLU (module or functional) the backward is ``relu(g) · σ'(x)``. The map depends
    on the input only through these slopes, so they come from a plain forward pass (true
    derivatives back to the input), and a second, guided pass uses them: had the slopes been
    taken inside the guided pass, the second derivative the attack needs would flow back
    through guided ReLUs instead of the network's own Jacobian.
    """
    net = method.model.net

    def explain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with _ReLUSlopes() as record:
            net(x)
        with _GuidedReLU(record.slopes):
            score = net(x).gather(1, y[:, None]).sum()
        g = torch.autograd.grad(score, x, create_graph=True)[0]
        return g.abs().amax(1)
    return explain


@_form_of(LRPZPlus)
def _lrp_zplus(method: LRPZPlus) -> DifferentiableMap:
    """LRP-z⁺ with the attributor's Zennit composite: input relevance summed over channels,
    output relevance = target logit.

    Zennit's rules compute each layer's relevance with ``autograd.grad`` on the stored layer
    input, and pass ``create_graph`` on when the incoming relevance requires grad, so the
    relevance map stays in the graph when the output relevance does (here: the logit, not
    detached). Its BatchNorm canonizer, however, merges by overwriting ``.data`` and restores
    the parameters on exit, which would silently change the weights a second backward pass
    reads; so the canonizers are applied once, for good, to a private copy of the network
    (the weights as they are when the form is built), and only the rule hooks are registered
    per call.
    """
    net = copy.deepcopy(method.model.net).eval().requires_grad_(False)
    for m in net.modules():
        if getattr(m, "inplace", None) is True:
            m.inplace = False  # Zennit's hooks need out-of-place activations
    composite = zplus_composite(net, method.stabilizer)
    for canonizer in composite.canonizers:
        canonizer.apply(net)  # never removed: the copy stays canonized
    rules = LayerMapComposite(layer_map=composite.layer_map)

    def explain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with rules.context(net):
            logits = net(x)
            one_hot = torch.zeros_like(logits).scatter_(1, y[:, None], 1.0)
            (relevance,) = torch.autograd.grad(logits, x, one_hot * logits, create_graph=True)
        return relevance.sum(1)
    return explain


@_form_of(GradCAM)
def _gradcam(method: GradCAM) -> DifferentiableMap:
    """Grad-CAM at the attributor's layer: ReLU(Σ_k mean(∂F_y/∂A_k) A_k), upsampled bilinearly."""
    net, layer = method.model.net, method.target_layer
    to_grid = method._reshape_transform()

    def explain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with record_outputs({"a": layer}) as outs:
            score = net(x).gather(1, y[:, None]).sum()
        g = torch.autograd.grad(score, outs["a"], create_graph=True)[0]
        a = outs["a"]
        if to_grid is not None:
            a, g = to_grid(a), to_grid(g)
        cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return explain


@_form_of(SRD)
def _srd(method: SRD) -> DifferentiableMap:
    """The attributor itself, keeping its graph (a shallow copy with ``create_graph=True``)."""
    srd = method
    if not method.create_graph:
        srd = copy.copy(method)
        srd.create_graph = True
    return lambda x, y: srd.attribute(x, y)
