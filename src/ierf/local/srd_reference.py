"""Slow, explicit SRD: every partial contribution v̂(i→j) computed (small inputs only).

The test oracle of :mod:`ierf.local.srd`. For each source PFV layer (the input and every
nonlinearity output before the start layer) and each of its positions i, one forward-mode
pass carries ``v_i`` alone (all other positions, layers and biases zero) to every sink (every
pre-activation and the start layer): the tangents there are v̂(i→j) of Eq. 17. The sharing
ratios μ(i→j) (Eq. 18) are then explicit matrices, with three bias rules:
``"absorb"`` (Eq. 18 as written), ``"proportional"`` (bias share handed back in proportion
to μ; the fast path's default) and ``"norm"`` (bias split in proportion to ‖v̂(i→j)‖, the
paper's code). Relevance is propagated backward (Eq. 28) or iERFs composed forward (Eq. 2).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from ierf.local.frozen import FrozenMode
from ierf.local.nonlinearity import NonlinearityMode
from ierf.models.hooks import forward_until


@dataclass
class SharingRatios:
    """Explicit sharing ratios of one network on one batch.

    ``mu[s][k]`` is (B, N_s, N_k): μ from position i of source s (0 = input, m = output of
    the m-th nonlinearity) to position j of sink k (k = m: input of nonlinearity m, k = K + 1:
    the start layer). ``grids[s]`` / ``sink_grids[k]`` are the spatial grids.
    """

    mu: dict[int, dict[int, torch.Tensor]]
    grids: list[tuple[int, int]]
    sink_grids: dict[int, tuple[int, int]]

    @property
    def start(self) -> int:
        return max(self.sink_grids)

    def backward(self, r_start: torch.Tensor) -> torch.Tensor:
        """Eq. 28 from relevance (B, N_L) at the start layer → input relevance (B, H·W)."""
        relevance = {self.start: r_start}
        for s in sorted(self.mu, reverse=True):
            r = sum(self.mu[s][k] @ relevance[k][..., None] for k in self.mu[s])[..., 0]
            relevance[s] = r  # passthrough: input of nonlinearity s has the same relevance
        return relevance[0]

    def forward(self, r_start: torch.Tensor) -> torch.Tensor:
        """Eq. 2 / 23–26: compose iERFs forward, then Σ_i R_i iERF(v_i^L) → (B, H·W)."""
        b, n0 = r_start.shape[0], self.grids[0][0] * self.grids[0][1]
        ierf = {0: torch.eye(n0).expand(b, n0, n0)}
        for k in sorted(self.sink_grids):
            sink = sum(self.mu[s][k].transpose(1, 2) @ ierf[s] for s in self.mu if k in self.mu[s])
            ierf[k] = sink  # the output of nonlinearity k inherits its input's iERFs
        return (r_start[:, None] @ ierf[self.start])[:, 0]


def sharing_ratios(net: nn.Module, x: torch.Tensor, start: nn.Module, bias: str = "proportional",
                   eps: float = 0.05, frozen: bool = False) -> SharingRatios:
    """Compute every μ(i→j) of ``net`` on ``x`` up to the output of module ``start``.

    ``frozen``: hold attention weights and LayerNorm σ at their forward values (ViTs, see
    :mod:`ierf.local.frozen`). Token tensors (B, T, C) have T positions, prefix included.
    """
    sinks, sources, constants = _record(net, x, start, frozen)
    contributions: dict[int, dict[int, torch.Tensor]] = {}
    for s, src in enumerate(sources):
        n = _layout(src).shape[2]
        eye = torch.eye(n)
        mask = (eye.reshape(n, 1, *src.shape[2:]) if src.dim() == 4 else eye[:, :, None])
        mask = mask.repeat(x.shape[0], *[1] * (mask.dim() - 1))
        replay = None if constants is None else [c.repeat_interleave(n, 0) for c in constants]
        tangents = _propagate(net, x.repeat_interleave(n, 0), start, s, mask, replay)
        contributions[s] = {k: _layout(t).reshape(x.shape[0], n, _layout(t).shape[1], -1)
                            for k, t in tangents.items() if k >= s}
    mu: dict[int, dict[int, torch.Tensor]] = {s: {} for s in contributions}
    for k, v in enumerate(sinks):
        v = _layout(v)  # (B, C, N_k)
        feeds = {s: c[k] for s, c in contributions.items() if k in c and s <= k}
        dots = {s: (c * v[:, None]).sum(2) for s, c in feeds.items()}  # (B, N_s, N_k)
        norm2 = (v * v).sum(1)[:, None]
        explained = sum(d.sum(1, keepdim=True) for d in dots.values())
        if bias == "absorb":
            denom = {s: norm2 for s in dots}
            extra = {s: 0 for s in dots}
        elif bias == "proportional":
            d = torch.where(explained > eps * norm2, explained, norm2)
            denom, extra = {s: d for s in dots}, {s: 0 for s in dots}
        elif bias == "norm":
            b_dot = norm2 - explained  # ⟨b_j, v_j⟩ with b_j = v_j − Σ_i v̂(i→j)
            norms = {s: c.norm(dim=2) for s, c in feeds.items()}
            total = sum(nm.sum(1, keepdim=True) for nm in norms.values()).clamp_min(1e-30)
            denom = {s: norm2 for s in dots}
            extra = {s: norms[s] / total * b_dot for s in dots}
        else:
            raise ValueError(f"unknown bias rule {bias!r}")
        safe = norm2 > 0
        for s, dot in dots.items():
            mu[s][k] = torch.where(safe, (dot + extra[s]) / torch.where(safe, denom[s], 1), 0)
    # sink k (k < K+1) is the input of nonlinearity k+1, whose output is source k+1
    grids = [tuple(t.shape[2:]) if t.dim() == 4 else (t.shape[1],) for t in sources]
    sink_grids = {k + 1: tuple(v.shape[2:]) if v.dim() == 4 else (v.shape[1],)
                  for k, v in enumerate(sinks)}
    mu = {s: {k + 1: m for k, m in d.items()} for s, d in mu.items()}
    return SharingRatios(mu, grids, sink_grids)


def _layout(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or (B, T, C) → (B, C, positions)."""
    return t.flatten(2) if t.dim() == 4 else t.transpose(1, 2)


def _record(net: nn.Module, x: torch.Tensor, start: nn.Module, frozen: bool):
    """Plain forward: pre-activations (sinks), then the start output; sources: input, outputs;
    and the frozen constants (or ``None``)."""
    sinks: list[torch.Tensor] = []
    sources: list[torch.Tensor] = [x]

    def through(v: torch.Tensor, act: Callable) -> torch.Tensor:
        y = act(v)
        sinks.append(v)
        sources.append(y)
        return y

    mode = FrozenMode() if frozen else nullcontext()
    with torch.no_grad(), NonlinearityMode(through), mode:
        forward_until(net, x, start, sinks.append)
    return sinks, sources[:len(sinks)], mode.constants if frozen else None


def _propagate(net: nn.Module, x: torch.Tensor, start: nn.Module, source: int,
               mask: torch.Tensor, constants: list[torch.Tensor] | None
               ) -> dict[int, torch.Tensor]:
    """Forward-mode pass carrying only ``source``'s masked PFVs; tangents at every sink."""
    tangents: dict[int, torch.Tensor] = {}
    calls = [0]

    def tangent_of(v: torch.Tensor) -> torch.Tensor:
        primal, t = fwAD.unpack_dual(v)
        return torch.zeros_like(primal) if t is None else t

    def keep(k: int, t: torch.Tensor) -> None:
        if t.abs().amax() > 0:  # only sinks this source feeds
            tangents[k] = t

    def through(v: torch.Tensor, act: Callable) -> torch.Tensor:
        keep(calls[0], tangent_of(v))
        calls[0] += 1
        y = act(fwAD.unpack_dual(v)[0])
        return fwAD.make_dual(y, y * mask if calls[0] == source else torch.zeros_like(y))

    def at_start(out: torch.Tensor) -> None:
        keep(calls[0], tangent_of(out))

    frozen = FrozenMode(constants) if constants is not None else nullcontext()
    with torch.no_grad(), fwAD.dual_level(), NonlinearityMode(through), frozen:
        dual = fwAD.make_dual(x, x * mask if source == 0 else torch.zeros_like(x))
        forward_until(net, dual, start, at_start)
    return tangents
