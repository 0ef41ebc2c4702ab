"""Exact FaCT explanations on real benchmark images with the shipped ``fact-toy`` checkpoint:
logits = Σ concept contributions (Eqs. 8–9), pixel traces sum to the concept activation
(Eqs. 10–12), cross-layer contributions sum to the later activation (App. H.3)."""

from __future__ import annotations

import copy

import pytest
import torch

import ierf
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.fact import (
    FaCT,
    TopKBottleneck,
    as_fact,
    bcos_toy_resnet,
    concept_contributions,
    concept_traces,
    cross_layer_contributions,
)
from ierf.fact.zoo import FACT_TOY_DEPTHS, FACT_TOY_WIDTHS

REL = 1e-4


def _rel_ok(residual: torch.Tensor, reference: torch.Tensor) -> bool:
    """``|residual| ≤ REL · max |reference|`` per image."""
    scale = reference.abs().flatten(1).amax(1).view(-1, *[1] * (residual.dim() - 1))
    return bool((residual.abs() <= REL * scale).all())


@pytest.fixture(scope="module")
def fact_toy() -> ierf.Model:
    return ierf.load_model("fact-toy")


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    batch = generate(8, seed=1234, split="test")
    return batch.images, batch.labels


def test_zoo_model_classifies_benchmark(fact_toy: ierf.Model) -> None:
    test = generate(64, seed=4321, split="test")  # a fresh split
    with torch.no_grad():
        acc = (fact_toy(test.images).argmax(1) == test.labels).float().mean().item()
    assert acc >= 0.85
    assert fact_toy.input_size == (3, 64, 64)
    assert isinstance(as_fact(fact_toy), FaCT) and as_fact(fact_toy).layers == ["layer2"]


def test_logits_are_sums_of_concept_contributions(fact_toy: ierf.Model, images) -> None:
    x, labels = images
    c = concept_contributions(fact_toy, x)  # every class
    with torch.no_grad():
        logits = fact_toy(x)
    assert c.contributions.shape == (8, 8, 128)
    assert torch.allclose(c.logits, logits)
    assert _rel_ok(c.residual, logits)
    # per-image classes give the same numbers as the all-classes decomposition
    own = concept_contributions(fact_toy, x, classes=labels)
    assert torch.allclose(own.contributions[:, 0], c.contributions[torch.arange(8), labels],
                          rtol=1e-4, atol=1e-6)
    # only active concepts contribute, and activations are Σ_{h,w} u_k (Eq. 10)
    assert ((c.activations == 0).unsqueeze(1) <= (c.contributions == 0)).all()


def test_pixel_traces_sum_to_concept_activation(fact_toy: ierf.Model, images) -> None:
    x, _ = images
    t = concept_traces(fact_toy, x[:4], top=6)
    assert t.weights.shape == (4, 6, 6, 64, 64) and t.maps.shape == (4, 6, 64, 64)
    c = concept_contributions(fact_toy, x[:4], classes=0)
    assert torch.allclose(t.activations, c.activations.gather(1, t.concepts))
    assert (t.activations > 0).all()
    assert _rel_ok(t.residual, t.activations)
    chosen = concept_traces(fact_toy, x[:2], concepts=[int(t.concepts[0, 0])])
    assert torch.allclose(chosen.maps[0, 0], t.maps[0, 0], rtol=1e-4, atol=1e-7)


def test_cross_layer_to_a_later_bcos_layer(fact_toy: ierf.Model, images) -> None:
    x, _ = images
    cl = cross_layer_contributions(fact_toy, x[:4], "layer2", "layer3.0.conv2", top=5)
    assert cl.contributions.shape == (4, 5, 128)
    assert _rel_ok(cl.residual, cl.activations)
    with pytest.raises(IerfError, match="does not depend"):
        cross_layer_contributions(fact_toy, x[:1], "layer2", "layer1.0.conv1")


def test_cross_layer_between_two_bottlenecks(fact_toy: ierf.Model, images) -> None:
    """A second (untrained) bottleneck at layer3: exactness holds for any bias-free SAE."""
    x, _ = images
    net = as_fact(fact_toy)
    backbone = bcos_toy_resnet(8, FACT_TOY_WIDTHS, FACT_TOY_DEPTHS)
    backbone.load_state_dict(net.backbone.state_dict())
    two = FaCT(backbone, {"layer2": copy.deepcopy(net.bottleneck("layer2")),
                          "layer3": TopKBottleneck(128, 64, 8, seed=3)})
    cl = cross_layer_contributions(two, x[:4], "layer2", "layer3", units=[0, 5, 9])
    assert cl.units.shape == (4, 3)
    assert _rel_ok(cl.residual, cl.activations)
    for layer in ("layer2", "layer3"):
        c = concept_contributions(two, x[:4], classes=[1, 2], layer=layer)
        assert _rel_ok(c.residual, c.logits)
    with pytest.raises(IerfError, match="several bottlenecks"):
        concept_contributions(two, x[:1])
