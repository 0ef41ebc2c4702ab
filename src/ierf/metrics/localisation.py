"""Localisation: does the attribution fall on the object? (paper Appendix VII-G, Eqs. 31–32).

No model call: these metrics compare the map with a ground-truth mask. Maps are
normalised by their max-abs value first (Quantus' default, the paper's setting); the
scores do not depend on that positive scaling.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ierf.errors import IerfError
from ierf.metrics.base import Explain, Metric, normalise_map
from ierf.models.model import Model


def dilate(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """(B, H, W) bool mask grown by every pixel within Euclidean distance ``radius``."""
    r = math.floor(radius)
    if r <= 0:
        return mask
    t = torch.arange(-r, r + 1, device=mask.device, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).float()[None, None]
    grown = F.conv2d(mask[:, None].float(), disk, padding=r)
    return grown[:, 0] > 0.5


class PointingGame(Metric):
    """Pointing Game (Zhang et al. 2018), Eq. 31: a hit if the map's maximum lies on the object.

    The mask is grown by ``tolerance`` pixels (Euclidean disk) "to insure fair comparison
    between low-resolution and high-resolution saliency maps" (Appendix VII-G). Ties of the
    maximum count as a hit if any tied pixel is on the grown mask (as Quantus).

    Parameters
    ----------
    tolerance : pixels of tolerance around the mask (paper: 15; Quantus has none: 0).
    normalise : divide each map by its max-abs value (does not change the argmax).

    Returns 1.0 (hit) or 0.0 (miss) per image, NaN for an empty mask. Higher is better.
    """

    name: ClassVar[str] = "pointing-game"
    score_direction: ClassVar[str] = "higher"
    needs_mask: ClassVar[bool] = True

    def __init__(self, tolerance: float = 15.0, normalise: bool = True) -> None:
        if tolerance < 0:
            raise IerfError(f"tolerance must be >= 0 pixels, got {tolerance}")
        self.tolerance, self.normalise = tolerance, normalise

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        _, x, y, a, mask = self.validate(model, x, y, a, mask)
        a = normalise_map(a, self.normalise).flatten(1)
        peak = a == a.amax(1, keepdim=True)
        grown = dilate(mask, self.tolerance).flatten(1)
        hit = (peak & grown).any(1).float()
        return torch.where(mask.flatten(1).any(1), hit, torch.nan)


class AttributionLocalisation(Metric):
    """Attribution Localisation (Kohlbrenner et al. 2020), Eq. 32: μ_AL = R_in / R_tot.

    ``R_in`` is the positive relevance inside the mask, ``R_tot`` the positive relevance in
    the whole image (the paper's definition; Quantus' default takes ``|a|`` instead).

    Parameters
    ----------
    normalise : divide each map by its max-abs value (the ratio does not change).

    Returns the share in [0, 1] per image (0 for a map with no positive value, NaN for an
    empty mask). Higher is better; a uniform map scores the mask's area fraction.
    """

    name: ClassVar[str] = "attribution-localisation"
    score_direction: ClassVar[str] = "higher"
    needs_mask: ClassVar[bool] = True

    def __init__(self, normalise: bool = True) -> None:
        self.normalise = normalise

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        _, x, y, a, mask = self.validate(model, x, y, a, mask)
        return positive_share(normalise_map(a, self.normalise), mask)


def positive_share(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) share of the positive part of ``a`` that lies in ``mask`` (NaN if the mask is empty)."""
    pos = a.clamp_min(0).flatten(1)
    inside = (pos * mask.flatten(1)).sum(1)
    total = pos.sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(pos.dtype).tiny), 0.0)
    return torch.where(mask.flatten(1).any(1), share, torch.nan)


class GridPointingGame(Metric):
    """Grid pointing game of the B-cos papers (Böhle et al. 2022, 2024).

    ``n × m`` images of different classes are tiled into one input (:func:`make_grid`);
    explaining the class of one tile, the score is the share of positive attribution that
    falls into that tile. ``mask`` marks the target tile (``make_grid`` returns it).

    Parameters
    ----------
    grid : (rows, columns) of the tiling; the mask must be one of its cells.
    normalise : divide each map by its max-abs value (the share does not change).

    Returns the share in [0, 1]; a uniform map scores ``1 / (rows · columns)``. Higher is better.
    """

    name: ClassVar[str] = "grid-pointing-game"
    score_direction: ClassVar[str] = "higher"
    needs_mask: ClassVar[bool] = True

    def __init__(self, grid: tuple[int, int] = (2, 2), normalise: bool = True) -> None:
        if len(grid) != 2 or min(grid) < 1:
            raise IerfError(f"grid must be (rows, columns) >= 1, got {grid}")
        self.grid, self.normalise = tuple(grid), normalise

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        _, x, y, a, mask = self.validate(model, x, y, a, mask)
        rows, cols = self.grid
        h, w = mask.shape[1:]
        if h % rows or w % cols:
            raise IerfError(f"input {h}×{w} does not split into a {rows}×{cols} grid; "
                            "build the input with ierf.metrics.localisation.make_grid")
        cells = mask.view(-1, rows, h // rows, cols, w // cols).float().mean((2, 4))
        if not torch.all((cells == 0) | (cells == 1)) or not torch.all(cells.flatten(1).sum(1) == 1):
            raise IerfError("for the grid pointing game the mask must cover exactly one grid "
                            "cell (the target tile); build it with make_grid")
        return positive_share(normalise_map(a, self.normalise), mask)


def make_grid(images: torch.Tensor, grid: tuple[int, int] = (2, 2)
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile groups of ``rows · cols`` images into grid inputs and return the tile masks.

    Parameters
    ----------
    images : (G · rows · cols, C, h, w), consecutive groups of ``rows · cols`` images,
        row-major inside a group.

    Returns
    -------
    grids : (G, C, rows · h, cols · w) tiled inputs.
    masks : (G, rows · cols, rows · h, cols · w) bool, ``masks[g, k]`` marks tile ``k``.
    """
    rows, cols = grid
    n, c, h, w = images.shape
    if n % (rows * cols):
        raise IerfError(f"need a multiple of {rows * cols} images for a {rows}×{cols} grid, got {n}")
    g = n // (rows * cols)
    grids = images.view(g, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(
        g, c, rows * h, cols * w)
    tiles = torch.eye(rows * cols, dtype=torch.bool, device=images.device).view(-1, rows, 1, cols, 1)
    masks = tiles.expand(-1, rows, h, cols, w).reshape(rows * cols, rows * h, cols * w)
    return grids, masks.expand(g, -1, -1, -1)
