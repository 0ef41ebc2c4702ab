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


class _Biased(TopKBottleneck):
    """A copy of a bottleneck with a bias sneaked into its encoder (``u = TopK(ReLU(W_e h +
    b))``) or its decoder (``ĥ = D u + b``)."""

    def __init__(self, base: TopKBottleneck, where: str, bias: torch.Tensor) -> None:
        super().__init__(base.n_features, base.n_concepts, base.k)
        self.load_state_dict(base.state_dict())
        self.where = where
        self.bias = torch.nn.Parameter(bias)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        if self.where != "encoder":
            return super().encode(h)
        pre = torch.relu(h.movedim(1, -1) @ self.encoder.T + self.bias)
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values).movedim(-1, 1)

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        h = super().decode(u)
        return h + self.bias.view(1, -1, 1, 1) if self.where == "decoder" else h


@pytest.mark.parametrize("where", ["encoder", "decoder"])
def test_exactness_tests_fail_if_a_bias_sneaks_into_the_sae(fact_toy: ierf.Model, images,
                                                            where: str) -> None:
    """FaCT refuses a biased bottleneck; smuggled in anyway, an encoder bias breaks the pixel
    traces (u is no longer dynamic-linear in the features, Eqs. 10–12) and a decoder bias the
    logit decomposition (the head is no longer homogeneous in u, Eq. 9) – the same ``_rel_ok``
    checks as above then fail."""
    x = images[0][:4]
    net = as_fact(fact_toy)
    base = net.bottleneck("layer2")
    with torch.no_grad(), net.recording() as rec:
        net(x)
    u, h = rec.codes["layer2"], rec.features["layer2"]
    bias = torch.full((base.n_concepts,), 0.1 * float(u[u > 0].mean())) if where == "encoder" \
        else 0.1 * h.abs().mean((0, 2, 3))
    biased = _Biased(base, where, bias)
    backbone = bcos_toy_resnet(8, FACT_TOY_WIDTHS, FACT_TOY_DEPTHS)
    backbone.load_state_dict(net.backbone.state_dict())
    with pytest.raises(IerfError, match="bias"):
        FaCT(backbone, {"layer2": biased})
    smuggled = copy.deepcopy(net)
    smuggled.bottlenecks["layer2"] = biased
    c = concept_contributions(smuggled, x, classes=[0, 3])
    t = concept_traces(smuggled, x, top=4)
    assert _rel_ok(c.residual, c.logits) == (where == "encoder")
    assert _rel_ok(t.residual, t.activations) == (where == "decoder")
    clean_c = concept_contributions(net, x, classes=[0, 3])
    clean_t = concept_traces(net, x, top=4)
    assert _rel_ok(clean_c.residual, clean_c.logits) and _rel_ok(clean_t.residual,
                                                                 clean_t.activations)


def test_contribution_traces_sum_to_the_contributions_and_to_the_logit() -> None:
    """App. H.2: a concept's contribution to a logit (Eq. 9), traced to the pixels, sums to
    that contribution; the traces of all concepts sum to the logit."""
    from ierf.fact import concept_contributions, contribution_traces

    model = ierf.load_model("fact-toy")
    x = generate(3, seed=2, split="test").images
    K = model.net.bottleneck("layer2").n_concepts
    c = concept_contributions(model, x, classes=torch.tensor([0, 3, 5])[:, None])
    t = contribution_traces(model, x, torch.tensor([0, 3, 5]), concepts=list(range(K)))
    scale = c.logits.abs().max().item()
    torch.testing.assert_close(t.activations, c.contributions[:, 0], rtol=1e-4,
                               atol=1e-5 * scale)
    torch.testing.assert_close(t.maps.sum((-2, -1)), t.activations, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(t.maps.sum((1, -2, -1)), c.logits[:, 0], rtol=1e-4,
                               atol=1e-4 * scale)
    top = contribution_traces(model, x, top=2)                  # predicted class, top-2
    assert top.concepts.shape == (3, 2)
