"""Insertion / deletion curves of several methods side by side (IERF Fig. 11)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ierf.viz.figures import save_figure


def save_curves(curves: Mapping[str, Mapping[str, torch.Tensor]], path: str | Path,
                title: str = "", xlabel: str = "fraction of parent concepts") -> Path:
    """One panel per mode (e.g. deletion, insertion), one line per method, as a PNG.

    ``curves``: method → mode → (S + 1,) curve over ``[0, 1]``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for method, per_mode in curves.items():
            y = per_mode[mode].detach().cpu()
            ax.plot(torch.linspace(0, 1, len(y)), y, label=method,
                    lw=2.2 if method == "ig" else 1.2)
        ax.set_title(mode)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("max cos to target (÷ reference)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
