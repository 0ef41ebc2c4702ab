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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ierf.errors import IerfError
from ierf.local.attnlrp_rules import AttnLRPMode
from ierf.local.base import Attributor
from ierf.local.mha import explicit_attention
from ierf.local.patches import frozen_params
from ierf.models.hooks import forward_until
from ierf.models.model import Model
from ierf.models.pfv import to_pfvs
from ierf.targets import ConceptTarget, LatentTarget, PFVTarget, ScalarTarget

PFV_TARGETS = (PFVTarget, ConceptTarget, ScalarTarget, LatentTarget)
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

    Targets: a class (index, name, ``None`` = top class) explains that logit; a
    :class:`~ierf.PFVTarget`, :class:`~ierf.ConceptTarget`, :class:`~ierf.ScalarTarget` or
    :class:`~ierf.LatentTarget` explains a token, a concept direction, any scalar, or an SAE
    latent of its layer (their iERFs). PFV positions index the patch grid (row-major);
    a negative position ``-(i + 1)`` addresses prefix token ``i`` (``-1`` = CLS).
    """

    name: ClassVar[str] = "attnlrp"

    def __init__(self, model: Model | nn.Module, epsilon: float = 0.0,
                 attention: str = "attnlrp", resolution: str = "input",
                 reduce: str = "sum") -> None:
        super().__init__(model)
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

    def ierfs(self, x: torch.Tensor,
              targets: Sequence[PFVTarget | ConceptTarget | ScalarTarget | LatentTarget],
              internal_batch_size: int = 16) -> torch.Tensor:
        """iERFs of many tokens, concept directions or SAE latents of one layer (Eq. 10):
        (K, B, H, W) input maps, colour channels summed.

        One forward pass, then batched (vmapped) backward passes over chunks of
        ``internal_batch_size`` targets (memory grows with the chunk).
        """
        if internal_batch_size < 1:
            raise IerfError(f"internal_batch_size must be ≥ 1, got {internal_batch_size}")
        if not targets or not all(isinstance(t, PFV_TARGETS) for t in targets):
            raise IerfError("ierfs() takes a non-empty list of PFVTarget, ConceptTarget, "
                            "ScalarTarget or LatentTarget")
        layer = {t.layer for t in targets}
        if len(layer) != 1:
            raise IerfError(f"ierfs() takes targets of one layer, got {sorted(layer)}")
        return self._propagate(x, list(targets), (), internal_batch_size)["input"].sum(2)

    def _propagate(self, x: torch.Tensor, targets: Sequence[object], layers: Sequence[str],
                   chunk: int = 1) -> dict[str, torch.Tensor]:
        """Channel-wise relevance (K, *shape) at the input and ``layers`` for K targets."""
        x = self.model.check(x)
        pfv = isinstance(targets[0], PFV_TARGETS)
        for name in (*layers, *([targets[0].layer] if pfv else [])):
            self.model.module(name)
        x = x.detach().requires_grad_(True)
        outs: dict[str, torch.Tensor] = {}

        def record(name: str):
            def hook(_m, _i, out):
                outs.setdefault(name, out)
            return hook

        handles = [self.model.module(n).register_forward_hook(record(n)) for n in layers]
        mode = AttnLRPMode(self.epsilon, cp=self.attention == "cp")
        try:
            with frozen_params(self.model.net), torch.enable_grad(), explicit_attention(self.model.net), \
                    mode:
                if pfv:
                    start = targets[0].layer
                    forward_until(self.model.net, x, self.model.module(start),
                                  lambda out: outs.setdefault(start, out))
                    out = outs[start]
                    seeds = torch.stack([self._pfv_seed(out, t) for t in targets])
                else:
                    out = self.model.net(x)
                    seeds = self._class_seed(out, targets[0])[None]
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in layers if n not in outs]
        if missing:
            raise IerfError(f"layers {missing} come after {targets[0].layer!r}, where the "
                            "relevance of this target starts; pick earlier layers")
        inputs = [x, *(outs[n] for n in layers)]
        parts = [self._backward(out, inputs, seeds[i:i + chunk], i + chunk < len(seeds))
                 for i in range(0, len(seeds), chunk)]
        return {n: torch.cat([p[j] for p in parts]) for j, n in enumerate(("input", *layers))}

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

    def _pfv_seed(self, out: torch.Tensor, target: object) -> torch.Tensor:
        """ĝ at ``out`` for a PFV-level target: its scalar's gradient under the AttnLRP rules.

        PFVTarget: ``v_p / ‖v_p‖²`` at that token, so the token's relevance is 1 (as SRD);
        ConceptTarget: ``u`` (relevance ⟨u, v_p⟩); ScalarTarget and LatentTarget: the
        rule-modified gradient of ``fn`` / the SAE latent (the SAE's activation gets the
        identity rule: relevance flows back from ``z_k`` through the encoder, Eq. 10).
        """
        leaf = out.detach().requires_grad_(True)
        pf = to_pfvs(leaf, self.model.num_prefix_tokens, self.model.patch_grid)
        if isinstance(target, PFVTarget):
            v = select_tokens(pf, target.position, target.layer)
            norm2 = (v * v).sum(-1, keepdim=True)
            scalar = (v * (v / torch.where(norm2 == 0, 1.0, norm2)).detach()).sum()
        elif isinstance(target, ConceptTarget):
            u = torch.as_tensor(target.vector, device=leaf.device, dtype=leaf.dtype)
            if u.shape != (pf.vectors.shape[-1],):
                raise IerfError(f"concept vector of shape {tuple(u.shape)} does not match the "
                                f"{pf.vectors.shape[-1]} channels of layer {target.layer!r}")
            v = pf.vectors if target.position is None else \
                select_tokens(pf, target.position, target.layer)
            scalar = (v @ u).sum()
        elif isinstance(target, LatentTarget):
            v = pf.vectors if target.position is None else \
                select_tokens(pf, target.position, target.layer)[:, None]
            sae = target.sae if isinstance(target.sae, nn.Module) else nn.Module()
            with frozen_params(sae):
                scalar = target.activations(v).sum()
        else:
            scores = target.fn(pf.vectors)
            if scores.shape != (leaf.shape[0],):
                raise IerfError(f"a ScalarTarget's fn must return one score per image, shape "
                                f"({leaf.shape[0]},); got {tuple(scores.shape)}")
            scalar = scores.sum()
        (seed,) = torch.autograd.grad(scalar, leaf, allow_unused=True)
        return torch.zeros_like(leaf) if seed is None else seed


def select_tokens(pf, position: int | Sequence[int] | torch.Tensor, layer: str) -> torch.Tensor:
    """(B, C) token of each image: patch ``position`` (row-major), or prefix token ``i`` for
    ``position = -(i + 1)``."""
    b, n, _ = pf.vectors.shape
    prefix = 0 if pf.prefix is None else pf.prefix.shape[1]
    pos = torch.as_tensor(position, device=pf.vectors.device, dtype=torch.long).reshape(-1)
    pos = pos.expand(b) if pos.numel() == 1 else pos
    if pos.numel() != b or (pos >= n).any() or (pos < -prefix).any():
        raise IerfError(f"token positions {pos.tolist()} do not fit a batch of {b} images with "
                        f"{n} patch tokens and {prefix} prefix tokens in layer {layer!r} "
                        f"(patch tokens 0..{n - 1}, prefix tokens -1..-{prefix})")
    tokens = pf.vectors if pf.prefix is None else torch.cat([pf.prefix.flip(1), pf.vectors], 1)
    return tokens[torch.arange(b, device=pos.device), pos + prefix]
