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


def attribution_localisation(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of positive attribution inside the ground-truth mask, per image."""
    pos = saliency.clamp_min(0)
    return (pos * mask).sum((1, 2)) / pos.sum((1, 2)).clamp_min(1e-12)


def test_srd_localises_the_class_determining_parts_better_than_the_gradient():
    from ierf.data.synthetic import generate

    model = ierf.load_model("toy-resnet")
    batch = generate(48, seed=77, split="test")
    x = model.normalize(batch.images)
    srd = attribution_localisation(ierf.attributor("srd", model).attribute(x, batch.labels),
                                   batch.parts_mask)
    grad = attribution_localisation(ierf.attributor("gradient", model).attribute(x, batch.labels),
                                    batch.parts_mask)
    assert srd.mean() > grad.mean() + 0.2
    assert srd.mean() > 3 * batch.parts_mask.float().mean()  # far above the mask's area share


def test_srd_runs_on_every_toy_model_and_beats_the_mask_area():
    from ierf.data.synthetic import generate
    from ierf.models.toy import TOY_MODELS

    batch = generate(16, seed=78, split="test")
    area = batch.parts_mask.float().mean()
    for name in TOY_MODELS:
        model = ierf.load_model(name)
        x = model.normalize(batch.images)
        saliency = ierf.attributor("srd", model).attribute(x, batch.labels)
        assert saliency.shape == (16, 64, 64) and torch.isfinite(saliency).all(), name
        assert attribution_localisation(saliency, batch.parts_mask).mean() > 2 * area, name
