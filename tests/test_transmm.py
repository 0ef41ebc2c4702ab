"""TransMM, rollout and raw attention against independent per-image, per-layer loops."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import ierf
from ierf.local.attention import trace


def tiny_vit(fused: bool = True, registers: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=8, depth=3, num_heads=2, num_classes=5, mlp_ratio=2,
        reg_tokens=registers)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    for block in net.blocks:
        block.attn.fused_attn = fused
    return net.eval()


def manual_forward(net: torch.nn.Module, x: torch.Tensor
                   ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The timm ViT written out block by block (its own forward unused): logits, per-block
    attention probabilities and block outputs, all with gradients retained."""
    t = net.norm_pre(net._pos_embed(net.patch_embed(x)))
    attentions, outputs = [], []
    for blk in net.blocks:
        a = blk.attn
        h = blk.norm1(t)
        b, n, c = h.shape
        q, k, v = a.qkv(h).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        A = (q @ k.transpose(-2, -1) * a.scale).softmax(-1)
        if A.requires_grad:
            A.retain_grad()
        attentions.append(A)
        t = t + blk.ls1(a.proj((A @ v).transpose(1, 2).reshape(b, n, c)))
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
        if t.requires_grad:
            t.retain_grad()
        outputs.append(t)
    return net.forward_head(net.norm(t)), attentions, outputs


def reference_transmm(net: torch.nn.Module, x: torch.Tensor, classes: list[int],
                      gates=None) -> torch.Tensor:
    """(B, T) CLS rows of R^(L), one image and one layer at a time (thesis Eqs. 3.16–3.20);
    ``gates(i, outputs)`` may return {layer: (T,) column gates} for image ``i`` (Eq. 6.12)."""
    rows = []
    for i in range(len(x)):
        logits, attentions, outputs = manual_forward(net, x[i:i + 1])
        logits[0, classes[i]].backward()
        per_layer = gates(i, outputs) if gates else {}
        T = attentions[0].shape[-1]
        R = torch.eye(T)
        for layer, A in enumerate(attentions):
            A_bar = torch.eye(T) + (A.grad[0] * A[0]).clamp(min=0).mean(0)
            if layer in per_layer:
                A_bar = A_bar @ torch.diag(per_layer[layer])
            R = R + A_bar @ R
        rows.append(R[0].detach())
    return torch.stack(rows)


def upsample(row: torch.Tensor, prefix: int, grid: int, size: int) -> torch.Tensor:
    patches = row[:, prefix:].reshape(-1, 1, grid, grid)
    return F.interpolate(patches, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("registers", [0, 2])
def test_transmm_equals_a_per_layer_loop(fused, registers):
    net = tiny_vit(fused, registers)
    x = torch.randn(3, 3, 16, 16)
    classes = [1, 4, 0]
    ours = ierf.attributor("transmm", net).attribute(x, classes)
    ref = upsample(reference_transmm(net, x, classes), 1 + registers, 4, 16)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert all(b.attn.fused_attn is fused for b in net.blocks)  # the switch is restored


def test_transmm_is_class_specific_and_rollout_is_not():
    net = tiny_vit()
    x = torch.randn(1, 3, 16, 16)
    for method, specific in (("transmm", True), ("rollout", False), ("raw-attention", False)):
        a = ierf.attributor(method, net)
        assert torch.equal(a.attribute(x, 0), a.attribute(x, 3)) is not specific


def test_rollout_and_raw_attention_against_loops():
    net = tiny_vit()
    x = torch.randn(2, 3, 16, 16)
    rollout = ierf.attributor("rollout", net)
    R = rollout.rollout(x)
    torch.testing.assert_close(R.sum(-1), torch.ones(2, 17))  # rows stay distributions
    with torch.no_grad():
        _, attentions, _ = manual_forward(net, x)
    for i in range(2):
        ref = torch.eye(17)
        for A in attentions:
            A_hat = 0.5 * A[i].mean(0) + 0.5 * torch.eye(17)  # rows of A sum to 1
            ref = A_hat @ ref
        torch.testing.assert_close(R[i], ref)
    torch.testing.assert_close(rollout.attribute(x), upsample(R[:, 0], 1, 4, 16))
    raw = ierf.attributor("raw-attention", net).attribute(x)
    torch.testing.assert_close(raw, upsample(attentions[-1].mean(1)[:, 0], 1, 4, 16))


def test_torchvision_attention_matches_need_weights():
    model = ierf.load_model("vit_b_16", weights=None)
    torch.manual_seed(0)
    model.net.heads.head.weight.data.normal_(0, 0.02)  # torchvision zero-initialises the head
    x = torch.randn(1, 3, 224, 224)
    block = model.net.encoder.layers[0]
    seen = {}
    handle = block.ln_1.register_forward_hook(lambda _m, _i, out: seen.setdefault("h", out))

    def score(logits):
        seen["logits"] = logits.detach()
        return logits[:, 7]

    try:
        t = trace(model, x, score, residual_blocks=[0])
    finally:
        handle.remove()
    h = seen["h"]
    _, weights = block.self_attention(h, h, h, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(t.attentions[0], weights, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the explicit attention leaves the model's function unchanged
        torch.testing.assert_close(seen["logits"], model.net(x), rtol=1e-4, atol=1e-5)
    assert len(t.attentions) == 12 and t.attention_grads[0].shape == (1, 12, 197, 197)
    assert t.residual_grads["encoder.layers.encoder_layer_0"].abs().sum() > 0
    assert "forward" not in vars(block.self_attention)  # the explicit forward is removed
    m = ierf.attributor("transmm", model).attribute(x, 7)
    assert m.shape == (1, 224, 224) and torch.isfinite(m).all() and m.min() >= 0


def test_hooks_are_released_and_batches_are_independent():
    model = ierf.load_model("toy-vit")
    x = torch.randn(3, 3, 64, 64)
    for method in ("transmm", "gated-transmm", "rollout", "raw-attention"):
        with ierf.attributor(method, model) as a:
            both = a.attribute(x, [2, 5, 1])
            one = a.attribute(x[1:2], 5)
        torch.testing.assert_close(both[1:2], one, rtol=1e-5, atol=1e-7)
        assert both.device == x.device and both.dtype == x.dtype
    for m in model.net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(b.attn.fused_attn == timm.layers.use_fused_attn() for b in model.net.blocks)


def test_frozen_weights_give_the_same_map():
    net = tiny_vit()
    x = torch.randn(2, 3, 16, 16)
    before = ierf.attributor("transmm", net).attribute(x, [0, 2])
    net.requires_grad_(False)
    torch.testing.assert_close(ierf.attributor("transmm", net).attribute(x, [0, 2]), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_maps_follow_the_input_to_cuda():
    model = ierf.load_model("toy-vit")
    model.net.cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    for method in ("transmm", "gated-transmm", "rollout"):
        assert ierf.attributor(method, model).attribute(x).device == x.device


def test_clear_errors_for_cnns_and_unknown_blocks():
    with pytest.raises(ierf.IerfError, match="vision transformers"):
        ierf.attributor("transmm", ierf.load_model("toy-resnet"))
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=3,
        global_pool="avg", class_token=False)
    with pytest.raises(ierf.IerfError, match="CLS token"):
        ierf.attributor("rollout", net)
    with pytest.raises(ierf.UnknownNameError, match="blocks.3"):
        ierf.attributor("gated-transmm", ierf.load_model("toy-vit"), layers=["blocks.9"])


@pytest.mark.parametrize("method", ["transmm", "gated-transmm"])
def test_cli_explains_a_synthetic_png(tmp_path, capsys, method):
    from ierf.cli import main
    from ierf.data.synthetic import CLASS_NAMES, generate

    batch = generate(1, seed=3, split="test")
    png = tmp_path / "scene.png"
    Image.fromarray((batch.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                    ).save(png)
    out = tmp_path / f"scene_{method}.png"
    assert main(["explain", str(png), "--model", "toy-vit", "--method", method,
                 "-o", str(out), "--save-tensor"]) == 0
    assert out.is_file() and out.with_suffix(".safetensors").is_file()
    assert CLASS_NAMES[int(batch.labels[0])] in capsys.readouterr().out
