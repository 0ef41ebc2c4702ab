"""Heat-map overlays of attribution maps on images."""

from __future__ import annotations

from pathlib import Path

import torch

from ierf.viz.figures import save_figure


def normalize_map(saliency: torch.Tensor, percentile: float = 99.5) -> torch.Tensor:
    """Scale a (H, W) map to [-1, 1] by a high percentile of |map|, clipping the few pixels
    above it (input-scale maps are spiky; the maximum alone would wash the rest out)."""
    peak = torch.quantile(saliency.abs().flatten().float(), percentile / 100)
    if peak <= 0:
        peak = saliency.abs().max()
    return (saliency / peak).clamp(-1, 1) if peak > 0 else saliency


def save_overlay(image: torch.Tensor, saliency: torch.Tensor, path: str | Path,
                 title: str = "") -> Path:
    """Write image | map-over-image side by side as a PNG, atomically.

    Parameters
    ----------
    image : (3, H, W) in [0, 1].
    saliency : (H, W) attribution map (signed maps use a diverging colour map).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.detach().cpu().permute(1, 2, 0).numpy()
    sal = normalize_map(saliency.detach().float().cpu()).numpy()
    signed = bool((sal < 0).any())
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(img)
    axes[0].set_title("input")
    axes[1].imshow(img)
    shown = axes[1].imshow(sal, cmap="bwr" if signed else "jet", alpha=0.5,
                           vmin=-1 if signed else 0, vmax=1)
    axes[1].set_title("attribution")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)

