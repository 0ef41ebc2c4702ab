"""One pass over an image stream: each latent's top images, firing tokens and how often it fires.

The activation-ranking view of an SAE (IERF Fig. 5) — and where CAFE starts: the images on
which a latent is largest are the ones whose iERFs label it (Eq. 10). Memory is bounded by
``top × K`` whatever the number of images: a running top-``n`` per latent, merged batch by
batch with one ``topk``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ierf.cafe.latents import (
    LatentPairs,
    basis_tokens,
    check_basis,
    readout_values,
    token_positions,
)
from ierf.cafe.streaming import ImageStream
from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError
from ierf.models.model import Model


@dataclass
class LatentScan:
    """Per latent, over ``n_images``: the ``(n, K)`` top values, their image indices and
    firing tokens (descending), how many images it fired on, and its mean value."""

    values: torch.Tensor
    image: torch.Tensor
    position: torch.Tensor
    active: torch.Tensor
    mean: torch.Tensor
    n_images: int
    readout: str

    def pairs(self, latents: torch.Tensor, top: int | None = None) -> LatentPairs:
        """Pairs of ``latents`` with their top images (only where the latent fired),
        latent by latent; ``image`` indexes the stream."""
        n = self.values.shape[0] if top is None else min(top, self.values.shape[0])
        v = self.values[:n, latents].T.reshape(-1)
        keep = v > 0
        latent = latents.repeat_interleave(n)
        image = self.image[:n, latents].T.reshape(-1)
        position = self.position[:n, latents].T.reshape(-1)
        return LatentPairs(image[keep], latent[keep], position[keep], v[keep], self.readout)

    def most_selective(self, n: int, top: int = 1) -> torch.Tensor:
        """``n`` latents to show: among those that fire on at least ``top`` images, the ones
        with the largest top activation — preferring latents that fire on at most half of the
        images (a latent on every image is rarely the interesting one)."""
        eligible = self.active >= top
        if not eligible.any():
            raise IerfError(f"no latent fires on {top} of these {self.n_images} images; give "
                            "more images or a smaller --top")
        selective = eligible & (self.active <= self.n_images / 2)
        pool = (selective if selective.sum() >= n else eligible).nonzero().flatten()
        return pool[self.values[0, pool].argsort(descending=True)[:n]]


@torch.no_grad()
def scan(model: Model, basis: ConceptBasis, images: ImageStream, top: int = 8,
         readout: str = "peak", batch_size: int = 64, progress: bool = False) -> LatentScan:
    """Stream ``images`` once through ``model`` and ``basis``: a :class:`LatentScan`."""
    check_basis(model, basis)
    if len(images) == 0:
        raise IerfError("the image set is empty")
    k = basis.n_concepts
    values = torch.empty(0, k)
    image = torch.empty(0, k, dtype=torch.long)
    position = torch.empty(0, k, dtype=torch.long)
    active = torch.zeros(k, dtype=torch.long)
    total = torch.zeros(k, dtype=torch.float64)
    for start in tqdm(range(0, len(images), batch_size), desc="scanning", unit="batch",
                      disable=not progress):
        x = images.load(start, min(start + batch_size, len(images))).to(model.device)
        pfvs = model.pfvs(x, basis.layer)[basis.layer]
        acts = basis.encode(basis_tokens(basis, pfvs))
        v, p = (t.cpu() for t in readout_values(acts, token_positions(basis, pfvs), readout))
        active += (v > 0).sum(0)
        total += v.double().sum(0)
        idx = torch.arange(start, start + len(v))[:, None].expand_as(v)
        values, image, position = (torch.cat(t) for t in ((values, v), (image, idx),
                                                           (position, p)))
        values, order = values.topk(min(top, len(values)), dim=0)
        image, position = image.gather(0, order), position.gather(0, order)
    return LatentScan(values, image, position, active, (total / len(images)).float(),
                      len(images), readout)
