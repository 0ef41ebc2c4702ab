"""ViT maps on the synthetic benchmark: where does the positive mass of each method fall?

Ground truth is the key-parts mask of each scene; the class-agnostic raw attention is the
weak baseline the gradient-weighted methods must beat (thesis Sec. 3.1, 3.4).
"""

from __future__ import annotations

import pytest
import torch

import ierf
from ierf.data.synthetic import generate


def attribution_localisation(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of positive attribution inside the ground-truth mask, per image."""
    pos = saliency.clamp_min(0)
    return (pos * mask).sum((1, 2)) / pos.sum((1, 2)).clamp_min(1e-12)


@pytest.fixture(scope="module")
def scenes() -> tuple[ierf.Model, torch.Tensor, object]:
    model = ierf.load_model("toy-vit")
    batch = generate(16, seed=21, split="test")
    x = model.normalize(batch.images)
    return model, x, batch


def localisation(scenes, method: str, **opts) -> float:
    model, x, batch = scenes
    maps = ierf.attributor(method, model, **opts).attribute(x, batch.labels)
    share = attribution_localisation(maps, batch.parts_mask).mean().item()
    print(f"{method} {opts or ''}: {share:.3f} of the positive mass on the key parts "
          f"(mask area {batch.parts_mask.float().mean():.3f})")
    return share


@pytest.mark.parametrize("method", ["transmm", "gated-transmm", "attnlrp"])
def test_gradient_weighted_methods_beat_raw_attention(scenes, method):
    if method not in ierf.methods():
        pytest.skip(f"{method} is not registered")
    raw = localisation(scenes, "raw-attention")
    assert localisation(scenes, method) > raw + 0.1


def test_rollout_does_not_beat_transmm(scenes):
    assert localisation(scenes, "rollout") < localisation(scenes, "transmm")


def test_real_sae_features_beat_the_shuffled_decoder_control(scenes):
    real = localisation(scenes, "gated-transmm")
    shuffled = localisation(scenes, "gated-transmm", shuffled_decoder=True)
    assert real > shuffled
