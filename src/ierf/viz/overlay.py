"""Attribution maps as pictures, with one colour convention for every method.

- Signed maps (``sign="all"``): diverging ``RdBu_r`` centred at 0 — red for evidence for the
  target, blue against, white for none (the explorer uses the same red / blue).
- Unsigned views (``"positive"``, ``"negative"``, ``"absolute"``): sequential ``inferno``
  from 0.
- Outliers: maps are scaled by the ``percentile``-th percentile of ``|map|`` and clipped
  there (pixel-level maps are spiky; the maximum alone would wash the rest out).
- Period-2 dot grids: a pixel-level decomposition through a stride-2 stem (EfficientNet-Lite0's
  3 × 3 / 2) gives even and odd pixels different numbers of stem windows, so SRD and LRP maps
  carry a 2 × 2 pattern (``benchmarks/srd_grid.py``: SRD on Lite0 puts 41 % of its spectral
  energy at |f| > 3/8, mean |R| differs 2.2× between pixel phases; IG 14 %, 1.2×).
  :func:`save_panel` shows such maps 2 × 2-averaged (``pool="auto"``: when the phases differ
  by more than :data:`PHASE_SPREAD`) and says so; the map itself is never changed.
- On the photo, a map is drawn over a *grey* copy of it with opacity growing with ``|map|``
  (``overlay``), or as contours of its strongest region (``show(..., mode="contour")``),
  so that a red saucer in the photo cannot be read as positive relevance.

>>> from ierf.viz import save_panel, show
>>> save_panel(image, saliency, "panel.png")     # photo | map | overlay    # doctest: +SKIP
>>> show(saliency, image, mode="contour")        # on the current axes      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ierf.errors import IerfError, unknown_name
from ierf.viz.figures import save_figure

SIGNS = ("auto", "all", "positive", "negative", "absolute")
PHASE_SPREAD = 1.5
"""Mean |R| ratio between the 2 × 2 pixel phases above which ``pool="auto"`` averages."""
MODES = ("heat", "overlay", "contour")
DIVERGING, SEQUENTIAL = "RdBu_r", "inferno"


def as_map(saliency: torch.Tensor) -> torch.Tensor:
    """A (H, W) map as a float CPU tensor; a per-channel (C, H, W) map (``per_channel=True``)
    summed over its channels, as Captum's ``visualize_image_attr`` does."""
    m = torch.as_tensor(saliency).detach().float().cpu()
    if m.dim() == 3:
        m = m.sum(0)
    if m.dim() != 2:
        raise IerfError(f"expected a (H, W) or (C, H, W) map, got shape {tuple(m.shape)}; "
                        "for a batch of maps draw one at a time")
    return m


def normalize_map(saliency: torch.Tensor, percentile: float = 99.5) -> torch.Tensor:
    """Scale a (H, W) map to [-1, 1] by a high percentile of |map|, clipping the few pixels
    above it (input-scale maps are spiky; the maximum alone would wash the rest out)."""
    peak = torch.quantile(saliency.abs().flatten().float(), percentile / 100)
    if peak <= 0:
        peak = saliency.abs().max()
    return (saliency / peak).clamp(-1, 1) if peak > 0 else saliency


def signed_view(saliency: torch.Tensor, sign: str = "auto", percentile: float = 99.5
                ) -> tuple[np.ndarray, str, tuple[float, float]]:
    """The map as shown: values, colour map and colour range for a ``sign`` mode.

    ``"auto"`` is ``"all"`` when the map has negative values, else ``"positive"``.

    Returns
    -------
    (H, W) values in [-1, 1] (``"all"``) or [0, 1], the colour map's name, ``(vmin, vmax)``.
    """
    if sign not in SIGNS:
        raise unknown_name("sign mode", sign, SIGNS)
    m = as_map(saliency)
    if sign == "auto":
        sign = "all" if bool((m < 0).any()) else "positive"
    m = {"all": m, "positive": m.clamp_min(0), "negative": (-m).clamp_min(0),
         "absolute": m.abs()}[sign]
    m = normalize_map(m, percentile).numpy()
    return (m, DIVERGING, (-1.0, 1.0)) if sign == "all" else (m, SEQUENTIAL, (0.0, 1.0))


def overlay(image: torch.Tensor, saliency: torch.Tensor, sign: str = "auto",
            percentile: float = 99.5, opacity: float = 0.85) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: the map's colours over a grey, dimmed copy of ``image``
    (3, H, W), each pixel's opacity ``opacity · |m|^0.7`` so that weak evidence shows the
    photo and strong evidence its colour."""
    from matplotlib import colormaps

    m, cmap, (lo, hi) = signed_view(saliency, sign, percentile)
    img = torch.as_tensor(image).detach().float().cpu().permute(1, 2, 0).numpy()
    grey = (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])[..., None]
    base = 0.35 + 0.5 * np.repeat(grey, 3, axis=2)                     # grey, dimmed
    colour = colormaps[cmap]((m - lo) / (hi - lo))[..., :3]
    alpha = opacity * np.abs(m)[..., None] ** 0.7
    return (1 - alpha) * base + alpha * colour


def show(saliency: torch.Tensor, image: torch.Tensor | None = None, ax: Any = None, *,
         mode: str = "heat", sign: str = "auto", percentile: float = 99.5,
         colorbar: bool = False, mass: float = 0.5) -> Any:
    """Draw a map on matplotlib axes (the current ones by default) and return them.

    Parameters
    ----------
    mode : ``"heat"`` (the map alone), ``"overlay"`` (:func:`overlay`; needs ``image``) or
        ``"contour"`` (``image`` in colour with the outline of the smallest region holding
        ``mass`` of the map's positive evidence, and of twice that fraction, dashed).
    sign, percentile : see :func:`signed_view`.
    """
    import matplotlib.pyplot as plt

    if mode not in MODES:
        raise unknown_name("display mode", mode, MODES)
    ax = ax if ax is not None else plt.gca()
    m, cmap, (lo, hi) = signed_view(saliency, sign, percentile)
    if mode == "heat" or image is None:
        shown = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi)
        if colorbar:
            ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    elif mode == "overlay":
        ax.imshow(overlay(image, saliency, sign, percentile))
    else:
        ax.imshow(torch.as_tensor(image).detach().float().cpu().permute(1, 2, 0).numpy())
        levels = sorted({_mass_level(np.clip(m, 0, None), f) for f in (min(2 * mass, 1), mass)})
        ax.contour(np.clip(m, 0, None), levels=levels, colors=["#ffffff", "#ff2020"][-len(levels):],
                   linewidths=[1.0, 2.0][-len(levels):], linestyles=["--", "-"][-len(levels):])
    ax.axis("off")
    return ax


def phase_spread(saliency: torch.Tensor) -> float:
    """max / min over the four 2 × 2 pixel phases of mean ``|map|`` (1 = no period-2 grid)."""
    m = torch.as_tensor(saliency).detach().float().abs()
    means = torch.stack([m[i::2, j::2].mean() for i in (0, 1) for j in (0, 1)])
    return float(means.max() / means.min().clamp_min(1e-30))


def pooled(saliency: torch.Tensor, pool: int) -> torch.Tensor:
    """The map averaged over ``pool × pool`` blocks, at its own size (display only)."""
    m = torch.as_tensor(saliency).detach().float()
    if pool == 1:
        return m
    blocks = F.avg_pool2d(m[None, None], pool, ceil_mode=True)
    return F.interpolate(blocks, scale_factor=pool, mode="nearest")[0, 0, :m.shape[0], :m.shape[1]]


def save_panel(image: torch.Tensor, saliency: torch.Tensor, path: str | Path,
               title: str = "", sign: str = "auto", percentile: float = 99.5,
               pool: int | str = "auto") -> Path:
    """Write ``input | map | map over the grey input`` as one figure (format from the
    suffix of ``path``), atomically.

    Parameters
    ----------
    image : (3, H, W) in [0, 1].
    saliency : (H, W) attribution map ((C, H, W): summed over channels).
    pool : show the map averaged over ``pool × pool`` blocks; ``"auto"``: 2 when its 2 × 2
        pixel phases differ by more than :data:`PHASE_SPREAD` (a stride-2 stem's grid), else 1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saliency = as_map(saliency)
    if pool == "auto":
        pool = 2 if phase_spread(saliency) > PHASE_SPREAD else 1
    if not isinstance(pool, int) or pool < 1:
        raise IerfError(f"pool must be 'auto' or a whole number >= 1, got {pool!r}")
    saliency = pooled(saliency, pool)
    if pool > 1:
        title = f"{title}\n(shown {pool}×{pool}-averaged: the map has a period-{pool} pixel grid)"

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 4.2))
    axes[0].imshow(torch.as_tensor(image).detach().float().cpu().permute(1, 2, 0).numpy())
    axes[0].axis("off")
    axes[0].set_title("input")
    show(saliency, ax=axes[1], sign=sign, percentile=percentile, colorbar=True)
    shown = sign if sign != "auto" else "all" if bool((torch.as_tensor(saliency) < 0).any()) \
        else "positive"
    axes[1].set_title("attribution (red: for the class, blue: against)" if shown == "all"
                      else f"attribution ({shown} values)", fontsize=9)
    show(saliency, image, axes[2], mode="overlay", sign=sign, percentile=percentile)
    axes[2].set_title("over the input (in grey)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _mass_level(m: np.ndarray, fraction: float) -> float:
    """The value above which the largest entries of ``m`` (≥ 0) hold ``fraction`` of its sum."""
    flat = np.sort(m.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return 1.0
    k = int(np.searchsorted(np.cumsum(flat), fraction * total))
    return float(flat[min(k, len(flat) - 1)])
