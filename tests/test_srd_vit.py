"""Our ViT extension of SRD: attention and LayerNorm σ frozen, tokens get iERFs."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import ierf
from ierf.local.frozen import FrozenMode
from ierf.local.srd import SRD
from ierf.local.srd_reference import sharing_ratios


def tiny_vit(fused: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=8, depth=3, num_heads=2, num_classes=5, mlp_ratio=2)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    for block in net.blocks:
        block.attn.fused_attn = fused  # F.scaled_dot_product_attention or explicit softmax
    return net.eval()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bias", ["proportional", "absorb"])
def test_vit_fast_path_equals_reference(fused, bias):
    net = tiny_vit(fused)
    x = torch.randn(2, 3, 16, 16)
    srd = SRD(net, bias=bias)  # default L: input of the last block
    r = srd.relevance(x, target=[1, 2])
    start = torch.cat([torch.zeros(2, 1), r["blocks.1"].flatten(1)], 1)  # CLS carries none
    ref = sharing_ratios(net, x, net.blocks[1], bias=bias, frozen=True).backward(start)
    torch.testing.assert_close(r["input"], ref.reshape(2, 16, 16),
                               atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


def test_vit_token_ierf_and_conservation_under_the_norm_rule():
    net = tiny_vit(True)
    x = torch.randn(1, 3, 16, 16)
    token = 6  # patch token at row 1, col 2 of the 4×4 grid
    fast = SRD(net, bias="proportional").relevance(x, ierf.PFVTarget("blocks.0", token))
    assert fast["input"].shape == (1, 16, 16) and fast["blocks.0"].shape == (1, 4, 4)
    start = torch.zeros(1, 17)
    start[0, 1 + token] = 1.0
    ref = sharing_ratios(net, x, net.blocks[0], bias="norm", frozen=True).backward(start)
    assert ref.sum().item() == pytest.approx(1.0, abs=1e-4)  # Σ μ = 1 chained through the ViT
    # attention mixes tokens: the iERF of one token reaches beyond its own 4×4 patch
    outside = fast["input"][0].clone()
    outside[4:8, 8:12] = 0
    assert outside.abs().sum() > 0


def test_toy_style_vit_through_the_registry():
    model = ierf.load_model("vit_tiny_patch16_224", weights=None)
    x = torch.randn(1, 3, 224, 224)
    maps = {m: ierf.attributor(m, model).attribute(x, 3) for m in ("srd", "srd-low")}
    assert all(v.shape == (1, 224, 224) and torch.isfinite(v).all() for v in maps.values())


def tiny_torchvision_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=3,
                                               num_heads=2, hidden_dim=8, mlp_dim=16,
                                               num_classes=5)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    return net.eval()


def test_torchvision_vit_frozen_forward_is_the_forward_and_fast_equals_reference():
    net = tiny_torchvision_vit()
    x = torch.randn(2, 3, 16, 16)
    with FrozenMode():  # nn.MultiheadAttention re-expressed with a recorded softmax
        frozen_logits = net(x)
    torch.testing.assert_close(frozen_logits, net(x), atol=1e-5, rtol=1e-5)
    srd = SRD(net)
    layer = srd.model.encoder_layer(x)
    assert layer == "encoder.layers.encoder_layer_1"  # input of the last block
    r = srd.relevance(x, target=[1, 2])
    start = torch.cat([torch.zeros(2, 1), r[layer].flatten(1)], 1)
    ref = sharing_ratios(net, x, net.get_submodule(layer), frozen=True).backward(start)
    torch.testing.assert_close(r["input"], ref.reshape(2, 16, 16),
                               atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


def test_multi_head_attention_with_a_mask_is_refused():
    mha = torch.nn.MultiheadAttention(8, 2).eval()
    x = torch.randn(4, 1, 8)
    with FrozenMode(), pytest.raises(ierf.IerfError, match="need_weights=False"):
        mha(x, x, x, attn_mask=torch.zeros(4, 4, dtype=torch.bool), need_weights=False)
