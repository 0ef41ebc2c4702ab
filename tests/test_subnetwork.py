"""Subnetwork(model, a, b): the isolated sub-network M_ab of paper Sec. VI-B1."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import ierf
from ierf.errors import IerfError, UnknownNameError
from ierf.models import Subnetwork

torch.set_num_threads(1)   # 2 threads on 2 shared cores thrash (20× slower measured)


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    # The sub-network runs the same kernels on the same values, but on a differently
    # laid-out input (the PFVs are reshaped back into a map or re-joined with the prefix),
    # which may pick another kernel or summation order: float32 rounding (~6e-8 relative per
    # operation) compounded over tens of layers stays far below 1e-5 of the output's scale.
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-5)


def check_pair(model: ierf.Model, a: str, b: str, x: torch.Tensor) -> Subnetwork:
    """``M_ab(PFVs of a) == PFVs of b`` (or the logits) of the full model on ``x``."""
    sub = Subnetwork(model, a, b, example=x[:1])
    assert sub.mode == "fx"
    layers = [a] if b in ("output", "logits") else [a, b]
    logits, pfvs = model.forward_pfvs(x, layers)
    ref = logits if b in ("output", "logits") else pfvs[b].vectors
    with torch.no_grad():
        assert_matches(sub(pfvs[a]), ref)
        assert_matches(sub(sub.pfvs_a(x)), ref)
    return sub


@pytest.fixture(scope="module")
def resnet50(resnet50_random: ierf.Model) -> ierf.Model:
    return resnet50_random                   # the session's random ResNet50 (conftest)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    # ResNet50 and VGG16 are fully convolutional up to an adaptive pool: small inputs keep
    # the test fast (layer4 is 2×2 here)
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def tiny_timm_vit() -> ierf.Model:
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5,
        mlp_ratio=2, reg_tokens=2)
    return ierf.Model(net.eval(), "tiny-timm", [str(i) for i in range(5)],
                      num_prefix_tokens=net.num_prefix_tokens, patch_grid=(4, 4))


@pytest.mark.parametrize("a,b", [("layer3.2", "layer4.1"), ("layer4.2", "output"),
                                 ("layer1", "layer3.2.conv3"), ("layer3.2.conv1", "layer3.2.conv3"),
                                 ("conv1", "logits")])
def test_resnet50_matches_the_full_model(resnet50, x64, a, b) -> None:
    check_pair(resnet50, a, b, x64)


def test_resnet50_at_224_and_only_the_layers_between_a_and_b_run(resnet50) -> None:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    sub = check_pair(resnet50, "layer3.5", "layer4.2", x)
    calls: dict[str, int] = {}
    # the copy calls the leaf modules (convs, BNs, …); the blocks' own code is inlined
    names = ["conv1", "layer1.0.conv1", "layer3.5.conv3", "layer4.0.conv1", "layer4.2.conv3",
             "fc"]
    handles = [resnet50.module(n).register_forward_hook(
        lambda *_, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n in names]
    try:
        with torch.no_grad():
            sub(torch.randn(1, 196, 1024))
    finally:
        for h in handles:
            h.remove()
    assert calls == {"layer4.0.conv1": 1, "layer4.2.conv3": 1}   # no stem, layer3 or head
    assert {n for n, _ in sub.net.named_children()} == {"layer4"}  # the copy holds only M_ab


def test_vgg16(x64) -> None:
    torch.manual_seed(0)
    vgg = ierf.load_model("vgg16", weights=None)
    x = x64[:1, :, :32, :32]
    check_pair(vgg, "features.10", "features.22", x)
    check_pair(vgg, "features.10", "features", x)          # b encloses a
    check_pair(vgg, "features.29", "output", x)


def test_efficientnet_lite0_blocks(lite0) -> None:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    check_pair(lite0, "blocks.4", "blocks.6", x)
    check_pair(lite0, "blocks.5.1", "output", x)
    with pytest.raises(IerfError, match="not a cut"):   # the residual add of blocks.5.1
        Subnetwork(lite0, "blocks.5.1.conv_pw", "blocks.6", example=x)


@pytest.mark.parametrize("name", ["toy-resnet", "toy-vgg", "toy-vit"])
def test_toy_models(name) -> None:
    model = ierf.load_model(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    a, b = {"toy-resnet": ("layer1", "layer3"), "toy-vgg": ("features.4", "features.9"),
            "toy-vit": ("blocks.0", "blocks.2")}[name]
    check_pair(model, a, b, x)
    check_pair(model, b, "output", x)


def test_timm_vit_with_cls_and_register_tokens() -> None:
    model = tiny_timm_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    sub = check_pair(model, "blocks.0", "blocks.2", x)
    assert sub.prefix_tokens == 3
    check_pair(model, "blocks.1", "output", x)
    pfvs = sub.pfvs_a(x)
    with torch.no_grad():   # a prefix of batch 1 is shared by the batch
        assert_matches(sub(pfvs.vectors, pfvs.prefix[:1]),
                       sub(pfvs.vectors, pfvs.prefix[:1].expand(2, -1, -1)))
    with pytest.raises(IerfError, match="prefix token"):
        sub(pfvs.vectors)


def test_torchvision_vit_small_and_vit_b_16() -> None:
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3,
                                               num_heads=2, hidden_dim=32, mlp_dim=64,
                                               num_classes=5)
    tiny = ierf.as_model(net)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    check_pair(tiny, "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_2", x)
    check_pair(tiny, "encoder.layers.encoder_layer_1", "output", x)
    vit = ierf.load_model("vit_b_16", weights=None)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    check_pair(vit, "encoder.layers.encoder_layer_9", "output", x)


def test_gradients_flow_and_equal_those_of_the_full_model(toy) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    sub = Subnetwork(toy, "layer2", "output")
    pfvs = sub.pfvs_a(x).vectors.requires_grad_()
    (grad,) = torch.autograd.grad(sub(pfvs)[:, 3].sum(), pfvs)
    # the same gradient through the full model, with layer2's output made a leaf
    leaf = toy.pfvs(x, "layer2")["layer2"].as_map().requires_grad_()
    handle = toy.module("layer2").register_forward_hook(lambda *_: leaf)
    try:
        (full,) = torch.autograd.grad(toy.net(x)[:, 3].sum(), leaf)
    finally:
        handle.remove()
    assert grad.abs().sum() > 0
    assert_matches(grad, full.flatten(2).transpose(1, 2))


class Untraceable(nn.Module):
    """The toy ResNet behind data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) if x.sum() > -1e30 else -self.net(x)


def test_hooked_fallback_warns_and_gives_the_same_values_and_gradients(toy) -> None:
    model = ierf.Model(Untraceable(toy.net), "untraceable", toy.class_names, toy.preprocessing)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with pytest.warns(UserWarning, match="cannot trace.*full forward"):
        hooked = Subnetwork(model, "net.layer1", "net.layer3")
    fx_sub = Subnetwork(toy, "layer1", "layer3")
    assert (hooked.mode, fx_sub.mode) == ("hooked", "fx")
    pfvs = fx_sub.pfvs_a(x).vectors
    assert_matches(hooked(pfvs), toy.pfvs(x, "layer3")["layer3"].vectors)
    grads = []
    for sub in (hooked, fx_sub):
        p = pfvs.clone().requires_grad_()
        grads.append(torch.autograd.grad(sub(p).square().sum(), p)[0])
    assert_matches(*grads)
    with pytest.warns(UserWarning):
        out = Subnetwork(model, "net.layer3", "output")(toy.pfvs(x, "layer3")["layer3"])
    assert_matches(out, toy(x))
    with pytest.raises(IerfError, match="does not depend"):    # found before tracing
        Subnetwork(model, "net.layer3", "net.layer1")


def test_a_cut_that_is_not_a_cut_is_refused(resnet50, x64) -> None:
    with pytest.raises(IerfError, match="not a cut") as e:
        Subnetwork(resnet50, "layer3.2.conv1", "layer4.1", example=x64[:1])
    msg = str(e.value)
    assert "bypasses 'layer3.2.conv1'" in msg and "'layer3.1' joins" in msg
    assert "'layer3.2'" in msg                                    # what to pass instead
    with pytest.raises(IerfError, match="not a cut"):             # b encloses a
        Subnetwork(resnet50, "layer3.2.bn1", "layer3.2", example=x64[:1])
    vit = tiny_timm_vit()
    with pytest.raises(IerfError, match="residual connection"):
        Subnetwork(vit, "blocks.1.attn", "output", example=torch.zeros(1, 3, 32, 32))


def test_b_before_a_and_bad_names_are_refused(resnet50, x64) -> None:
    with pytest.raises(IerfError, match="'layer3.2' does not depend on layer 'layer4.1'.*swap"):
        Subnetwork(resnet50, "layer4.1", "layer3.2", example=x64[:1])
    with pytest.raises(UnknownNameError, match="layer4.9"):
        Subnetwork(resnet50, "layer3.2", "layer4.9", example=x64[:1])
    with pytest.raises(IerfError, match="example="):
        Subnetwork(ierf.as_model(resnet50.net), "layer3.2", "layer4.1")
    sub = Subnetwork(resnet50, "layer3.2", "layer4.1", example=x64[:1])
    with pytest.raises(IerfError, match="positions"):
        sub(torch.zeros(1, 5, 1024))
