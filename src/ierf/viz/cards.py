"""Concept cards (GIG Fig. 1, App. E): a concept's top-10 nearest PFVs shown by their iERFs,
and where a concept sits in a given image (its coefficient per position, upsampled).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ierf.concepts.basis import ConceptBasis
from ierf.concepts.extractors import ConceptExtractor
from ierf.errors import IerfError
from ierf.metrics.concepts import encode_layer
from ierf.models.model import Model
from ierf.viz.figures import save_figure


def nearest_samples(X: torch.Tensor, extractor: ConceptExtractor, concepts: Sequence[int],
                    k: int = 10, by: Literal["cosine", "coefficient"] = "cosine"
                    ) -> torch.Tensor:
    """Indices ``(len(concepts), k)`` of the PFVs nearest each concept, best first.

    ``"cosine"``: cosine similarity of ``x − decode(0)`` (the PFV centred as the dictionary
    was learnt, e.g. by ``μ_BN``) to the concept vector ``v_j`` (GIG Fig. 1, "top 10
    nearest embeddings"). ``"coefficient"``: the largest coefficients ``u_j`` of
    ``encode(X)``.
    """
    V = extractor.get_dictionary().to(X)
    concepts = torch.as_tensor(list(concepts), dtype=torch.long, device=X.device)
    if len(concepts) and (concepts.min() < 0 or concepts.max() >= V.shape[1]):
        raise IerfError(f"concept indices must lie in [0, {V.shape[1]}), got "
                        f"{concepts.tolist()}")
    if not 1 <= k <= len(X):
        raise IerfError(f"k must be in [1, {len(X)}] (the number of PFVs), got {k}")
    with torch.no_grad():
        if by == "cosine":
            offset = extractor.decode(X.new_zeros(1, V.shape[1])).detach()
            scores = F.normalize(X - offset, dim=1) @ F.normalize(V[:, concepts], dim=0)
        elif by == "coefficient":
            scores = extractor.encode(X).detach()[:, concepts]
        else:
            raise IerfError(f"by must be 'cosine' or 'coefficient', got {by!r}")
    return scores.topk(k, dim=0).indices.T


#: brightness of an image outside its iERF, and the percentile of the iERF that counts as
#: fully inside (:func:`highlight`)
FLOOR, PERCENTILE = 0.25, 99.0
#: inches under the cards for their legend (:func:`_spotlight_key`)
CARD_KEY_HEIGHT = 0.75
#: opacity of the coefficient maps of :func:`save_concept_locations`
LOCATION_ALPHA = 0.55


def highlight(images: torch.Tensor, maps: torch.Tensor, floor: float = FLOOR,
              percentile: float = PERCENTILE) -> torch.Tensor:
    """Images ``(n, 3, H, W)`` in [0, 1] dimmed outside their iERFs ``(n, h, w)``.

    The positive part of each map, upsampled to the image and scaled so that its
    ``percentile``-th value is 1 (input-scale iERFs are spiky; the maximum alone would leave
    the region dark), clipped to [0, 1], sets the brightness ``floor + (1 − floor) · m``:
    the iERF region stays, the context fades.
    """
    m = maps.clamp_min(0)[:, None].to(images)
    m = F.interpolate(m, size=images.shape[-2:], mode="bilinear", align_corners=False)
    flat = m.flatten(1)
    peak = torch.quantile(flat, percentile / 100, dim=1)
    peak = torch.where(peak > 0, peak, flat.amax(1)).clamp_min(torch.finfo(m.dtype).tiny)
    m = (m / peak[:, None, None, None]).clamp(max=1)
    return images * (floor + (1 - floor) * m)


def save_concept_cards(images: torch.Tensor, ierfs: torch.Tensor, path: str | Path,
                       labels: Sequence[str] = (), title: str = "") -> Path:
    """Write a PNG grid, one row per concept, of its nearest PFVs' iERF-highlighted images.

    Parameters
    ----------
    images : (R, k, 3, H, W) images in [0, 1] of the ``k`` nearest PFVs of ``R`` concepts.
    ierfs : (R, k, h, w) their iERFs.
    labels : one row label per concept.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if images.ndim != 5 or ierfs.shape[:2] != images.shape[:2]:
        raise IerfError(f"expected images (R, k, 3, H, W) and iERFs (R, k, h, w), got "
                        f"{tuple(images.shape)} and {tuple(ierfs.shape)}")
    rows, cols = images.shape[:2]
    shown = highlight(images.flatten(0, 1).float().cpu(), ierfs.flatten(0, 1).float().cpu())
    shown = shown.reshape(rows, cols, *shown.shape[1:]).permute(0, 1, 3, 4, 2).numpy()
    fig = plt.figure(figsize=(1.3 * cols + 1, 1.3 * rows + 0.4 + CARD_KEY_HEIGHT),
                     layout="constrained")
    grid, key = fig.subfigures(2, 1, height_ratios=[1.3 * rows + 0.4, CARD_KEY_HEIGHT])
    axes = grid.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            axes[r, c].imshow(shown[r, c])
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        if r < len(labels):
            axes[r, 0].set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        grid.suptitle(title)
    _spotlight_key(key)
    return save_figure(fig, path, dpi=80)


def _spotlight_key(fig) -> None:
    """The legend of the cards: what a row and a tile are, and a ramp of the spotlight's
    brightness against the iERF value (:func:`highlight` with :data:`FLOOR`, :data:`PERCENTILE`)."""
    ramp = torch.linspace(0, 1, 256)
    ax = fig.add_axes((0.01, 0.45, 0.16, 0.22))
    ax.imshow((FLOOR + (1 - FLOOR) * ramp)[None].numpy(), cmap="gray", vmin=0, vmax=1,
              aspect="auto", extent=(0, 1, 0, 1))
    ax.set_yticks([])
    ax.set_xticks([0, 1], ["0", f"≥ {PERCENTILE:g}th pct."], fontsize=7)
    ax.set_title("iERF relevance → brightness", fontsize=7, pad=2)
    fig.text(0.2, 0.5, "Each row is one concept; its tiles are the atlas PFVs nearest to it, "
             "best first (left).\nA tile is the PFV's image lit by the PFV's iERF: full "
             f"brightness where the positive relevance reaches its {PERCENTILE:g}th percentile, "
             f"dimmed to {FLOOR:.0%} where it is 0 (context).\nColours are the images' own.",
             fontsize=8, va="center", ha="left")


def concept_locations(model: Model, x: torch.Tensor, basis: ConceptBasis,
                      concepts: Sequence[int]) -> torch.Tensor:
    """Where concepts sit in images (GIG Fig. 1, "concept localization"): (B, R, H, W).

    Each map is the concept's coefficient ``u_pj`` at every position ``p`` of the basis'
    layer (Eq. 12 via ``basis.encode``), upsampled bilinearly to the input size.
    """
    U = encode_layer(model, x, basis)                                     # (B, N, K)
    grid = model.pfvs(x[:1], basis.layer)[basis.layer].grid
    idx = torch.as_tensor(list(concepts), dtype=torch.long, device=U.device)
    maps = U[:, :, idx].transpose(1, 2).reshape(len(x), len(idx), *grid)
    return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)


def save_concept_locations(image: torch.Tensor, maps: torch.Tensor, path: str | Path,
                           labels: Sequence[str] = ()) -> Path:
    """Write a PNG: the image, then each concept's location map over it.

    Parameters
    ----------
    image : (3, H, W) in [0, 1].
    maps : (R, H, W) from :func:`concept_locations` for one image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.detach().float().cpu().permute(1, 2, 0).numpy()
    maps = maps.detach().float().cpu()
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.2 * (len(maps) + 1) + 0.8, 3.0),
                             squeeze=False, layout="constrained")
    axes[0, 0].imshow(img)
    axes[0, 0].set_title("input", fontsize=8)
    peak = maps.abs().amax().clamp_min(torch.finfo(maps.dtype).tiny).item()
    for j, m in enumerate(maps):
        axes[0, j + 1].imshow(img)
        shown = axes[0, j + 1].imshow(m.numpy(), cmap="bwr", alpha=LOCATION_ALPHA,
                                      vmin=-peak, vmax=peak)
        axes[0, j + 1].set_title(labels[j] if j < len(labels) else f"concept {j}", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    if len(maps):
        bar = fig.colorbar(shown, ax=axes[0, 1:].tolist(), shrink=0.8, pad=0.01)
        bar.set_label("coefficient $u_j$ (one scale for all)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    fig.supxlabel(f"Each concept's coefficient at every position of the layer, upsampled to "
                  f"the input, over the image at {LOCATION_ALPHA:.0%} opacity: red = present "
                  "(positive), white = 0, blue = negative.", fontsize=7)
    return save_figure(fig, path, dpi=80)
