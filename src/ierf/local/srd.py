"""Sharing Ratio Decomposition (SRD): saliency maps and iERFs as fast as a gradient.

Paper: Kwak, Han & Kim, TPAMI 2026, Sec. IV-A and Appendix VII-A/B.

Between two nonlinearities a network is affine: a pre-activation PFV is
``v_j = Σ_i v̂(i→j) + b_j`` with ``v̂(i→j) = J_ji v_i`` (Eq. 17). The sharing ratio is
``μ(i→j) = ⟨v̂(i→j), v_j⟩ / ‖v_j‖²`` (Eq. 3 / 18) and relevance moves back by
``R_i = Σ_j μ(i→j) R_j`` (Eqs. 20–21, 28). Summed over j this is one vector–Jacobian
product: ``R_i = ⟨v_i, (Jᵀ s)_i⟩`` with ``s_j = v_j R_j / ‖v_j‖²``. So SRD is one forward and
one backward pass in which every nonlinearity's backward is replaced by that rule, and
relevance passes through the nonlinearity position by position (activation-agnostic).

Bias rule (``bias=``):
- ``"proportional"`` (default): the bias's share ``⟨b_j, v_j⟩/‖v_j‖²`` is handed back to the
  sources in proportion to their own sharing ratios, i.e. ``μ(i→j) = ⟨v̂(i→j), v_j⟩ /
  ⟨v_j − b_j, v_j⟩``, so Σ_i μ(i→j) = 1 exactly (Eq. 19). Where the sources explain less
  than ``eps`` of ``‖v_j‖²`` (the bias dominates) the plain ratio is kept. The biases b_j come
  from one image-independent forward pass, cached per input size.
- ``"absorb"``: Eq. 18 as written; the bias keeps its share and conservation holds up to
  exactly that share.
The paper's code splits the bias in proportion to ‖v̂(i→j)‖ instead; that rule needs every
v̂(i→j) and lives in :mod:`ierf.local.srd_reference`, which measures the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ierf.errors import IerfError
from ierf.local.base import Attributor, recorded_layer
from ierf.local.frozen import FrozenMode
from ierf.local.nonlinearity import ACTIVATION_MODULES, AFFINE_MODULES, NonlinearityMode
from ierf.models.hooks import forward_until, record_outputs
from ierf.models.model import Model
from ierf.models.pfv import to_pfvs
from ierf.targets import LayerTarget, one_layer, start_gradient, target_layer

#: start layers × input sizes whose biases are kept (an atlas alternates its layers)
BIAS_CACHE_SIZE = 8
FINAL_RATIOS = ("clamped-mean", "mean", "raw", "ones")
BIAS_RULES = ("proportional", "absorb")


def channel_dim(t: torch.Tensor) -> int:
    """Channel axis of a PFV tensor: 1 for (B, C[, H, W]) maps, -1 for (B, T, C) tokens."""
    return -1 if t.dim() == 3 else 1


def sharing_denominator(v: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Per-position denominator of Eq. 18 under the bias rule (``bias``: b of Eq. 17, or None).

    ``‖v‖²`` (absorb), or ``⟨v − b, v⟩`` (proportional) where that exceeds ``eps·‖v‖²``.
    """
    d = channel_dim(v)
    norm2 = (v * v).sum(d, keepdim=True)
    if bias is None:
        return norm2
    explained = norm2 - (bias * v).sum(d, keepdim=True)
    return torch.where(explained > eps * norm2, explained, norm2)


def seed(v: torch.Tensor, relevance: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``s_j = v_j R_j / denom_j`` (zero where v_j = 0): what the VJP carries back."""
    safe = torch.where(denom == 0, torch.ones_like(denom), denom)
    return torch.where(denom == 0, torch.zeros_like(v), v * relevance / safe)


def position_relevance(v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``R_i = ⟨v_i, (Jᵀ s)_i⟩`` per position (Eq. 21 summed as one VJP); ``grad`` may carry
    extra leading (batched-target) dimensions."""
    return (v * grad).sum(channel_dim(v) if channel_dim(v) < 0 else grad.dim() - v.dim() + 1,
                          keepdim=True)


class _ShareThrough(torch.autograd.Function):
    """A nonlinearity whose backward applies SRD: relevance in → seed for the affine below.

    vmap-able, so many targets share one forward pass (``is_grads_batched``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, act: Callable, denom: torch.Tensor) -> torch.Tensor:
        return act(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _act, denom = inputs
        ctx.save_for_backward(x, output, denom)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y, denom = ctx.saved_tensors
        return seed(x, position_relevance(y, grad), denom), None, None


def check_supported(net: nn.Module, stop: str, vit: bool = False) -> None:
    """Raise for a leaf module SRD cannot decompose, up to layer ``stop``.

    ViTs may also hold LayerNorm (σ frozen, see :mod:`ierf.local.frozen`).
    """
    allowed = AFFINE_MODULES + ACTIVATION_MODULES + ((nn.LayerNorm,) if vit else ())
    for name, m in net.named_modules():
        if name == stop or name.startswith(stop + "."):
            break
        if next(m.children(), None) is None and not isinstance(m, allowed) \
                and type(m).__name__ not in _KNOWN_AFFINE_NAMES:
            raise IerfError(f"SRD cannot decompose module {name!r} of type {type(m).__name__}: it is "
                            "neither affine (conv, BN, linear, pooling, add) nor an activation")


_KNOWN_AFFINE_NAMES = {"Conv2dSame"}  # timm's TF-"SAME" conv: F.pad + conv


class SRD(Attributor):
    """Sharing Ratio Decomposition saliency, class-discriminative (Eqs. 4–6, 20–22, 28).

    Parameters
    ----------
    model : ``ierf.Model`` or ``nn.Module``.
    layer : the encoder output L (default: the model's last spatial layer, e.g. ``layer4``).
    high_layer : the stride-8 layer of ``srd-high`` (default: found from the model).
    final : μ(L→O) variant (Eq. 5 and Table IV): ``"clamped-mean"`` (paper), ``"mean"``,
        ``"raw"`` (Φ of Eq. 6) or ``"ones"`` (all ones, as in the manipulation experiment).
    bias : ``"proportional"`` or ``"absorb"`` (see the module docstring).
    eps : bias-dominance threshold of the proportional rule.
    create_graph : keep the maps differentiable with respect to an input that requires grad
        (the manipulation attack, paper Eq. 7); μ(L→O) enters as a constant, which it is
        for ``final="ones"``.
    """

    name: ClassVar[str] = "srd"
    resolution: ClassVar[str] = "input"

    def __init__(self, model: Model | nn.Module, layer: str | nn.Module | None = None,
                 high_layer: str | None = None, final: str = "clamped-mean",
                 bias: str = "proportional", eps: float = 0.05,
                 create_graph: bool = False) -> None:
        super().__init__(model)
        if final not in FINAL_RATIOS:
            raise IerfError(f"unknown final sharing ratio {final!r}; use one of {FINAL_RATIOS}")
        if bias not in BIAS_RULES:
            raise IerfError(f"unknown bias rule {bias!r}; use one of {BIAS_RULES}")
        self._layer = layer if layer is None else self.model.layer_name(layer)
        if layer is None and self.model.input_size is not None:
            self._layer = self.model.encoder_layer()
        if self._layer is not None:
            check_supported(self.model.net, self._layer, self.model.is_vit)
        self._high = high_layer
        self.final, self.bias, self.eps = final, bias, eps
        self.create_graph = create_graph
        self._bias_cache: dict[tuple, list[torch.Tensor]] = {}

    def _encoder_layer(self, x: torch.Tensor) -> str:
        """L, found on the first input for a wrapped ``nn.Module`` of unknown input size."""
        if self._layer is None:
            self._layer = self.model.encoder_layer(x)
            check_supported(self.model.net, self._layer, self.model.is_vit)
        return self._layer

    def _high_layer(self, x: torch.Tensor) -> str:
        """The stride-8 layer of ``srd-high`` (found on ``x`` when the input size is unknown)."""
        if self._high is None:
            self._high = self.model.layer_at_stride(
                8, None if self.model.input_size is not None else x)
        return self._high

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        key = ("input" if self.resolution == "input" else
               self._high_layer(x) if self.resolution == "high" else self._encoder_layer(x))
        native = self.relevance(x, target, layers=[] if key == "input" else [key])[key]
        if native.shape[-2:] == x.shape[-2:]:
            return native
        return F.interpolate(native[:, None], size=x.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]

    def relevance(self, x: torch.Tensor, target: object = None,
                  layers: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """Native-resolution relevance: ``"input"`` (B, H, W) and each of ``layers`` (B, h, w).

        ``target`` is a class (index, name, ``None`` = top class), or a PFV-level target
        (:class:`~ierf.targets.LayerTarget`: :class:`~ierf.PFVTarget`,
        :class:`~ierf.ConceptTarget`, :class:`~ierf.ScalarTarget`, :class:`~ierf.LatentTarget`
        or one of your own), whose layer then plays the role of L (its iERF, Eq. 2).
        """
        layer = target_layer(target)
        start = layer if layer is not None else self._encoder_layer(self.model.check(x))
        maps = self._propagate(x, start, layers, [target], need_logits=layer is None)
        return {k: v[0] for k, v in maps.items()}

    def ierfs(self, x: torch.Tensor, targets: Sequence[LayerTarget],
              internal_batch_size: int = 16) -> torch.Tensor:
        """iERFs of many PFV-level targets of one layer (PFVs, concept directions, SAE
        latents, …): (K, B, H, W) input maps.

        One forward pass, then batched (vmapped) backward passes over chunks of
        ``internal_batch_size`` targets (memory grows with the chunk); this is what the
        PFV–iERF atlas calls in bulk.
        """
        if internal_batch_size < 1:
            raise IerfError(f"internal_batch_size must be ≥ 1, got {internal_batch_size}")
        return self._propagate(x, one_layer(targets), [], list(targets), need_logits=False,
                               chunk=internal_batch_size)["input"]

    def forward_pass(self, x: torch.Tensor, layers: Sequence[str]) -> SRDPass:
        """One SRD forward pass of ``x`` through the whole network, kept for many backward
        passes: the class relevance at ``layers`` and the iERFs of targets at any of them.

        The pass to L is the one :meth:`relevance` runs, and up to each layer it is the one
        :meth:`ierfs` runs for that layer's targets (the same ops, the same sharing
        denominators), so the maps are those of the separate calls; the forward is paid once
        (the PFV–iERF atlas builds on it). The autograd graph lives as long as the pass.
        """
        x = self.model.check(x)
        start = self._encoder_layer(x)
        for name in layers:
            self.model.module(name)
        constants = self._frozen_constants(x, start) if self.model.is_vit else None
        biases, layer_biases = (self._biases(x, start, constants, layers)
                                if self.bias == "proportional" else (None, {}))
        if not (self.create_graph and x.requires_grad):
            x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, outs = self._forward(x, start, layers, biases, True, constants)
        layer_biases = {**layer_biases, start: None if biases is None else biases[-1]}
        return SRDPass(self, x, logits, outs, start, list(layers), layer_biases)

    def _propagate(self, x: torch.Tensor, start: str, layers: Sequence[str],
                   targets: Sequence[object], need_logits: bool, chunk: int = 1
                   ) -> dict[str, torch.Tensor]:
        """Relevance (K, B, h, w) at the input, ``layers`` and ``start`` for K targets."""
        x = self.model.check(x)
        for name in (start, *layers):
            self.model.module(name)
        constants = self._frozen_constants(x, start) if self.model.is_vit else None
        biases = self._biases(x, start, constants)[0] if self.bias == "proportional" else None
        if not (self.create_graph and x.requires_grad):
            x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, outs = self._forward(x, start, layers, biases, need_logits, constants)
        return self._from_pass(x, logits, outs, start, layers, targets,
                               None if biases is None else biases[-1], chunk, retain=False)

    def _from_pass(self, x: torch.Tensor | None, logits: torch.Tensor | None,
                   outs: dict[str, torch.Tensor], start: str, layers: Sequence[str],
                   targets: Sequence[object], start_bias: torch.Tensor | None, chunk: int,
                   retain: bool) -> dict[str, torch.Tensor]:
        """The backward half of :meth:`_propagate` on a forward pass's outputs ``outs``:
        R^start of each target (Eqs. 2, 5), seeded with the sharing denominator of
        ``start_bias`` (Eq. 18), carried to the input ``x`` (``None``: not that far) and
        ``layers`` (Eqs. 20–21); ``retain`` keeps the graph for later passes."""
        names = [*(["input"] if x is not None else []), *layers]
        with torch.enable_grad():
            t = outs[start]
            r_start = torch.stack([self._start_relevance(t, logits, tg) for tg in targets])
            denom = sharing_denominator(t, start_bias, self.eps)
            inputs = [*([x] if x is not None else []), *(outs[n] for n in layers)]
            seeds = seed(t, r_start, denom)  # (K, *t.shape)
            parts = [self._backward(t, inputs, seeds[i:i + chunk],
                                    retain or i + chunk < len(seeds))
                     for i in range(0, len(seeds), chunk) if inputs]
        result = {n: torch.cat([p[j] for p in parts]) for j, n in enumerate(names)}
        result[start] = self._grid_map(r_start, t)
        return result

    def _backward(self, t: torch.Tensor, inputs: list[torch.Tensor], seeds: torch.Tensor,
                  retain: bool) -> list[torch.Tensor]:
        """One (vmapped, for several seeds) SRD backward pass → (k, B, h, w) per input."""
        many = len(seeds) > 1
        grads = torch.autograd.grad(t, inputs, seeds if many else seeds[0], allow_unused=True,
                                    is_grads_batched=many, retain_graph=retain or self.create_graph,
                                    create_graph=self.create_graph)
        out = []
        for v, g in zip(inputs, grads):
            g = torch.zeros_like(v) if g is None else g
            out.append(self._grid_map(position_relevance(v, g if many else g[None]), v))
        return out

    def _grid_map(self, r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(K, B, 1, h, w) or (K, B, T, 1) per-position relevance → (K, B, h, w) map."""
        if like.dim() == 4:
            r = r[:, :, 0]
        else:
            grid = to_pfvs(like, self.model.num_prefix_tokens, self.model.patch_grid).grid
            r = r[:, :, -grid[0] * grid[1]:, 0].reshape(*r.shape[:2], *grid)
        return r if self.create_graph else r.detach()

    def _frozen_constants(self, x: torch.Tensor, start: str) -> list[torch.Tensor]:
        """Attention weights and LayerNorm σ of this forward pass, up to ``start`` (ViT)."""
        mode = FrozenMode()
        with torch.no_grad(), mode:
            forward_until(self.model.net, x, self.model.module(start), lambda out: None)
        return mode.constants

    def _start_relevance(self, t: torch.Tensor, logits: torch.Tensor | None, target: object
                         ) -> torch.Tensor:
        """Relevance R^L at the start layer, shaped like ``t`` with channels summed (keepdim):
        gradient × input of a PFV-level target's scalar (Eq. 2), else μ(L→O) (Eq. 5)."""
        if target_layer(target) is not None:
            grad = start_gradient(target, t, self.model.num_prefix_tokens, self.model.patch_grid)
            return position_relevance(t.detach(), grad)
        pf = to_pfvs(t, self.model.num_prefix_tokens, self.model.patch_grid)
        r = self._final_ratios(pf, t, logits, target)
        if t.dim() == 4:
            return r.reshape(t.shape[0], 1, *t.shape[2:])
        return torch.cat([torch.zeros_like(t[:, :t.shape[1] - r.shape[1], :1]), r[..., None]], 1)

    def _final_ratios(self, pf, t: torch.Tensor, logits: torch.Tensor, target: object
                      ) -> torch.Tensor:
        """μ(L→O) per PFV (B, N): Eqs. 5–6 and the Table IV variants."""
        if self.final == "ones":
            self.score(logits, target)  # validates the target
            return torch.ones(pf.vectors.shape[:2], device=t.device, dtype=t.dtype)
        score = self.score(logits, target)
        grads = [torch.autograd.grad(s.sum(), t, retain_graph=True)[0]
                 for s in ((score, logits.mean(1)) if self.final != "raw" else (score,))]
        a = pf.vectors.detach()
        phis = []
        for g in grads:
            alpha = to_pfvs(g, self.model.num_prefix_tokens, self.model.patch_grid).vectors.mean(1)
            phis.append((a * alpha[:, None]).sum(-1))  # Φ_i^c = Σ_k α_k^c A_i^k (Eq. 6)
        if self.final == "raw":
            return phis[0]
        centred = phis[0] - phis[1]  # mean over classes is linear in α (Eq. 5)
        return centred.clamp_min(0) if self.final == "clamped-mean" else centred

    def _forward(self, x: torch.Tensor, start: str, layers: Sequence[str],
                 biases: list[torch.Tensor] | None, need_logits: bool,
                 constants: list[torch.Tensor] | None):
        """Forward with SRD nonlinearities up to ``start``; returns logits (if needed: the head
        runs untouched) and the outputs of ``start`` and ``layers``."""
        outs: dict[str, torch.Tensor] = {}
        calls = iter(biases or [])

        def through(v: torch.Tensor, act: Callable) -> torch.Tensor:
            b = next(calls) if biases else None
            return _ShareThrough.apply(v, act, sharing_denominator(v, b, self.eps))

        mode = NonlinearityMode(through)
        frozen = FrozenMode(constants) if constants is not None else None

        def record(name: str):
            def hook(_m, _i, out):
                outs.setdefault(name, out)
            return hook

        def at_start(out: torch.Tensor) -> None:
            outs.setdefault(start, out)
            mode.active = False
            if frozen is not None:
                frozen.active = False

        handles = [self.model.module(n).register_forward_hook(record(n)) for n in layers]
        try:
            with mode, frozen or nullcontext():
                if not need_logits:
                    forward_until(self.model.net, x, self.model.module(start), at_start)
                    return None, outs
                handles.append(self.model.module(start).register_forward_hook(
                    lambda _m, _i, out: at_start(out)))
                return self.model.net(x), outs
        finally:
            for h in handles:
                h.remove()

    def _biases(self, x: torch.Tensor, start: str, constants: list[torch.Tensor] | None = None,
                layers: Sequence[str] = ()
                ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The bias part b of every pre-activation (in call order), then of ``start``'s output;
        and of the output of each of ``layers`` (the start denominators of their targets).

        These are the b_j of Eq. 17 (not ``v − b``): :func:`sharing_denominator` forms
        ``⟨v − b, v⟩`` from them. The bias part of an affine segment is its value when all its
        sources are zero, so one forward pass with a zero input and every nonlinearity output
        set to zero gives all of them at once (Eq. 17 with v_i = 0). It does not depend on the
        image, so it is cached per start layer, layers and input size. (Exact for max pooling
        fed by nonlinearity outputs or by per-channel constants, the layouts of common CNNs.)
        For a ViT the frozen attention and σ make the biases image-specific: they are replayed
        and nothing is cached.
        """
        if constants is not None:
            return self._zero_source_pass(torch.zeros_like(x), start, constants, layers)
        key = (start, tuple(layers), tuple(x.shape[1:]), x.device, x.dtype,
               sum(p._version for p in self.model.net.parameters()))
        if key not in self._bias_cache:
            if len(self._bias_cache) >= BIAS_CACHE_SIZE:   # e.g. weights changed: start anew
                self._bias_cache.clear()
            self._bias_cache[key] = self._zero_source_pass(torch.zeros_like(x[:1]), start,
                                                           layers=layers)
        return self._bias_cache[key]

    def _zero_source_pass(self, zeros: torch.Tensor, start: str,
                          constants: list[torch.Tensor] | None = None, layers: Sequence[str] = ()
                          ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Pre-activations (then ``start``'s output), and the outputs of ``layers``, with every
        source PFV set to zero."""
        biases: list[torch.Tensor] = []

        def zero_out(v: torch.Tensor, act: Callable) -> torch.Tensor:
            biases.append(v)
            return torch.zeros_like(act(v))

        frozen = FrozenMode(constants) if constants is not None else nullcontext()
        modules = {n: self.model.module(n) for n in layers}
        with torch.no_grad(), NonlinearityMode(zero_out), frozen, \
                record_outputs(modules, copy=True) as outs:
            forward_until(self.model.net, zeros, self.model.module(start), biases.append)
        return biases, outs


class SRDPass:
    """One SRD forward pass of a batch, kept (its autograd graph retained) for many backward
    passes: see :meth:`SRD.forward_pass`.

    Attributes
    ----------
    logits : (B, classes) output of the pass (the head runs untouched).
    outputs : the outputs of the pass's layers and of its start layer L.
    """

    def __init__(self, srd: SRD, x: torch.Tensor, logits: torch.Tensor,
                 outputs: dict[str, torch.Tensor], start: str, layers: list[str],
                 biases: dict[str, torch.Tensor]) -> None:
        self._srd, self._x, self._start, self._layers = srd, x, start, layers
        self.logits, self.outputs, self._biases = logits, outputs, biases

    def relevance(self, target: object = None, input_map: bool = True
                  ) -> dict[str, torch.Tensor]:
        """As :meth:`SRD.relevance` of a class ``target`` (``None``: the top class) with the
        pass's layers: ``"input"`` (B, H, W), L and each layer (B, h, w); without
        ``input_map`` the backward pass stops at the lowest layer (no ``"input"``)."""
        if target_layer(target) is not None:
            raise IerfError("SRDPass.relevance explains a class; give PFV-level targets to "
                            "ierfs()")
        x = self._x if input_map else None
        maps = self._srd._from_pass(x, self.logits, self.outputs, self._start, self._layers,
                                    [target], self._biases.get(self._start), chunk=1,
                                    retain=True)
        return {k: v[0] for k, v in maps.items()}

    def ierfs(self, targets: Sequence[LayerTarget], internal_batch_size: int = 16
              ) -> torch.Tensor:
        """As :meth:`SRD.ierfs`: (K, B, H, W) iERFs of PFV-level targets of one of the pass's
        layers (Eq. 2), by batched backward passes from that layer."""
        layer = recorded_layer(targets, list(self.outputs), internal_batch_size)
        return self._srd._from_pass(self._x, None, self.outputs, layer, [], list(targets),
                                    self._biases.get(layer), internal_batch_size,
                                    retain=True)["input"]


class SRDHigh(SRD):
    """SRD stopped at the stride-8 layer (e.g. 28×28 ``layer2`` of ResNet50), upsampled."""

    name = "srd-high"
    resolution = "high"


class SRDLow(SRD):
    """μ(L→O) at the encoder output (e.g. 7×7), upsampled: Eq. 5 alone."""

    name = "srd-low"
    resolution = "low"
