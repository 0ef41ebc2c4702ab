"""Exact concept explanations of a FaCT model (Sec. 3.1 Eqs. 8–12, App. H.2–H.3).

In explanation mode (dynamic scales detached) everything between the input, the concept codes
``u`` and the logits is dynamic-linear, so gradient × input decomposes each quantity exactly:

* :func:`concept_contributions` – logit ``y_c = Σ_k Σ_{h,w} u_k(h,w) ∂y_c/∂u_k(h,w)``
  (Eqs. 8–9): one number per concept, summing to the logit.
* :func:`concept_traces` – concept activation ``a_k = Σ_{h,w} u_k(h,w)`` (Eq. 10) as
  ``Σ_pixels W_k(x) ⊙ x`` over the 6-channel input (Eqs. 11–12).
* :func:`cross_layer_contributions` – a later unit's activation (a concept of a later
  bottleneck, or a channel of a later B-cos layer) as a sum over earlier concepts (Eq. H.14).

Each call is one forward and one backward pass for a whole batch of images × classes /
concepts / units (the backward is vectorised over the explained quantities).

Where non-exactness can come from: float rounding (float32 sums); a module outside the B-cos
family (a bias, a centred norm with running mean, a smooth activation) that
:func:`~ierf.fact.model.check_bcos` could not see because it lives in a custom ``forward``;
batch statistics (norms in training mode – the functions switch to eval mode); a TopK tie that
flips between the copies of a batch (measure zero). The ``residual`` of every result measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ierf.errors import IerfError, unknown_name
from ierf.fact.layers import encode_input, explanation_mode
from ierf.fact.model import FaCT


@dataclass
class ConceptContributions:
    """Logits decomposed over the concepts of one bottleneck (Eq. 9).

    Attributes
    ----------
    contributions : (B, T, K) contribution of concept ``k`` to logit ``classes[b, t]``.
    logits : (B, T) the explained logits.
    classes : (B, T) class indices.
    activations : (B, K) concept activations ``Σ_{h,w} u_k`` (Eq. 10).
    layer : the bottleneck layer.
    """

    contributions: Tensor
    logits: Tensor
    classes: Tensor
    activations: Tensor
    layer: str

    @property
    def residual(self) -> Tensor:
        """``logit − Σ_k contribution`` (B, T): zero up to rounding."""
        return self.logits - self.contributions.sum(-1)


@dataclass
class ConceptTraces:
    """Concept activations as dynamic-linear functions of the input pixels (Eqs. 10–12).

    Attributes
    ----------
    weights : (B, M, 6, H, W) dynamic-linear weights ``W_k(x)`` of each traced activation.
    inputs : (B, 6, H, W) the encoded input ``[x, 1 − x]``.
    activations : (B, M) the traced quantity: the activation ``a_k = Σ_{h,w} u_k(h,w)`` of
        each concept (Eq. 12), or its contribution to a logit (App. H.2,
        :func:`contribution_traces`).
    concepts : (B, M) concept indices.
    layer : the bottleneck layer.
    """

    weights: Tensor
    inputs: Tensor
    activations: Tensor
    concepts: Tensor
    layer: str

    @property
    def contributions(self) -> Tensor:
        """``W_k(x) ⊙ x`` (B, M, 6, H, W): the per-pixel, per-channel terms of Eq. 12."""
        return self.weights * self.inputs.unsqueeze(1)

    @property
    def maps(self) -> Tensor:
        """Pixel traces (B, M, H, W): contributions summed over the 6 input channels."""
        return self.contributions.sum(2)

    @property
    def residual(self) -> Tensor:
        """``a_k − Σ_pixels trace`` (B, M): zero up to rounding."""
        return self.activations - self.maps.sum((-2, -1))


@dataclass
class CrossLayerContributions:
    """Later activations decomposed over the concepts of an earlier bottleneck (App. H.3).

    Attributes
    ----------
    contributions : (B, J, K) contribution of source concept ``k`` to target unit
        ``units[b, j]`` (Eq. H.14).
    activations : (B, J) target activations, summed over positions.
    units : (B, J) target unit indices (concepts of a bottleneck, or channels).
    source, target : layer names.
    """

    contributions: Tensor
    activations: Tensor
    units: Tensor
    source: str
    target: str

    @property
    def residual(self) -> Tensor:
        """``activation − Σ_k contribution`` (B, J): zero up to rounding."""
        return self.activations - self.contributions.sum(-1)


def as_fact(model: object) -> FaCT:
    """The :class:`FaCT` network of a FaCT ``nn.Module`` or of an ``ierf.Model`` wrapping one."""
    net = getattr(model, "net", model)
    if not isinstance(net, FaCT):
        raise IerfError(f"{type(net).__name__} is not a FaCT model: build one with "
                        "ierf.fact.FaCT(backbone, {layer: TopKBottleneck(...)}) or "
                        "ierf.load_model('fact-toy')")
    return net


def _layer(fact: FaCT, layer: str | None) -> str:
    if layer is None:
        if len(fact.layers) > 1:
            raise IerfError(f"this FaCT model has several bottlenecks {fact.layers}: pass layer=")
        return fact.layers[0]
    fact.bottleneck(layer)
    return fact.resolve(layer)


def _indices(idx: int | Sequence[int] | Tensor | None, batch: int, size: int, what: str,
             fallback: Tensor) -> Tensor:
    """(B, M) long indices in [0, size) from an int, a list / (M,) tensor shared by every image,
    a (B, M) or (B,) tensor per image, or ``None`` → ``fallback``."""
    if idx is None:
        return fallback
    t = torch.as_tensor(idx, dtype=torch.long, device=fallback.device)
    if t.dim() == 0:
        t = t.expand(batch, 1)
    elif t.dim() == 1:
        t = t.view(batch, 1) if (isinstance(idx, Tensor) and len(t) == batch) else \
            t.expand(batch, -1)
    if t.dim() != 2 or t.shape[0] != batch:
        raise IerfError(f"{what} must be an int, a list of {what}, or a tensor shaped (B,) or "
                        f"(B, M) with B = {batch}; got shape {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() >= size):
        raise IerfError(f"{what} must lie in [0, {size}); got values in "
                        f"[{int(t.min())}, {int(t.max())}]")
    return t


def _spatial_sum(t: Tensor, layout: Tensor) -> Tensor:
    """Sum ``t`` (shaped ``(…, *layout.shape)``) over the positions of ``layout``:
    (B, C, H, W) maps → (…, B, C); (B, N, C) tokens → (…, B, C); (B, C) vectors unchanged."""
    if layout.dim() == 4:
        return t.flatten(-2).sum(-1)
    return t.sum(-2) if layout.dim() == 3 else t


def _unit_selector(units: Tensor, like: Tensor) -> Tensor:
    """grad_outputs (M, *like.shape) selecting, for copy m, unit ``units[b, m]`` at every
    position of ``like`` (channel axis 1 for maps and vectors, last for tokens)."""
    c = like.shape[-1] if like.dim() == 3 else like.shape[1]
    onehot = F.one_hot(units.T, c).to(like.dtype)  # (M, B, C)
    if like.dim() == 4:
        onehot = onehot[..., None, None]
    elif like.dim() == 3:
        onehot = onehot[:, :, None, :]
    return onehot.expand(units.shape[1], *like.shape)


def _batched_grad(output: Tensor, inputs: Tensor, grad_outputs: Tensor) -> Tensor:
    """``d⟨g_m, output⟩ / d inputs`` for every ``g_m`` in one vectorised backward pass."""
    (g,) = torch.autograd.grad(output, inputs, grad_outputs, is_grads_batched=True,
                               allow_unused=True)
    if g is None:
        raise IerfError("the explained quantity does not depend on the chosen layer (is the "
                        "target layer after the source layer?)")
    return g


def _forward(fact: FaCT, x: Tensor) -> tuple[Tensor, Tensor]:
    x6 = encode_input(fact.check_images(x)).detach().requires_grad_(True)
    return x6, fact.forward_encoded(x6)


def concept_contributions(model: object, x: Tensor,
                          classes: int | Sequence[int] | Tensor | None = None,
                          layer: str | None = None) -> ConceptContributions:
    """Each explained logit as a sum of concept contributions (Eqs. 8–9).

    Parameters
    ----------
    model : a :class:`FaCT` network or an ``ierf.Model`` wrapping one.
    x : RGB images (B, 3, H, W) in [0, 1].
    classes : ``None`` (every class), an int or list (the same for every image), or a (B,) /
        (B, T) tensor of per-image classes.
    layer : the bottleneck to decompose over (needed if the model has several).
    """
    fact = as_fact(model)
    layer = _layer(fact, layer)
    with explanation_mode(fact), torch.enable_grad(), fact.recording() as rec:
        _, logits = _forward(fact, x)
        B, n_classes = logits.shape
        every = torch.arange(n_classes, device=logits.device).expand(B, -1)
        cls = _indices(classes, B, n_classes, "classes", every)
        u = rec.codes[layer]
        g = _batched_grad(logits, u, _unit_selector(cls, logits))  # (T, B, K, H, W)
    contrib = _spatial_sum(g * u.detach(), u).transpose(0, 1)
    return ConceptContributions(contrib, logits.detach().gather(1, cls), cls,
                                _spatial_sum(u.detach(), u), layer)


def concept_traces(model: object, x: Tensor,
                   concepts: int | Sequence[int] | Tensor | None = None,
                   layer: str | None = None, top: int = 8) -> ConceptTraces:
    """Each concept activation ``Σ_{h,w} u_k`` traced back to the input pixels (Eqs. 10–12).

    Parameters
    ----------
    concepts : ``None`` (the ``top`` most active concepts of each image), an int or list
        (the same for every image), or a (B,) / (B, M) tensor of per-image concepts.
    top : concepts traced per image when ``concepts`` is ``None``.
    """
    fact = as_fact(model)
    layer = _layer(fact, layer)
    K = fact.bottleneck(layer).n_concepts
    with explanation_mode(fact), torch.enable_grad(), fact.recording() as rec:
        x6, _ = _forward(fact, x)
        u = rec.codes[layer]
        act = _spatial_sum(u.detach(), u)
        ids = _indices(concepts, len(x), K, "concepts", act.topk(min(top, K), dim=1).indices)
        g = _batched_grad(u, x6, _unit_selector(ids, u))  # (M, B, 6, H, W)
    return ConceptTraces(g.transpose(0, 1), x6.detach(), act.gather(1, ids), ids, layer)


def contribution_traces(model: object, x: Tensor, classes: int | Tensor | None = None,
                        concepts: int | Sequence[int] | Tensor | None = None,
                        layer: str | None = None, top: int = 8) -> ConceptTraces:
    """Each concept's *contribution* to a logit traced back to the input pixels (App. H.2,
    Eqs. H.3–H.6): Eq. 12 with the positions weighted by ``∂y_c/∂u_k(h, w)`` (dynamic scales
    detached) instead of summed uniformly. The maps of a concept sum to its contribution
    (Eq. 9), and the maps of all concepts to the logit.

    Parameters
    ----------
    classes : one class for all images (int), one per image ((B,) tensor), or ``None``
        (each image's predicted class).
    concepts : ``None`` (the ``top`` largest contributions of each image), an int or list, or
        a (B,) / (B, M) tensor of per-image concepts.
    """
    fact = as_fact(model)
    layer = _layer(fact, layer)
    K = fact.bottleneck(layer).n_concepts
    with explanation_mode(fact), torch.enable_grad(), fact.recording() as rec:
        x6, logits = _forward(fact, x)
        B = len(x6)
        cls = _indices(classes, B, logits.shape[1], "classes",
                       logits.argmax(1, keepdim=True))
        if cls.shape[1] != 1:
            raise IerfError("contribution_traces explains one class per image; give an int "
                            "or a (B,) tensor")
        u = rec.codes[layer]
        (g,) = torch.autograd.grad(logits.gather(1, cls).sum(), u, retain_graph=True)
        contrib = _spatial_sum(g * u.detach(), u)                                  # (B, K)
        ids = _indices(concepts, B, K, "concepts", contrib.topk(min(top, K), dim=1).indices)
        w = _batched_grad(u, x6, _unit_selector(ids, u) * g.detach())   # (M, B, 6, H, W)
    return ConceptTraces(w.transpose(0, 1), x6.detach(), contrib.gather(1, ids), ids, layer)


def cross_layer_contributions(model: object, x: Tensor, source: str, target: str,
                              units: int | Sequence[int] | Tensor | None = None,
                              top: int = 8) -> CrossLayerContributions:
    """Activations of later units as sums of contributions of earlier concepts (App. H.3).

    Parameters
    ----------
    source : a bottleneck layer.
    target : a later bottleneck (units are its concepts; activation ``Σ_{h,w} v_j``) or any
        later module of the backbone, e.g. a B-cos conv (units are its output channels).
    units : ``None`` (the ``top`` most active units of each image), an int or list, or a
        (B,) / (B, J) tensor of per-image units.
    """
    fact = as_fact(model)
    source = _layer(fact, source)
    target = fact.resolve(target)
    modules = dict(fact.backbone.named_modules())
    if target not in modules or target == "":
        raise unknown_name("layer", target, [n for n in modules if n])
    recorded: list[Tensor] = []
    handle = None
    if target not in fact.layers:
        handle = modules[target].register_forward_hook(lambda m, i, o: recorded.append(o))
    try:
        with explanation_mode(fact), torch.enable_grad(), fact.recording() as rec:
            _forward(fact, x)
            out = rec.codes[target] if target in fact.layers else recorded[-1]
            act = _spatial_sum(out.detach(), out)
            ids = _indices(units, len(x), act.shape[1], "units",
                           act.topk(min(top, act.shape[1]), dim=1).indices)
            u = rec.codes[source]
            g = _batched_grad(out, u, _unit_selector(ids, out))  # (J, B, K, H, W)
    finally:
        if handle is not None:
            handle.remove()
    contrib = _spatial_sum(g * u.detach(), u).transpose(0, 1)
    return CrossLayerContributions(contrib, act.gather(1, ids), ids, source, target)
