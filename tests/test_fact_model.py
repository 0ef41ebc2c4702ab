"""FaCT model construction: the bottleneck (Eqs. 6–7), backbone checks, a B-cos ResNet-50."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from ierf.concepts.extractors import BiasFreeTopKSAE, TopKSAE
from ierf.errors import IerfError, UnknownNameError
from ierf.fact import (
    BcosConv2d,
    FaCT,
    TopKBottleneck,
    bcos_resnet50,
    bcos_toy_resnet,
    check_bcos,
    concept_contributions,
    concept_traces,
)


def test_bottleneck_is_bias_free_topk_with_unit_decoder() -> None:
    torch.manual_seed(0)
    sae = TopKBottleneck(16, 40, k=5)
    with torch.no_grad():
        sae.decoder.mul_(3.0)
    h = torch.randn(2, 16, 3, 4)
    u = sae.encode(h)
    assert u.shape == (2, 40, 3, 4)
    assert ((u != 0).sum(1) <= 5).all() and (u >= 0).all()
    assert torch.allclose(sae.dictionary().norm(dim=0), torch.ones(40))
    assert torch.allclose(sae(h), torch.einsum("ck,bkhw->bchw", sae.dictionary(), u), atol=1e-6)
    assert torch.equal(sae.encode(torch.zeros_like(h)), torch.zeros_like(u))
    assert torch.allclose(sae.encode(2 * h), 2 * u)  # positively homogeneous: no bias
    tokens = torch.randn(2, 7, 16)
    assert sae(tokens).shape == tokens.shape
    with pytest.raises(IerfError, match="expects"):
        sae.encode(torch.randn(2, 15, 3, 3))


def test_bottleneck_from_fitted_extractor() -> None:
    X = torch.randn(300, 8)
    sae = BiasFreeTopKSAE(8, 16, k=3).fit(X, epochs=1)
    b = TopKBottleneck.from_sae(sae)
    assert torch.equal(b.encoder, sae.encoder.weight) and b.k == 3
    with pytest.raises(IerfError, match="bias-free"):
        TopKBottleneck.from_sae(TopKSAE(8, 16, k=3))


def test_non_bcos_backbone_is_rejected() -> None:
    net = torchvision.models.resnet18(num_classes=4)
    problems = check_bcos(net)
    assert any(p.startswith("conv1 (Conv2d)") for p in problems)
    assert any(p.startswith("bn1 (BatchNorm2d)") for p in problems)
    with pytest.raises(IerfError, match="not a B-cos network.*conv1 \\(Conv2d\\)"):
        FaCT.build(net, "layer3", 32, 4)
    gelu = nn.Sequential(BcosConv2d(6, 4, 3, 1, 1), nn.GELU())
    assert check_bcos(gelu) == ["1 (GELU): not a known linear or piecewise-linear operation"]


def test_wrong_channels_are_rejected() -> None:
    three = nn.Sequential(BcosConv2d(3, 8, 3, 1, 1), BcosConv2d(8, 2, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(IerfError, match="6-channel.*'0' takes 3 channels"):
        FaCT(three, {"0": TopKBottleneck(8, 16, 2)})
    fact = FaCT.build(bcos_toy_resnet(), "layer2", 32, 4)
    for bad in (torch.rand(2, 6, 64, 64), torch.rand(3, 64, 64)):
        with pytest.raises(IerfError, match=r"RGB images shaped \(B, 3, H, W\)"):
            fact(bad)
    with pytest.raises(UnknownNameError, match="layer2"):
        FaCT.build(bcos_toy_resnet(), "layer_2", 32, 4)
    with pytest.raises(IerfError, match="not a FaCT model"):
        concept_contributions(bcos_toy_resnet(), torch.rand(1, 3, 64, 64))


def test_deepcopy_keeps_its_own_bottleneck() -> None:
    torch.manual_seed(0)
    fact = FaCT.build(bcos_toy_resnet(), "layer2", 32, 4).eval()
    twin = copy.deepcopy(fact)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = fact(x)
        twin.bottleneck("layer2").decoder.mul_(-1.0)
        assert torch.equal(fact(x), before)
        assert not torch.allclose(twin(x), before)
    assert sorted(fact.state_dict()) == sorted(twin.state_dict())


def test_state_dict_round_trips_through_the_zoo(tmp_path) -> None:
    from safetensors.torch import save_file

    import ierf

    torch.manual_seed(0)
    model = ierf.load_model("fact-toy", weights=None)
    save_file(model.net.state_dict(), str(tmp_path / "w.safetensors"))
    again = ierf.load_model("fact-toy", weights=tmp_path / "w.safetensors")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(again(x), model(x))
    assert again.layer_names()[-1] == "backbone.avgpool"


def test_bcos_resnet50_structure_and_exactness() -> None:
    """FaCT at ``layer3`` of a random-weight B-cos ResNet-50 (32×32 input to stay fast)."""
    torch.manual_seed(0)
    net = bcos_resnet50(num_classes=1000)
    assert check_bcos(net) == []
    fact = FaCT.build(net, "layer3", n_concepts=256, k=16, input_size=(32, 32))
    assert fact.bottleneck("layer3").n_features == 1024
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = fact.eval()(x)
    assert logits.shape == (2, 1000)
    c = concept_contributions(fact, x, classes=[3, 999])
    assert c.contributions.shape == (2, 2, 256)
    assert torch.allclose(c.logits, logits[:, [3, 999]])
    scale = c.logits.abs().amax(1, keepdim=True)
    assert (c.residual.abs() <= 1e-4 * scale).all()
    t = concept_traces(fact, x, top=2)
    assert t.maps.shape == (2, 2, 32, 32)
    assert (t.residual.abs() <= 1e-4 * t.activations.abs().amax(1, keepdim=True)).all()


def test_bcos_package_backbone_if_installed() -> None:
    """Modules of the ``bcos`` package (B-cos v2) are recognised; its class-independent
    logit bias is removed from FaCT's logits."""
    bcos = pytest.importorskip("bcos.models.resnet")
    torch.manual_seed(0)
    net = bcos.resnet18(num_classes=10)
    fact = FaCT.build(net, "layer3", 64, 8)
    assert fact.logit_offset == pytest.approx(-torch.log(torch.tensor(9.0)).item())
    c = concept_contributions(fact, torch.rand(2, 3, 64, 64), classes=[0, 1])
    assert (c.residual.abs() <= 1e-4 * c.logits.abs().amax(1, keepdim=True)).all()
