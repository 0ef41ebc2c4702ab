"""Images of the dashboards: overlays drawn from tensors, encoded once, and put in the page.

Overlays are computed batched on ``(n, 3, H, W)`` tensors; each picture is then encoded as a
PNG and added to an :class:`ImageTable`, which keeps one copy of identical pictures and
hands out their index. The table's URLs are ``data:`` URIs (``"embed"``: one file) or paths
into a folder beside the page (``"folder"``: the page stays small).
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ierf.errors import IerfError
from ierf.explorer.images import MODES
from ierf.io import atomic_path
from ierf.viz.cards import highlight


class ImageTable:
    """Encoded pictures of one page, by index (identical pictures share one index)."""

    def __init__(self, mode: Literal["embed", "folder"] = "embed",
                 folder: Path | None = None) -> None:
        if mode not in MODES:
            raise IerfError(f"images must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "folder" and folder is None:
            raise IerfError("images='folder' needs the folder to write the pictures into")
        self.mode, self.folder = mode, folder
        self.urls: list[str] = []
        self._seen: dict[str, int] = {}

    def add_png(self, data: bytes) -> int:
        """The index of PNG bytes ``data`` (stored on first sight)."""
        digest = hashlib.sha1(data).hexdigest()
        if digest not in self._seen:
            self._seen[digest] = len(self.urls)
            self.urls.append(self._store(data, digest))
        return self._seen[digest]

    def add(self, pictures: torch.Tensor) -> list[int]:
        """Indices of ``(n, 3, H, W)`` pictures in [0, 1]."""
        return [self.add_png(png) for png in encode_png(pictures)]

    def add_file(self, path: Path) -> int:
        """The index of the PNG file at ``path``."""
        return self.add_png(path.read_bytes())

    def _store(self, data: bytes, digest: str) -> str:
        if self.mode == "embed":
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        name = f"{len(self.urls):05d}-{digest[:10]}.png"
        with atomic_path(self.folder / name) as tmp:
            Path(tmp).write_bytes(data)
        return f"{self.folder.name}/{name}"


def encode_png(pictures: torch.Tensor) -> list[bytes]:
    """PNG bytes of each of ``(n, 3, H, W)`` pictures in [0, 1]."""
    from PIL import Image

    rgb = (pictures.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    out = []
    for pic in rgb.permute(0, 2, 3, 1).cpu().numpy():
        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, format="PNG", optimize=False)
        out.append(buf.getvalue())
    return out


def fit_size(pictures: torch.Tensor, size: int) -> torch.Tensor:
    """``pictures`` scaled down (area) so that their longer side is at most ``size``."""
    h, w = pictures.shape[-2:]
    if max(h, w) <= size:
        return pictures
    scale = size / max(h, w)
    return F.interpolate(pictures.float(), size=(max(1, round(h * scale)),
                                                 max(1, round(w * scale))), mode="area")


def jet(m: torch.Tensor) -> torch.Tensor:
    """``(n, H, W)`` values in [0, 1] → ``(n, 3, H, W)`` colours of the jet colour map."""
    x = m[:, None].clamp(0, 1)
    return torch.cat([(1.5 - (4 * x - c).abs()).clamp(0, 1) for c in (3, 2, 1)], 1)


def heat_overlay(images: torch.Tensor, maps: torch.Tensor, percentile: float = 100.0,
                 strength: float = 1.5, ceiling: float = 0.85) -> torch.Tensor:
    """Images ``(n, 3, H, W)`` in [0, 1] under the positive part of ``(n, h, w)`` maps in jet
    colours, each map scaled so that its ``percentile``-th value is 1 (input-scale iERFs are
    spiky: the maximum alone would leave them faint, as :func:`ierf.viz.overlay.normalize_map`),
    opacity ``min(strength · m, ceiling)`` (as the PNG panels of :mod:`ierf.cafe.panels`).
    A map with no positive value leaves its image."""
    m = maps.detach().float().nan_to_num(0).clamp_min(0)[:, None]
    m = F.interpolate(m, size=images.shape[-2:], mode="nearest")[:, 0]
    flat = m.flatten(1)
    peak = torch.quantile(flat, percentile / 100, dim=1)
    peak = torch.where(peak > 0, peak, flat.amax(1)).clamp_min(torch.finfo(m.dtype).tiny)
    m = (m / peak[:, None, None]).clamp(max=1)
    alpha = (strength * m).clamp(max=ceiling)[:, None]
    return images.float() * (1 - alpha) + jet(m) * alpha


def ierf_highlight(images: torch.Tensor, ierfs: torch.Tensor) -> torch.Tensor:
    """Images dimmed outside their iERFs, as the concept cards (:func:`ierf.viz.cards.highlight`)."""
    return highlight(images.float(), ierfs.float())
