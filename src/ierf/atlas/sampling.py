"""Relevance-weighted PFV sampling and the iERFs of the sampled PFVs (IERF Sec. III-D).

Rather than sampling positions uniformly (which over-represents background such as sky or
grass), each image contributes PFVs drawn with probability proportional to their
contribution to the predicted logit: the SRD relevance ``R_p`` of position ``p`` at the layer
(Eqs. 20–22, the conserved share of the logit carried by that PFV). The paper draws one PFV
per image per layer; ``samples_per_image`` draws several without replacement. Each sample is
stored with its iERF (Eq. 10: the input relevance of ``PFVTarget(layer, p)``, Eqs. 1–2).

Contributions ≤ 0 get probability 0. An image with fewer positive positions than
``samples_per_image`` gives only those; an image whose contributions are all ≤ 0 at a layer
(nothing there drives the prediction) gives no sample for that layer.

Draws use one generator per (seed, image id, layer), so the sampled positions do not depend
on the batch, the rank, resuming, or the other images of the set.

A batch costs one forward pass: an engine with ``forward_pass`` (SRD, AttnLRP) runs it once
through the whole network and every backward pass reuses its autograd graph — the relevance
of the predicted class (whose pass also gives the PFVs and that class) and the iERFs of each
layer's samples, which would otherwise each need their own forward pass to their layer; the
relevance pass stops at the lowest sampled layer (no input map). An engine with only
``relevance`` and ``ierfs`` costs one forward pass more per layer.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ierf.errors import IerfError
from ierf.models.hooks import forward_hooks
from ierf.models.model import Model
from ierf.models.pfv import to_pfvs
from ierf.targets import PFVTarget


class IerfEngine(Protocol):
    """What the atlas needs from an attribution method (SRD; AttnLRP for ViTs); one that also
    has ``forward_pass(x, layers) -> ForwardPass`` shares its forward pass over them."""

    name: str

    def relevance(self, x: torch.Tensor, target: object = None,
                  layers: Sequence[str] = ()) -> dict[str, torch.Tensor]: ...

    def ierfs(self, x: torch.Tensor, targets: Sequence[PFVTarget],
              internal_batch_size: int = 16) -> torch.Tensor: ...


class ForwardPass(Protocol):
    """One forward pass of a batch kept for its backward passes (``SRD.forward_pass``,
    ``AttnLRP.forward_pass``): the top class's relevance at the pass's layers, and the
    iERFs of targets at any of them."""

    def relevance(self, target: object = None, input_map: bool = True
                  ) -> dict[str, torch.Tensor]: ...

    def ierfs(self, targets: Sequence[PFVTarget], internal_batch_size: int = 16
              ) -> torch.Tensor: ...


class SeparatePasses:
    """The :class:`ForwardPass` of an engine without ``forward_pass``: its ``relevance`` of the
    top class at once, and its ``ierfs`` (a forward pass of their own) when asked."""

    def __init__(self, engine: IerfEngine, x: torch.Tensor, layers: Sequence[str]) -> None:
        self._engine, self._x = engine, x
        self._relevance = engine.relevance(x, None, layers=list(layers))

    def relevance(self, target: object = None, input_map: bool = True
                  ) -> dict[str, torch.Tensor]:
        if target is not None:
            raise IerfError("SeparatePasses holds the relevance of the top class only")
        return self._relevance

    def ierfs(self, targets: Sequence[PFVTarget], internal_batch_size: int = 16
              ) -> torch.Tensor:
        return self._engine.ierfs(self._x, targets, internal_batch_size=internal_batch_size)


def image_seed(seed: int, image: str, layer: str) -> int:
    """A 64-bit generator seed for one (seed, image id, layer): independent streams per image,
    whatever the other images of the set and the image's place among them."""
    key = int.from_bytes(hashlib.sha256(image.encode()).digest()[:16], "little")
    return int(np.random.SeedSequence([seed, key, zlib.crc32(layer.encode())])
               .generate_state(1, np.uint64)[0])


def sample_positions(contribution: torch.Tensor, k: int, seeds: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw up to ``k`` positions per image, without replacement, with P(p) ∝ max(R_p, 0).

    Parameters
    ----------
    contribution : (B, N) relevance of each position (any device).
    k : samples per image.
    seeds : one generator seed per image (see :func:`image_seed`).

    Returns
    -------
    positions : (B, k) int64 on the CPU, ``-1`` where an image has fewer than ``k`` positive
        positions.
    counts : (B,) int64, samples drawn per image (``min(k, #{p: R_p > 0})``).
    """
    if k < 1:
        raise IerfError(f"samples per image must be ≥ 1, got {k}")
    w = contribution.detach().to("cpu", torch.float64).clamp_min(0)
    w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
    counts = (w > 0).sum(1).clamp_max(k)
    positions = torch.full((len(w), k), -1, dtype=torch.long)
    for b, (row, m, s) in enumerate(zip(w, counts.tolist(), seeds)):
        if m:
            g = torch.Generator().manual_seed(s)
            positions[b, :m] = torch.multinomial(row, m, replacement=False, generator=g)
    return positions, counts


def area_downsample(maps: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., H, W) maps → (..., H/f, W/f) by area pooling (mean over f×f blocks).

    Multiply by ``factor**2`` to recover block sums (e.g. the iERF total of Eq. 2).
    """
    if factor == 1:
        return maps
    h, w = maps.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise IerfError(f"iERF downsample factor {factor} must be ≥ 1 and divide the input "
                        f"size {h}×{w}")
    lead = maps.shape[:-2]
    return F.avg_pool2d(maps.reshape(-1, 1, h, w), factor).reshape(*lead, h // factor, w // factor)


def atlas_samples(model: Model, engine: IerfEngine, x: torch.Tensor, images: Sequence[int],
                  layers: Sequence[str], samples_per_image: int = 1, seed: int = 0,
                  ierf_downsample: int = 1, internal_batch_size: int = 16,
                  ids: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """PFV–iERF samples of one batch of images, per layer.

    Parameters
    ----------
    model, engine : the model and the method giving layer relevance and iERFs (SRD).
    x : (B, 3, H, W) model-ready inputs; ``images`` their (B,) image numbers in the atlas.
    ids : the images' ids, which seed their draws (default: the numbers as text, the ids of
        benchmark scenes).
    layers : layers to sample, each at or below the engine's start layer L.

    Returns
    -------
    ``{layer: {"pfv" (n, C), "ierf" (n, H/f, W/f), "image", "sample", "position", "row",
    "col", "predicted" (n,) int64, "contribution" (n,) float32}}`` on the CPU, samples ordered
    by image, then sample number.
    """
    ids = [str(i) for i in images] if ids is None else list(ids)
    run, predicted, pfvs, relevance = engine_pass(model, engine, x, layers)
    image_t = torch.as_tensor(list(images), dtype=torch.long)
    out = {}
    for layer in layers:
        per_position = position_map(model, relevance[layer], pfvs[layer])
        contribution = per_position.flatten(1)  # (B, N), row-major like the PFVs
        grid_w = per_position.shape[-1]
        positions, counts = sample_positions(
            contribution, samples_per_image, [image_seed(seed, i, layer) for i in ids])
        valid = positions >= 0
        b_idx, s_idx = valid.nonzero(as_tuple=True)
        pos = positions[b_idx, s_idx]
        ierf = _ierfs(run, x, layer, positions, counts, internal_batch_size)
        dev_b, dev_pos = b_idx.to(x.device), pos.to(x.device)
        out[layer] = {
            "pfv": pfvs[layer][dev_b, dev_pos].float().cpu(),
            "ierf": area_downsample(ierf[s_idx.to(x.device), dev_b], ierf_downsample).float().cpu(),
            "image": image_t[b_idx],
            "sample": s_idx,
            "position": pos,
            "row": pos // grid_w,
            "col": pos % grid_w,
            "predicted": predicted.cpu()[b_idx],
            "contribution": contribution[dev_b, dev_pos].float().cpu(),
        }
    return out


def engine_pass(model: Model, engine: IerfEngine, x: torch.Tensor, layers: Sequence[str]
                ) -> tuple[ForwardPass, torch.Tensor, dict[str, torch.Tensor],
                           dict[str, torch.Tensor]]:
    """The engine's forward pass of ``x`` (kept for the iERFs), and from it the relevance of
    each image's top class at ``layers``, that class and the PFVs.

    The predicted class (B,) and the PFVs (B, N, C) of ``layers`` are read off the engine's own
    forward pass (its last complete pass of the network); an engine that runs none costs one
    plain forward more.

    Returns
    -------
    the pass, predicted, ``{layer: PFVs}``, ``{layer: relevance}`` (as the engine returns it).
    """
    with complete_pass(model.net, {n: model.module(n) for n in layers}) as passes:
        run = (engine.forward_pass(x, list(layers)) if hasattr(engine, "forward_pass")
               else SeparatePasses(engine, x, layers))
        relevance = run.relevance(input_map=False)  # the layers are all the atlas needs
    if passes:
        logits, outputs = passes[-1]
        pfvs = {n: to_pfvs(outputs[n], model.num_prefix_tokens, model.patch_grid).vectors.detach()
                for n in layers}
    else:
        logits, traced = model.forward_pfvs(x, layers)
        pfvs = {n: p.vectors for n, p in traced.items()}
    return run, logits.detach().argmax(1), pfvs, relevance


@contextmanager
def complete_pass(net: nn.Module, modules: Mapping[str, nn.Module]
                  ) -> Iterator[list[tuple[torch.Tensor, dict[str, torch.Tensor]]]]:
    """Record, for each forward pass of ``net`` that completes inside the block, its output
    and the first output of each named module in that pass (passes stopped early, such as
    :func:`~ierf.models.hooks.forward_until`'s, are dropped)."""
    passes: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
    current: dict[str, torch.Tensor] = {}

    def begin(_m: nn.Module, _i: object) -> None:
        current.clear()

    def record(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            if name not in current:   # a copy: later in-place ops must not change the PFVs
                current[name] = out.detach().clone()
        return hook

    def end(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        passes.append((out, dict(current)))

    with forward_hooks([(net, end), *((m, record(n)) for n, m in modules.items())],
                       pre_hooks=[(net, begin)]):
        yield passes


def position_map(model: Model, relevance: torch.Tensor, pfvs: torch.Tensor) -> torch.Tensor:
    """(B, h, w) relevance per position of a layer with PFVs ``pfvs`` (B, N, C): SRD's maps
    as they are; channel-wise relevance (AttnLRP: (B, C, h, w) maps or (B, T, C) tokens)
    summed over channels, prefix tokens dropped."""
    n, c = pfvs.shape[1:]
    if relevance.dim() == 3 and relevance.shape[1] >= n and relevance.shape[2] == c > 1:
        pf = to_pfvs(relevance, model.num_prefix_tokens, model.patch_grid)
        return pf.vectors.sum(-1).unflatten(1, pf.grid)
    return relevance.sum(1) if relevance.dim() == 4 else relevance


def _ierfs(run: ForwardPass, x: torch.Tensor, layer: str, positions: torch.Tensor,
           counts: torch.Tensor, internal_batch_size: int) -> torch.Tensor:
    """(k', B, H, W) iERFs of the sampled PFVs, one target per sample number j < k'.

    Sample j of every image is one batched target (images without a j-th sample use
    position 0, whose map is dropped), so k' backward passes of ``run`` explain all B·k'
    samples.
    """
    k = int(counts.max()) if len(counts) else 0
    if k == 0:
        return x.new_zeros(0, len(x), *x.shape[-2:])
    targets = [PFVTarget(layer, positions[:, j].clamp_min(0).to(x.device)) for j in range(k)]
    return run.ierfs(targets, internal_batch_size=internal_batch_size)
