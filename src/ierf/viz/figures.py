"""Saving matplotlib figures: atomically, and always closing them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ierf.errors import IerfError
from ierf.io import atomic_path

if TYPE_CHECKING:   # matplotlib takes ~0.7 s to import: only when a figure is drawn
    from matplotlib.figure import Figure

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def check_figure_suffix(path: str | Path) -> str:
    """The figure format of ``path``'s suffix (PNG, JPEG, PDF, SVG), or a clear error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise IerfError(f"cannot write a figure as {suffix or 'a file without suffix'!r} "
                        f"({path}); use one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` at ``path`` in the format its suffix names (:data:`FORMATS`), through a
    temp file and a rename, and close it, even on error."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=check_figure_suffix(path))
    finally:
        plt.close(fig)
    return Path(path)
