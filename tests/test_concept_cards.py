"""Concept cards: nearest PFVs, iERF highlight, PNG grid, concept locations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ierf
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.fitting import fit_concepts
from ierf.metrics.concepts import encode_layer
from ierf.viz.cards import (
    CARD_KEY_HEIGHT,
    concept_locations,
    highlight,
    nearest_samples,
    save_concept_cards,
    save_concept_locations,
)

torch.set_num_threads(1)


def test_nearest_samples_by_cosine_and_coefficient() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 8, generator=g)
    mu = torch.randn(8, generator=g)
    ext = fit_concepts(X + mu, "kmeans", 6, center=mu, encoding="nearest")
    V = ext.get_dictionary()
    top = nearest_samples(X + mu, ext, [4, 1], k=10)
    # brute force: cosine of the centred PFVs to each concept vector, sorted
    for row, j in zip(top, (4, 1)):
        cos = [float(F.cosine_similarity(X[i], V[:, j], dim=0)) for i in range(200)]
        assert row.tolist() == list(np.argsort(cos)[::-1][:10])
    U = ext.encode(X + mu)
    by_coef = nearest_samples(X + mu, ext, [2], k=5, by="coefficient")
    assert by_coef[0].tolist() == U[:, 2].argsort(descending=True)[:5].tolist()


def test_highlight_keeps_the_ierf_and_dims_the_rest() -> None:
    images = torch.rand(2, 3, 8, 8)
    maps = torch.zeros(2, 8, 8)
    maps[:, 2, 3] = 5.0
    maps[:, 6, 6] = -1.0                                  # negative relevance is not highlight
    out = highlight(images, maps, floor=0.25)
    torch.testing.assert_close(out[:, :, 2, 3], images[:, :, 2, 3])
    torch.testing.assert_close(out[:, :, 6, 6], 0.25 * images[:, :, 6, 6])
    assert (out <= images + 1e-7).all()


def test_cards_png_has_the_grid(tmp_path) -> None:
    rows, cols = 3, 10
    images = torch.rand(rows, cols, 3, 32, 32)
    ierfs = torch.rand(rows, cols, 16, 16)
    path = save_concept_cards(images, ierfs, tmp_path / "cards.png",
                              labels=["a", "b", "c"], title="t")
    width, height = Image.open(path).size
    # figure of (1.3 cols + 1) × (1.3 rows + 0.4) inches at 80 dpi, and the legend below
    assert (width, height) == (round((1.3 * cols + 1) * 80),
                               round((1.3 * rows + 0.4 + CARD_KEY_HEIGHT) * 80))
    with pytest.raises(ierf.IerfError, match="expected images"):
        save_concept_cards(images[0], ierfs, tmp_path / "bad.png")


def test_concept_locations_are_the_coefficients(toy, tmp_path) -> None:
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    layer = "layer1"                                     # 32 × 32 grid, upsampled ×2
    X = toy.pfvs(x, layer)[layer].vectors.flatten(0, 1)
    basis = ConceptBasis.bind(fit_concepts(X, "kmeans", 5, encoding="nearest"), toy, layer)
    maps = concept_locations(toy, x, basis, [3, 0])
    assert maps.shape == (2, 2, 64, 64)
    U = encode_layer(toy, x, basis)                      # (2, 1024, 5)
    native = U[:, :, [3, 0]].transpose(1, 2).reshape(2, 2, 32, 32)
    # bilinear ×2 upsampling (half-pixel centres, edges clamped) gives every native cell a
    # total weight of 4, so each map keeps the mean of the concept's coefficients
    assert native.abs().amax() > 0
    torch.testing.assert_close(maps.mean((2, 3)), native.mean((2, 3)), atol=1e-5, rtol=1e-4)
    path = save_concept_locations(x[0] * 0.5 + 0.5, maps[0], tmp_path / "where.png",
                                  labels=["c3", "c0"])
    assert Image.open(path).size[0] > Image.open(path).size[1]
