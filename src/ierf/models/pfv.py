"""Pointwise feature vectors (PFVs): a layer's output as (B, N, C) plus its spatial grid.

A PFV is the channel vector at one spatial position (CNN) or one patch token (ViT)
of a layer (paper Sec. III-A). CNN maps (B, C, H, W) flatten row-major to N = H·W;
ViT token sequences (B, P + N, C) keep their P prefix tokens (CLS, registers) apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ierf.errors import IerfError


@dataclass
class PFVs:
    """PFVs of one layer.

    Attributes
    ----------
    vectors : (B, N, C) tensor, positions in row-major order of ``grid``.
    grid : (H, W) spatial grid, H·W = N.
    prefix : (B, P, C) prefix tokens (CLS, registers) of a ViT layer, else ``None``.
    """

    vectors: torch.Tensor
    grid: tuple[int, int]
    prefix: torch.Tensor | None = None

    def as_map(self) -> torch.Tensor:
        """The PFVs as a (B, C, H, W) feature map."""
        b, _, c = self.vectors.shape
        return self.vectors.transpose(1, 2).reshape(b, c, *self.grid)


def to_pfvs(output: torch.Tensor, num_prefix_tokens: int = 0,
            grid: tuple[int, int] | None = None) -> PFVs:
    """Convert a layer output to :class:`PFVs`.

    Parameters
    ----------
    output : (B, C, H, W) feature map or (B, T, C) token sequence.
    num_prefix_tokens : prefix tokens of the model (used only for token sequences).
    grid : patch grid of the model, if known; otherwise inferred as square.
    """
    if output.dim() == 4:
        h, w = output.shape[2:]
        return PFVs(output.flatten(2).transpose(1, 2), (h, w))
    if output.dim() == 3:
        t = output.shape[1]
        for p in dict.fromkeys((num_prefix_tokens, 0)):
            g = _grid_for(t - p, grid)
            if g is not None:
                prefix = output[:, :p] if p else None
                return PFVs(output[:, p:], g, prefix)
        raise IerfError(f"cannot lay {t} tokens out on a grid (prefix tokens: {num_prefix_tokens}, "
                        f"grid: {grid}); pick a layer that outputs patch tokens")
    raise IerfError(f"layer output of shape {tuple(output.shape)} has no spatial positions; "
                    "PFVs need a (B, C, H, W) feature map or (B, T, C) tokens")


def _grid_for(n: int, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    if n <= 0:
        return None
    if grid is not None and grid[0] * grid[1] == n:
        return tuple(grid)
    side = math.isqrt(n)
    return (side, side) if side * side == n else None
