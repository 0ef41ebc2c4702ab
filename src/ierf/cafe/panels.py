"""PNG panels of grounded latents, as IERF Fig. 8: the top-activating patches beside the iERFs.

One panel per latent: a column per top image; the top row shows the latent's activation on
each patch token over the image with the firing token boxed in red (the activation-ranking
view, Fig. 5), the bottom row the latent's iERF (Eq. 10, positive evidence). A CLS latent's
top row shows the plain image: it has no firing patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ierf.viz.figures import save_figure
from ierf.viz.overlay import normalize_map


def save_latent_panel(images: torch.Tensor, activations: torch.Tensor, ierfs: torch.Tensor,
                      positions: torch.Tensor, grid: tuple[int, int], path: str | Path,
                      title: str = "", captions: Sequence[str] = ()) -> Path:
    """Write one latent's panel.

    Parameters
    ----------
    images : (n, 3, H, W) in [0, 1].
    activations : (n, N) latent activation per patch token (NaN rows for a CLS latent).
    ierfs : (n, H, W) iERFs.
    positions : (n,) firing token (patch index; negative for CLS).
    grid : the patch grid (h, w).
    captions : one line under each column (e.g. ``z`` and the non-locality).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    h, w = images.shape[-2:]
    ph, pw = h / grid[0], w / grid[1]
    fig, axes = plt.subplots(2, n, figsize=(2.1 * n + 0.4, 4.6), squeeze=False)
    for i in range(n):
        img = images[i].detach().cpu().permute(1, 2, 0).numpy()
        top, bottom = axes[0][i], axes[1][i]
        top.imshow(img)
        act = activations[i].detach().float().cpu()
        if torch.isfinite(act).all():
            amap = act.clamp_min(0).reshape(grid)
            amap = (amap / amap.max() if amap.max() > 0 else amap).numpy()
            top.imshow(amap, cmap="jet", alpha=(0.7 * amap).clip(0, 0.7), vmin=0, vmax=1,
                       extent=(0, w, h, 0), interpolation="nearest")
            p = int(positions[i])
            top.add_patch(Rectangle(((p % grid[1]) * pw, (p // grid[1]) * ph), pw, ph,
                                    fill=False, edgecolor="red", lw=2))
        bottom.imshow(img)
        sal = normalize_map(ierfs[i].detach().float().cpu()).clamp_min(0).numpy()
        bottom.imshow(sal, cmap="jet", alpha=(1.5 * sal).clip(0, 0.85), vmin=0, vmax=1)
        if i < len(captions):
            bottom.set_xlabel(captions[i], fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("activation (top patch)", fontsize=8)
    axes[1][0].set_ylabel("iERF (CAFE)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def save_insertion_figure(curves: dict[str, dict[str, torch.Tensor]], path: str | Path,
                          title: str = "") -> Path:
    """Mean insertion curves (Fig. 7): one panel per layer, one line per ranking.

    ``curves``: layer label → ranking → (S + 1,) mean curve over ``[0, 1]``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(curves)
    rankings = list(dict.fromkeys(r for per in curves.values() for r in per))
    colour = {r: f"C{i}" for i, r in enumerate(rankings)}
    cols = min(4, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.6, 3.0 * rows + 0.4),
                             squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        for ranking, y in curves[label].items():
            y = y.detach().cpu()
            if not torch.isfinite(y).all():
                continue
            style = "--" if ranking in ("activation", "random") else "-"
            ax.plot(torch.linspace(0, 1, len(y)), y, style, label=ranking, color=colour[ranking],
                    lw=2.2 if ranking == "attnlrp" else 1.2)
        ax.axhline(1, color="k", lw=0.5)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("fraction of patches inserted", fontsize=8)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("z_k(canvas) / z_k(image)", fontsize=8)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()
               if not h.get_label().startswith("_")}
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return save_figure(fig, path, dpi=110)
