"""Saving matplotlib figures: atomically, and always closing them."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ierf.io import atomic_path


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` (temp file + rename) and close it, even on error."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)
