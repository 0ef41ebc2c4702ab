"""One target protocol: SRD and AttnLRP explain any ``scalar(pfvs)`` target the same way."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import timm
import torch
from torch import nn

import ierf
from ierf.local.attnlrp import AttnLRP
from ierf.local.srd import SRD
from ierf.models.pfv import PFVs
from ierf.targets import (
    LayerTarget,
    OutputTarget,
    Target,
    resolve_target,
    select_tokens,
    start_relevance,
)


@dataclass(frozen=True)
class ChannelMean:
    """A target type that neither attributor knows: the mean of ``channel`` over the grid."""

    layer: str
    channel: int

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        return pfvs.vectors[..., self.channel].mean(1)


@dataclass(frozen=True)
class NormAt:
    """Nonlinear: ‖v_p‖ of the PFV at ``position`` (gradient v_p/‖v_p‖)."""

    layer: str
    position: int

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        return select_tokens(pfvs, self.position, self.layer).norm(dim=-1)


@dataclass(frozen=True)
class Twice(ierf.PFVTarget):
    """A PFVTarget whose scalar is doubled: relevance 2 on its PFV."""

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        return 2 * super().scalar(pfvs)


def bias_free_cnn() -> nn.Sequential:
    """No biases: SRD conserves relevance exactly under either bias rule."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GELU(),
                         nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).eval()


def bias_free_vit() -> ierf.Model:
    """Tiny timm ViT without biases, CLS or position embedding: CP-AttnLRP conserves."""
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, mlp_ratio=2)
    for name, p in net.named_parameters():
        p.data.normal_(0, 0.3)
        if name.endswith(("bias", "cls_token", "pos_embed")):
            p.data.zero_()
    return ierf.Model(net.eval(), "tiny", [str(i) for i in range(5)], num_prefix_tokens=1,
                      patch_grid=(4, 4))


def unit(c: int, n: int) -> torch.Tensor:
    return torch.eye(n)[c]


def test_built_in_targets_follow_the_protocol():
    for t in (ierf.PFVTarget("a", 0), ierf.ConceptTarget("a", torch.ones(3)),
              ierf.ScalarTarget("a", lambda v: v.sum((1, 2))), ierf.LatentTarget("a", None, 0),
              ChannelMean("a", 0)):
        assert isinstance(t, LayerTarget)
    assert isinstance(ierf.ClassTarget(1), Target) and not isinstance(ierf.ClassTarget(1),
                                                                        LayerTarget)
    logits = torch.randn(2, 4)
    wrapped = resolve_target(lambda out: out[:, 2], logits)
    assert isinstance(wrapped, OutputTarget)
    torch.testing.assert_close(wrapped.scalar(logits), logits[:, 2])
    torch.testing.assert_close(ierf.ClassTarget([1, 3]).scalar(logits), logits[[0, 1], [1, 3]])


def test_srd_explains_a_new_target_type_with_conservation():
    net = bias_free_cnn()
    x = torch.randn(2, 3, 16, 16)
    srd = SRD(net, layer="4")
    r = srd.relevance(x, ChannelMean("2", 5), layers=["2"])
    pfv = net[:3](x)
    torch.testing.assert_close(r["2"], pfv[:, 5] / 64)  # ⟨v_p, ∂z/∂v_p⟩ = v_p5 / N
    torch.testing.assert_close(r["input"].sum((1, 2)), pfv[:, 5].mean((1, 2)), rtol=1e-4,
                               atol=1e-6)  # Σ iERF = Σ start relevance = z
    concept = srd.relevance(x, ierf.ConceptTarget("2", unit(5, 8) / 64))
    torch.testing.assert_close(r["input"], concept["input"], rtol=1e-5, atol=1e-7)
    # batched with built-in targets, equal to one at a time
    targets = [ChannelMean("2", 1), ierf.PFVTarget("2", 9), NormAt("2", 9)]
    many = srd.ierfs(x, targets, internal_batch_size=2)
    for k, t in enumerate(targets):
        torch.testing.assert_close(many[k], srd.relevance(x, t)["input"], rtol=1e-5, atol=1e-7)


def test_srd_explains_a_nonlinear_new_target_as_its_linearisation():
    net = bias_free_cnn()
    x = torch.randn(1, 3, 16, 16)
    srd = SRD(net)
    v = net[:3](x).flatten(2)[0, :, 9]
    norm = srd.relevance(x, NormAt("2", 9), layers=["2"])
    torch.testing.assert_close(norm["input"].sum(), v.norm(), rtol=1e-4, atol=1e-6)
    direction = srd.relevance(x, ierf.ConceptTarget("2", v / v.norm(), position=9))
    torch.testing.assert_close(norm["input"], direction["input"], rtol=1e-5, atol=1e-7)


def test_attnlrp_explains_a_new_target_type_with_conservation():
    model = bias_free_vit()
    x = torch.randn(2, 3, 32, 32)
    method = AttnLRP(model, attention="cp")
    pfvs = model.pfvs(x, "blocks.0")["blocks.0"].vectors
    maps = method.ierfs(x, [ChannelMean("blocks.0", 3), NormAt("blocks.0", 6)])
    torch.testing.assert_close(maps.sum((2, 3)), torch.stack([pfvs[..., 3].mean(1),
                                                              pfvs[:, 6].norm(dim=-1)]),
                               rtol=1e-4, atol=1e-5)
    concept = method.ierfs(x, [ierf.ConceptTarget("blocks.0", unit(3, 32) / 16)])
    torch.testing.assert_close(maps[0], concept[0], rtol=1e-5, atol=1e-7)
    for b in range(2):
        u = pfvs[b, 6] / pfvs[b, 6].norm()
        direction = method.ierfs(x[b:b + 1], [ierf.ConceptTarget("blocks.0", u, position=6)])
        torch.testing.assert_close(maps[1, b], direction[0, 0], rtol=1e-5, atol=1e-7)


def test_attnlrp_start_relevance_is_the_targets_relevance_as_in_srd():
    """AttnLRP's relevance at the target's layer is the target's (as SRD's): a PFVTarget
    subclass with another scalar is honoured, not sorted by its class."""
    model = bias_free_vit()
    x = torch.randn(2, 3, 32, 32)
    layer = "blocks.1"
    u = torch.randn(32, generator=torch.Generator().manual_seed(0))
    targets = [ierf.PFVTarget(layer, 3), Twice(layer, 5), ierf.ConceptTarget(layer, u),
               ierf.ConceptTarget(layer, u, position=7), ChannelMean(layer, 2)]
    pfvs = model.pfvs(x, layer)[layer].vectors
    for t in targets:
        attn = AttnLRP(model).relevance(x, t, layers=[layer])[layer].sum(-1)[:, 1:]
        srd = SRD(model).relevance(x, t)[layer].flatten(1)
        torch.testing.assert_close(attn, start_relevance(t, pfvs), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(srd, start_relevance(t, pfvs), rtol=1e-4, atol=1e-5)
    twice = AttnLRP(model).relevance(x, Twice(layer, 5), layers=[layer])[layer].sum(-1)
    torch.testing.assert_close(twice[:, 6], torch.full((2,), 2.0))  # token 5 after the CLS
    cls = AttnLRP(model).relevance(x, ierf.PFVTarget(layer, -1), layers=[layer])[layer].sum(-1)
    torch.testing.assert_close(cls, torch.eye(17)[[0, 0]])  # the CLS token's relevance is 1


class NoScalar:
    layer = "2"


@dataclass(frozen=True)
class PerPosition:
    """Wrong: one score per position, not per image."""

    layer: str

    def scalar(self, pfvs: PFVs) -> torch.Tensor:
        return pfvs.vectors.sum(-1)


def test_bad_targets_say_what_is_wrong():
    net = bias_free_cnn()
    x = torch.randn(1, 3, 16, 16)
    srd = SRD(net)
    with pytest.raises(ierf.IerfError, match="no scalar"):
        srd.relevance(x, NoScalar())
    with pytest.raises(ierf.IerfError, match="one score per image"):
        srd.relevance(x, PerPosition("2"))
    with pytest.raises(ierf.IerfError, match="module name"):
        srd.relevance(x, ChannelMean(2, 0))
    with pytest.raises(ierf.IerfError, match="non-empty list of PFV-level targets"):
        srd.ierfs(x, [])
    with pytest.raises(ierf.IerfError, match="non-empty list of PFV-level targets"):
        srd.ierfs(x, [ChannelMean("2", 0), ierf.ClassTarget(1)])
    with pytest.raises(ierf.IerfError, match="do not fit"):
        srd.relevance(x, ierf.PFVTarget("2", 64))
    with pytest.raises(ierf.IerfError, match="explains the model output"):
        ierf.attributor("gradient", net).attribute(x, ChannelMean("2", 0))
    with pytest.raises(ierf.IerfError, match="cannot use"):
        srd.attribute(x, 2.5)
    model = bias_free_vit()
    xv = torch.randn(1, 3, 32, 32)
    with pytest.raises(ierf.IerfError, match="no scalar"):
        AttnLRP(model).ierfs(xv, [NoScalar()])
    with pytest.raises(ierf.IerfError, match="one score per image"):
        AttnLRP(model).ierfs(xv, [PerPosition("blocks.0")])
    with pytest.raises(ierf.IerfError, match="unknown layer"):
        AttnLRP(model).relevance(xv, ChannelMean("blocks.9", 0))
