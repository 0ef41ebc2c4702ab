"""The CAFE insertion test (IERF Sec. V-C1, Fig. 7): how fast ``z_k(I)`` comes back as patches
are put onto a blank canvas in descending order of importance.

The image is cut into the model's patches (a ViT's patch grid). Each ranking orders them,
and canvas ``s`` holds the first ``s`` of them over the blank:
``c_s = b + M_s ⊙ (I − b)``. The curve is ``z_k(c_s) / z_k(I)`` for ``s = 0 … N`` (``steps + 1``
points evenly spaced in the fraction inserted), so it ends at 1; its AUC is the trapezoid
mean over the fraction inserted. Higher = the ranking found the evidence sooner.

Rankings: a latent iERF pooled per patch (every method of :mod:`ierf.cafe.attribution`),
the activation-ranking baseline (patches by the latent's activation at their own token;
undefined for a CLS latent, which has no patch of its own), and ``random`` (chance).

The blank (``"zero"``, ``"mean"``, ``"blur"``) is a parameter because it changes what the curve
measures: see :mod:`ierf.cafe.blanks`. The attributors that need a reference input use the
same blank by default (:func:`ierf.cafe.attribution.latent_ierfs`' ``baselines``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ierf.cafe.attribution import latent_score
from ierf.cafe.blanks import blank_canvas, model_grid
from ierf.cafe.latents import LatentPairs, PairTarget, check_basis, latent_activations
from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError, unknown_name
from ierf.models.model import Model

BASELINES = ("activation", "random")


def pool_to_patches(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(P, H, W)`` pixel maps → ``(P, h·w)`` sums per patch (row-major)."""
    h, w = grid
    area = maps.shape[-2] * maps.shape[-1] / (h * w)
    return (F.adaptive_avg_pool2d(maps[:, None].float(), grid) * area).flatten(1)


def patch_scores(model: Model, basis: ConceptBasis, x: torch.Tensor, pairs: LatentPairs,
                 ranking: str | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``(P, N)`` importance of each patch for each pair.

    ``ranking``: ``(P, H, W)`` iERFs (pooled per patch), ``"activation"`` (the latent's
    activation at each patch token on ``x[pairs.image]``; NaN rows for CLS pairs) or
    ``"random"`` (seeded uniform scores).
    """
    grid = model_grid(model, basis.layer)
    n = grid[0] * grid[1]
    if isinstance(ranking, torch.Tensor):
        return pool_to_patches(ranking, grid)
    if ranking == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(len(pairs), n, generator=g).to(x.device)
    if ranking != "activation":
        raise unknown_name("ranking", ranking, BASELINES)
    if basis.tokens == "cls":
        return torch.full((len(pairs), n), float("nan"), device=x.device)
    used, column = pairs.latent.unique(return_inverse=True)
    z = latent_activations(model, basis, x, used)[:, -n:]              # (B, N, L) patches
    scores = z[pairs.image, :, column.to(z.device)]                   # (P, N)
    return torch.where(pairs.is_cls.to(z.device)[:, None], float("nan"), scores)


def insertion_ranks(scores: torch.Tensor) -> torch.Tensor:
    """``(P, N)`` rank of each patch (0: inserted first) under ``(P, N)`` scores, descending;
    NaN last, ties in patch order."""
    order = scores.nan_to_num(float("-inf")).argsort(dim=1, descending=True, stable=True)
    n = order.shape[1]
    return torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device)
                                            .expand_as(order))


def step_counts(n: int, steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(S + 1,)`` patches shown at each step: ``round(s N / S)``."""
    return torch.linspace(0, n, steps + 1, device=device).round().long()


def insertion_masks(rank: torch.Tensor, counts: torch.Tensor, grid: tuple[int, int],
                    size: tuple[int, int]) -> torch.Tensor:
    """``(R, 1, H, W)`` masks showing, in row ``r``, the patches with ``rank[r] < counts[r]``
    (``rank`` (R, N) from :func:`insertion_ranks`, ``counts`` (R,))."""
    shown = (rank < counts[:, None]).float().reshape(-1, 1, *grid)
    return F.interpolate(shown, size=size, mode="nearest")


@torch.no_grad()
def insertion_curves(model: Model, basis: ConceptBasis, x: torch.Tensor, pairs: LatentPairs,
                     scores: torch.Tensor, blank: torch.Tensor | str = "zero", steps: int = 16,
                     batch_size: int = 256) -> torch.Tensor:
    """``(P, S + 1)`` insertion curves ``z_k(c_s) / z_k(I)`` (module docstring).

    Parameters
    ----------
    x : (B, 3, H, W) images the pairs index.
    scores : (P, N) patch importance (:func:`patch_scores`); ties keep patch order.
    blank : a kind of :data:`BLANKS` or a (B, 3, H, W) tensor.
    steps : curve points after the empty canvas (``S = N``: one patch at a time).
    batch_size : canvases per forward pass (masks are built per batch: memory stays flat).
    """
    check_basis(model, basis)
    grid = model_grid(model, basis.layer)
    if scores.shape != (len(pairs), grid[0] * grid[1]):
        raise IerfError(f"expected ({len(pairs)}, {grid[0] * grid[1]}) patch scores, got "
                        f"{tuple(scores.shape)}")
    if not 1 <= steps <= scores.shape[1]:
        raise IerfError(f"steps must be in 1..{scores.shape[1]}, got {steps}")
    if isinstance(blank, str):
        blank = blank_canvas(x, blank, grid)
    rank = insertion_ranks(scores.to(x.device))
    counts = step_counts(scores.shape[1], steps, x.device)
    image, base = x[pairs.image], blank[pairs.image]
    target = pairs.target(basis, repeat=steps + 1)
    pair_of = torch.arange(len(pairs), device=x.device).repeat_interleave(steps + 1)
    count_of = counts.repeat(len(pairs))
    values, full = [], []
    for i in range(0, len(pair_of), batch_size):
        rows = slice(i, i + batch_size)
        p = pair_of[rows]
        m = insertion_masks(rank[p], count_of[rows], grid, tuple(x.shape[-2:]))
        canvas = base[p] + m * (image[p] - base[p])
        values.append(latent_score(model, _rows(target, rows))(canvas))
    for i in range(0, len(pairs), batch_size):
        rows = slice(i, i + batch_size)
        full.append(latent_score(model, _rows(pairs.target(basis), rows))(image[rows]))
    z = torch.cat(values).reshape(len(pairs), steps + 1)
    return z / torch.cat(full)[:, None]


def _rows(target: PairTarget, rows: slice) -> PairTarget:
    """The pair target restricted to ``rows`` of its (tiled) latents and positions."""
    return replace(target, latents=target.latents[rows],
                   positions=None if target.positions is None else target.positions[rows])


def auc(curves: torch.Tensor) -> torch.Tensor:
    """``(P,)`` area under ``(P, S + 1)`` curves over the fraction inserted, 0 … 1 (trapezoid)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)
