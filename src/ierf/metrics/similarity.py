"""Batched similarities between maps or score vectors: Pearson, Spearman, SSIM.

All take (B, ...) tensors and compare row by row, returning (B,) on the input's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN if constant)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return r.float()


def average_ranks(a: torch.Tensor) -> torch.Tensor:
    """Ranks (1…n) of each row, ties given their average rank (as ``scipy.stats.rankdata``)."""
    a = a.flatten(1)
    n = a.shape[1]
    values, order = a.sort(dim=1, stable=True)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    group = new_group.long().cumsum(1) - 1  # group id of each sorted position, per row
    positions = torch.arange(1, n + 1, device=a.device, dtype=torch.double).expand_as(values)
    total = torch.zeros_like(positions).scatter_add_(1, group, positions)
    count = torch.zeros_like(positions).scatter_add_(1, group, torch.ones_like(positions))
    mean_rank = (total / count.clamp_min(1)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row: Pearson of the tie-averaged ranks."""
    return pearson(average_ranks(a), average_ranks(b))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of (B, H, W) maps, Gaussian window.

    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``: the mean is taken over the pixels whose
    whole window lies inside the image.
    """
    a, b = a.double().unsqueeze(1), b.double().unsqueeze(1)
    r = int(3.5 * sigma + 0.5)  # skimage's truncate=3.5 → 11 taps for σ = 1.5
    if window != 2 * r + 1:
        raise ValueError(f"window {window} does not match sigma {sigma} (expected {2 * r + 1})")
    t = torch.arange(-r, r + 1, device=a.device, dtype=torch.double)
    g = torch.exp(-t**2 / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel)  # 'valid': only full windows, as skimage's crop

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()
