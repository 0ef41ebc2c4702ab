"""SRD maps put their positive evidence on the object (real model, known object masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ierf


def composite(photo: str, seed: int = 0) -> tuple[Image.Image, torch.Tensor]:
    """A bundled photo shrunk to the centre quarter of a flat noise canvas, and its mask."""
    rng = np.random.default_rng(seed)
    canvas = (rng.uniform(0.35, 0.65, (224, 224, 3)) * 255).astype(np.uint8)
    canvas[56:168, 56:168] = np.asarray(ierf.load_image(photo).resize((112, 112)))
    mask = torch.zeros(224, 224, dtype=torch.bool)
    mask[56:168, 56:168] = True
    return Image.fromarray(canvas), mask


def positive_share(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    pos = saliency.clamp_min(0)
    return float(pos[mask].sum() / pos.sum())


@pytest.mark.parametrize("photo, expected", [("chelsea", "Egyptian cat"), ("camera", "tripod")])
@pytest.mark.parametrize("method", ["srd", "srd-high"])
def test_positive_mass_lies_mostly_on_the_object(lite0, photo, expected, method):
    image, mask = composite(photo)
    x = lite0.preprocess(image)
    target = lite0.class_names.index(expected)
    assert int(lite0(x).argmax()) == target
    share = positive_share(ierf.attributor(method, lite0).attribute(x, target)[0], mask)
    assert share > 0.55  # the object covers 25 % of the image
