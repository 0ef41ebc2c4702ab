"""AttnLRP: relevance that conserves through a ViT, for saliency maps and token/latent iERFs.

Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024 — the attributor the unified framework adopts for ViTs (paper
Sec. III-D) and inside CAFE (Eq. 10: the iERF of an SAE latent ``z_k`` is the map
``A(p | z_k, I)`` of input patches, with AttnLRP as ``A``). The rules are in
:mod:`ierf.local.attnlrp_rules`; this module runs one forward pass with them and one
(vmapped, for many targets) backward pass, and reads the relevance ``x ⊙ ĝ_x`` off the input.

What is conserved: with zero biases (linear biases, LayerNorm β, CLS token, position
embedding) and ``attention="cp"`` the input relevance sums to the explained score exactly.
Otherwise the biases keep their shares, and the AttnLRP softmax rule keeps the Taylor
bias term of each softmax; input relevance + those = the score.

A PFV-level target seeds the backward pass at its layer with ``ĝ = ∂z/∂v`` of its scalar
(:func:`ierf.targets.start_gradient`, the same function SRD takes its start relevance from),
computed under the rules (an SAE's activation gets the identity rule, Eq. 10), so the start
relevance ``v ⊙ ĝ`` is the target's: 1 on the token of a :class:`~ierf.PFVTarget`, as in SRD.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ierf.errors import IerfError
from ierf.local.attnlrp_rules import AttnLRPMode
from ierf.local.base import Attributor, recorded_layer
from ierf.local.mha import explicit_attention
from ierf.local.patches import frozen_params
from ierf.models.hooks import forward_until
from ierf.models.model import Model
from ierf.models.pfv import to_pfvs
from ierf.targets import LayerTarget, one_layer, start_gradient, target_layer

ATTENTION_RULES = ("attnlrp", "cp")
RESOLUTIONS = ("input", "patch")
REDUCTIONS = ("sum", "norm")


class AttnLRP(Attributor):
    """Attention-aware LRP for ViTs (timm ``VisionTransformer``, torchvision ``vit_b_16``).

    Parameters
    ----------
    model : ``ierf.Model`` or ``nn.Module``.
    epsilon : ε of the ε-rule on linear layers (0: the ε → 0 limit, as lxt's efficient mode).
    attention : ``"attnlrp"`` (softmax rule of Prop. 3.1, uniform rule on ``q·kᵀ`` and ``A·v``)
        or ``"cp"`` (attention weights as constants, CP-LRP: exact conservation).
    resolution : ``"input"`` (pixel map, relevance summed over colour channels) or
        ``"patch"`` (token relevance at the patch embedding, upsampled to the input).
    reduce : how a token's channel relevance becomes one number in patch maps: ``"sum"``
        (signed, conserving) or ``"norm"`` (ℓ2 across channels, paper Sec. III-D).

    Targets: a class (index, name, ``None`` = top class) explains that logit; a PFV-level
    target (:class:`~ierf.targets.LayerTarget`: :class:`~ierf.PFVTarget`,
    :class:`~ierf.ConceptTarget`, :class:`~ierf.ScalarTarget`, :class:`~ierf.LatentTarget` or
    one of your own) explains a token, a concept direction, any scalar, or an SAE latent of
    its layer (their iERFs). PFV positions index the patch grid (row-major); a negative
    position ``-(i + 1)`` addresses prefix token ``i`` (``-1`` = CLS).
    """

    name: ClassVar[str] = "attnlrp"
    kinds: ClassVar[tuple[str, ...]] = ("vit",)

    def __init__(self, model: Model | nn.Module, epsilon: float = 0.0,
                 attention: str = "attnlrp", resolution: str = "input",
                 reduce: str = "sum") -> None:
        super().__init__(model)
        if not self.model.is_vit:
            warnings.warn(f"attnlrp's rules change attention and normalisation only: on "
                          f"{self.model.name}, which has neither, it gives grad-x-input's "
                          "numbers; for a CNN use srd or lrp-zplus", stacklevel=2)
        for value, valid, what in ((attention, ATTENTION_RULES, "attention rule"),
                                   (resolution, RESOLUTIONS, "resolution"),
                                   (reduce, REDUCTIONS, "reduction")):
            if value not in valid:
                raise IerfError(f"unknown {what} {value!r}; use one of {valid}")
        if epsilon < 0:
            raise IerfError(f"epsilon must be ≥ 0, got {epsilon}")
        self.epsilon, self.attention, self.resolution, self.reduce = \
            epsilon, attention, resolution, reduce

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        if self.resolution == "input":
            return self.relevance(x, target)["input"].sum(1)
        patches = self.patch_map(x, target)
        return F.interpolate(patches[:, None], size=x.shape[-2:], mode="nearest")[:, 0]

    def relevance(self, x: torch.Tensor, target: object = None,
                  layers: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """Channel-wise relevance ``t ⊙ ĝ_t``: ``"input"`` (B, 3, H, W) and each of ``layers``
        (shaped like that layer's output, e.g. (B, T, C) tokens)."""
        maps = self._propagate(x, [target], layers)
        return {k: v[0] for k, v in maps.items()}

    def patch_map(self, x: torch.Tensor, target: object = None, layer: str | None = None
                  ) -> torch.Tensor:
        """(B, h, w) token-level map: relevance at ``layer``'s patch tokens (default: the patch
        embedding), each token's channels reduced by ``reduce``."""
        layer = layer or self.patch_layer()
        r = self.relevance(x, target, [layer])[layer]
        pf = to_pfvs(r, self.model.num_prefix_tokens, self.model.patch_grid)
        v = pf.vectors.sum(-1) if self.reduce == "sum" else pf.vectors.norm(dim=-1)
        return v.reshape(v.shape[0], *pf.grid)

    def patch_layer(self) -> str:
        """The patch embedding: the first layer laid out on the model's patch grid."""
        grids = self.model.layer_grids()
        names = [n for n, g in grids.items() if g == self.model.patch_grid]
        if not names:
            raise IerfError(f"{self.model.name} has no layer on a patch grid; patch maps need a "
                            "ViT, or pass layer=")
        return names[0]

    def ierfs(self, x: torch.Tensor, targets: Sequence[LayerTarget],
              internal_batch_size: int = 16) -> torch.Tensor:
        """iERFs of many tokens, concept directions or SAE latents of one layer (Eq. 10):
        (K, B, H, W) input maps, colour channels summed.

        One forward pass, then batched (vmapped) backward passes over chunks of
        ``internal_batch_size`` targets (memory grows with the chunk).
        """
        if internal_batch_size < 1:
            raise IerfError(f"internal_batch_size must be ≥ 1, got {internal_batch_size}")
        one_layer(targets)
        return self._propagate(x, list(targets), (), internal_batch_size)["input"].sum(2)

    def forward_pass(self, x: torch.Tensor, layers: Sequence[str]) -> AttnLRPPass:
        """One forward pass of ``x`` under the rules through the whole network, kept for many
        backward passes: the class relevance at ``layers`` and the iERFs of targets at any of
        them, the maps of :meth:`relevance` and :meth:`ierfs` (whose passes up to a layer are
        the same ops) for one forward (the PFV–iERF atlas builds on it). The autograd graph
        lives as long as the pass."""
        x, logits, outs = self._forward(x, layers, None)
        return AttnLRPPass(self, x, logits, outs, list(layers))

    def _propagate(self, x: torch.Tensor, targets: Sequence[object], layers: Sequence[str],
                   chunk: int = 1) -> dict[str, torch.Tensor]:
        """Channel-wise relevance (K, *shape) at the input and ``layers`` for K targets."""
        start = target_layer(targets[0])
        x, out, outs = self._forward(x, layers, start)
        missing = [n for n in layers if n not in outs]
        if missing:
            raise IerfError(f"layers {missing} come after {start!r}, where the "
                            "relevance of this target starts; pick earlier layers")
        return self._from_pass(x, out, outs, targets, layers, chunk, retain=False)

    def _forward(self, x: torch.Tensor, layers: Sequence[str], start: str | None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass under the rules, to ``start``'s output (``None``: the logits):
        the input leaf, that output and the outputs of ``layers`` (and ``start``)."""
        x = self.model.check(x)
        for name in (*layers, *([start] if start is not None else [])):
            self.model.module(name)
        x = x.detach().requires_grad_(True)
        outs: dict[str, torch.Tensor] = {}

        def record(name: str):
            def hook(_m, _i, out):
                outs.setdefault(name, out)
            return hook

        handles = [self.model.module(n).register_forward_hook(record(n)) for n in layers]
        try:
            with frozen_params(self.model.net), torch.enable_grad(), explicit_attention(self.model.net), \
                    self._mode():
                if start is None:
                    return x, self.model.net(x), outs
                forward_until(self.model.net, x, self.model.module(start),
                              lambda out: outs.setdefault(start, out))
                return x, outs[start], outs
        finally:
            for h in handles:
                h.remove()

    def _mode(self) -> AttnLRPMode:
        return AttnLRPMode(self.epsilon, cp=self.attention == "cp")

    def _from_pass(self, x: torch.Tensor | None, out: torch.Tensor,
                   outs: dict[str, torch.Tensor], targets: Sequence[object],
                   layers: Sequence[str], chunk: int, retain: bool) -> dict[str, torch.Tensor]:
        """The backward half of :meth:`_propagate`: seeds at ``out`` (the logits, or the
        targets' layer output), computed under the rules, carried to the input ``x``
        (``None``: not that far) and ``layers``; ``retain`` keeps the graph for later
        passes."""
        with torch.enable_grad(), self._mode():
            if target_layer(targets[0]) is not None:
                seeds = torch.stack([start_gradient(t, out, self.model.num_prefix_tokens,
                                                    self.model.patch_grid) for t in targets])
            else:
                seeds = self._class_seed(out, targets[0])[None]
        names = [*(["input"] if x is not None else []), *layers]
        inputs = [*([x] if x is not None else []), *(outs[n] for n in layers)]
        parts = [self._backward(out, inputs, seeds[i:i + chunk], retain or i + chunk < len(seeds))
                 for i in range(0, len(seeds), chunk) if inputs]
        return {n: torch.cat([p[j] for p in parts]) for j, n in enumerate(names)}

    @staticmethod
    def _backward(out: torch.Tensor, inputs: list[torch.Tensor], seeds: torch.Tensor,
                  retain: bool) -> list[torch.Tensor]:
        """``t ⊙ ĝ_t`` for each of ``inputs``, (k, *t.shape), from k seeds at ``out``."""
        many = len(seeds) > 1
        grads = torch.autograd.grad(out, inputs, seeds if many else seeds[0], allow_unused=True,
                                    is_grads_batched=many, retain_graph=retain)
        rel = []
        for t, g in zip(inputs, grads):
            g = torch.zeros_like(t) if g is None else (g if many else g[None])
            rel.append((t.detach() * g).detach())
        return rel

    def _class_seed(self, logits: torch.Tensor, target: object) -> torch.Tensor:
        """∂score/∂logits: one-hot for a class, so the logit itself is the start relevance."""
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise IerfError(f"AttnLRP explains a (B, classes) output; this model returned "
                            f"{type(logits).__name__}")
        score = self.score(logits, target)
        return torch.autograd.grad(score.sum(), logits, retain_graph=True)[0]


class AttnLRPPass:
    """One AttnLRP forward pass of a batch, kept (its autograd graph retained) for many
    backward passes: see :meth:`AttnLRP.forward_pass`.

    Attributes
    ----------
    logits : (B, classes) output of the pass.
    outputs : the outputs of the pass's layers.
    """

    def __init__(self, lrp: AttnLRP, x: torch.Tensor, logits: torch.Tensor,
                 outputs: dict[str, torch.Tensor], layers: list[str]) -> None:
        self._lrp, self._x, self._layers = lrp, x, layers
        self.logits, self.outputs = logits, outputs

    def relevance(self, target: object = None, input_map: bool = True
                  ) -> dict[str, torch.Tensor]:
        """As :meth:`AttnLRP.relevance` of a class ``target`` (``None``: the top class) with
        the pass's layers; without ``input_map`` the backward pass stops at the lowest layer
        (no ``"input"``)."""
        if target_layer(target) is not None:
            raise IerfError("AttnLRPPass.relevance explains a class; give PFV-level targets "
                            "to ierfs()")
        x = self._x if input_map else None
        maps = self._lrp._from_pass(x, self.logits, self.outputs, [target], self._layers, 1,
                                    retain=True)
        return {k: v[0] for k, v in maps.items()}

    def ierfs(self, targets: Sequence[LayerTarget], internal_batch_size: int = 16
              ) -> torch.Tensor:
        """As :meth:`AttnLRP.ierfs`: (K, B, H, W) iERFs of targets of one of the pass's layers
        (Eq. 10), colour channels summed."""
        layer = recorded_layer(targets, list(self.outputs), internal_batch_size)
        return self._lrp._from_pass(self._x, self.outputs[layer], self.outputs, list(targets),
                                    [], internal_batch_size, retain=True)["input"].sum(2)
