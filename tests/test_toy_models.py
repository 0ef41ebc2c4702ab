"""Tests of the toy architectures and their shipped checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ierf.data.synthetic import CLASS_NAMES, Interventions, SyntheticBatch, generate, interventions
from ierf.models.toy import TOY_MEAN, TOY_MODELS, TOY_STD, build_toy

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "ierf" / "models" / "weights"
SEED = 4321  # differs from the training (0) and reporting (1234) seeds


def load_toy(name: str) -> nn.Module:
    net = build_toy(name, num_classes=len(CLASS_NAMES))
    state = load_file(str(WEIGHTS / f"{name}.safetensors"))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                        strict=True)
    return net.eval()


@torch.no_grad()
def probs(net: nn.Module, images: Tensor) -> Tensor:
    mean = torch.tensor(TOY_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TOY_STD).view(1, 3, 1, 1)
    return net((images - mean) / std).softmax(1)


@pytest.fixture(scope="module")
def test_set() -> SyntheticBatch:
    return generate(600, seed=SEED, split="test")


@pytest.fixture(scope="module")
def edits() -> Interventions:
    return interventions(300, seed=SEED + 1, split="test")


def test_build_toy() -> None:
    x = torch.rand(2, 3, 64, 64)
    for name in TOY_MODELS:
        net = build_toy(name).eval()
        assert net(x).shape == (2, 8)
        assert 50_000 < sum(p.numel() for p in net.parameters()) < 400_000
    assert isinstance(build_toy("toy-resnet-tanh").layer1[0].act1, nn.Tanh)
    with pytest.raises(ValueError, match="toy-resnet-gelu"):
        build_toy("toy-resnet-swish")


@pytest.mark.parametrize("name", TOY_MODELS)
def test_accuracy(name: str, test_set: SyntheticBatch) -> None:
    pred = probs(load_toy(name), test_set.images).argmax(1)
    assert (pred == test_set.labels).float().mean().item() >= 0.90


@pytest.mark.parametrize("name", TOY_MODELS)
def test_key_parts_are_causal(name: str, edits: Interventions) -> None:
    net = load_toy(name)
    labels = edits.original.labels
    rows = torch.arange(len(labels))
    p0 = probs(net, edits.original.images)

    def lost_rate(images: Tensor) -> float:
        p = probs(net, images)
        drop = p0[rows, labels] - p[rows, labels]
        flipped = (p0.argmax(1) == labels) & (p.argmax(1) != labels)
        return ((drop > 0.5) | flipped).float().mean().item()

    key, distractor = lost_rate(edits.without_key), lost_rate(edits.without_distractor)
    assert key >= 0.5, f"removing a key part changed only {key:.2f} of the predictions"
    assert key >= 3 * distractor, f"key {key:.2f} vs distractor {distractor:.2f}"
