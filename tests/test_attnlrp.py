"""AttnLRP: conservation through ViTs, its rules' mathematics, token/latent iERFs, localisation."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import InputXGradient
from PIL import Image
from torch import nn
from torch.overrides import TorchFunctionMode

import ierf
from ierf.cli import main
from ierf.data.synthetic import generate
from ierf.local.attnlrp import AttnLRP
from ierf.local.attnlrp_rules import SOFTMAX_FUNCTIONS, AttnLRPMode
from ierf.local.mha import explicit_attention

ADDITIVE = ("bias", "cls_token", "pos_embed", "class_token", "pos_embedding")


def tiny_timm(fused: bool = True, zero_bias: bool = False) -> ierf.Model:
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, mlp_ratio=2)
    for name, p in net.named_parameters():
        p.data.normal_(0, 0.3)
        if zero_bias and name.endswith(ADDITIVE):
            p.data.zero_()
    for block in net.blocks:
        block.attn.fused_attn = fused
    return ierf.Model(net, "tiny-timm", [str(i) for i in range(5)], num_prefix_tokens=1,
                      patch_grid=(4, 4))


def tiny_torchvision(zero_bias: bool = False) -> ierf.Model:
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=32, mlp_dim=64,
                                               num_classes=5)
    for name, p in net.named_parameters():
        p.data.normal_(0, 0.3)
        if zero_bias and name.endswith(ADDITIVE):
            p.data.zero_()
    return ierf.Model(net.eval(), "tiny-tv", [str(i) for i in range(5)], num_prefix_tokens=1,
                      patch_grid=(4, 4))


@pytest.fixture(scope="module")
def synthetic(toy_vit):
    batch = generate(16, seed=79, split="test")
    x = toy_vit.normalize(batch.images)
    return batch, x


class SoftmaxLedger(TorchFunctionMode):
    """Records every softmax (input, output) beneath the AttnLRP mode: the relevance each one
    does not pass on (its Taylor bias term) is Σ out ⊙ ĝ_out − Σ in ⊙ ĝ_in."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in SOFTMAX_FUNCTIONS and args[0].requires_grad:
            self.calls.append((args[0], out))
        return out


def ledger(model: ierf.Model, x: torch.Tensor, target: torch.Tensor, cp: bool = False):
    """(input relevance, bias relevance, softmax loss, explained logits), all summed, from one
    rule-modified backward pass that also reaches the additive parameters."""
    net = model.net
    sources = [p for n, p in net.named_parameters() if n.endswith(ADDITIVE)]
    x = x.detach().requires_grad_(True)
    record = SoftmaxLedger()
    with explicit_attention(net), record, AttnLRPMode(cp=cp):
        logits = net(x)
    score = logits.gather(1, target[:, None]).sum()
    ins = [c[0] for c in record.calls]
    outs = [c[1] for c in record.calls]
    grads = torch.autograd.grad(score, [x, *sources, *ins, *outs], allow_unused=True)
    zero = torch.zeros(())
    g_x, g_src = grads[0], grads[1:1 + len(sources)]
    g_in, g_out = grads[1 + len(sources):1 + len(sources) + len(ins)], grads[-len(outs):]
    with torch.no_grad():
        r_bias = sum(((p * g).sum() for p, g in zip(sources, g_src) if g is not None), zero)
        lost = sum(((o * go).sum() - (i * gi).sum()
                    for i, o, gi, go in zip(ins, outs, g_in, g_out) if gi is not None), zero)
        return (x * g_x).detach(), float(r_bias), float(lost), float(score)


# --- conservation ---------------------------------------------------------------------------

@pytest.mark.parametrize("build", [lambda: tiny_timm(True, True), lambda: tiny_timm(False, True),
                                   lambda: tiny_torchvision(True)],
                         ids=["timm-fused", "timm-explicit", "torchvision"])
def test_bias_free_vit_conserves_the_logit_exactly_with_constant_attention(build):
    model = build()
    x = torch.randn(3, 3, 32, 32)
    target = torch.tensor([0, 3, 4])
    r = AttnLRP(model, attention="cp").relevance(x, target)["input"]
    with torch.no_grad():
        logits = model.net(x).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(r.sum((1, 2, 3)), logits, rtol=1e-4,
                               atol=1e-5 * logits.abs().max().item())


@pytest.mark.parametrize("build", [lambda: tiny_timm(True, True), lambda: tiny_timm(False, True),
                                   lambda: tiny_torchvision(True)],
                         ids=["timm-fused", "timm-explicit", "torchvision"])
def test_bias_free_vit_input_plus_softmax_terms_equal_the_logit(build):
    model = build()
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([1, 2])
    r_x, r_bias, lost, score = ledger(model, x, target)
    assert r_bias == pytest.approx(0.0, abs=1e-6)
    assert float(r_x.sum()) + lost == pytest.approx(score, rel=1e-4, abs=1e-4)
    assert abs(lost) > 1e-4 * abs(score)  # the softmax rule really does keep a share
    # the attributor's output is this same input relevance
    torch.testing.assert_close(AttnLRP(model).relevance(x, target)["input"], r_x)


@pytest.mark.parametrize("fused", [True, False])
def test_softmax_relevance_follows_the_attnlrp_rule(fused):
    model = tiny_timm(fused)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    record = SoftmaxLedger()
    with record, AttnLRPMode():
        logit = model.net(x)[:, 2].sum()
    (s_in, s_out), = record.calls[:1]
    g_in, g_out = torch.autograd.grad(logit, [s_in, s_out])
    r_out = s_out * g_out
    expected = s_in * (r_out - s_out * r_out.sum(-1, keepdim=True))  # Prop. 3.1
    torch.testing.assert_close(s_in * g_in, expected, rtol=1e-4, atol=1e-7)
    assert len(record.calls) == 2  # one softmax per block, whichever attention path


def test_trained_toy_vit_ledger_closes_and_reports_what_reaches_the_input(toy_vit, synthetic):
    batch, x = synthetic
    x, labels = x[:4], batch.labels[:4]
    for cp in (False, True):
        r_x, r_bias, lost, score = ledger(toy_vit, x, labels, cp=cp)
        total = float(r_x.sum()) + r_bias + lost
        assert total == pytest.approx(score, rel=1e-4, abs=1e-3)
        if cp:
            assert lost == 0.0
        print(f"toy-vit cp={cp}: logits {score:.3f} = input {float(r_x.sum()):.3f} "
              f"+ biases {r_bias:.3f} + softmax {lost:.3f}")
    # biases and softmax keep part of it, but most of the positive evidence reaches the pixels
    assert 0.2 * score < float(r_x.sum()) < 1.2 * score


def test_fused_and_explicit_attention_give_the_same_relevance():
    x = torch.randn(2, 3, 32, 32)
    fused, explicit = (AttnLRP(tiny_timm(f)).relevance(x, [1, 4])["input"] for f in (True, False))
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-6)


def test_patch_map_sums_the_pixels_of_each_patch_when_bias_free():
    model = tiny_timm(True, True)
    x = torch.randn(2, 3, 32, 32)
    method = AttnLRP(model, attention="cp")
    pixels = method.relevance(x, [0, 2])["input"].sum(1)
    patches = method.patch_map(x, [0, 2], layer="patch_embed")
    torch.testing.assert_close(patches, F.avg_pool2d(pixels[:, None], 8)[:, 0] * 64,
                               rtol=1e-4, atol=1e-6)
    norms = AttnLRP(model, attention="cp", reduce="norm").patch_map(x, [0, 2], layer="patch_embed")
    assert (norms >= patches.abs() / 32 ** 0.5 - 1e-6).all()  # ‖r‖₂ ≥ |Σ r| / √C


def test_epsilon_rule_on_a_linear_layer_matches_its_formula():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 5, bias=False))
    x = torch.randn(2, 3, 4, 4)
    target = torch.tensor([1, 3])
    eps = 0.5
    r = AttnLRP(net, epsilon=eps).relevance(x, target)["input"]
    w = net[1].weight[target]  # (2, 48)
    xf = x.flatten(1)
    z = (xf * w).sum(1, keepdim=True)
    expected = xf * w * z / (z + eps * z.sign())  # R_i = x_i w_ci R_c / (z_c + ε sign z_c)
    torch.testing.assert_close(r.flatten(1), expected.detach())
    assert not torch.allclose(r, AttnLRP(net).relevance(x, target)["input"])


def test_small_epsilon_on_a_vit_changes_little():
    model = tiny_timm(True, True)
    x = torch.randn(2, 3, 32, 32)
    plain = AttnLRP(model, attention="cp").relevance(x, [0, 1])["input"]
    eps = AttnLRP(model, attention="cp", epsilon=1e-6).relevance(x, [0, 1])["input"]
    torch.testing.assert_close(eps, plain, rtol=1e-3, atol=1e-3 * plain.abs().max().item())
    torch.testing.assert_close(eps.sum((1, 2, 3)), plain.sum((1, 2, 3)), rtol=1e-3, atol=1e-5)


def test_on_a_purely_linear_net_it_is_gradient_times_input():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    x = torch.randn(3, 3, 8, 8)
    target = torch.tensor([0, 2, 4])
    ours = AttnLRP(net).attribute(x, target)
    ref = InputXGradient(net).attribute(x.clone().requires_grad_(True), target=target).sum(1)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-6)


# --- behaviour ------------------------------------------------------------------------------

def test_batched_equals_one_by_one(toy_vit, synthetic):
    batch, x = synthetic
    x, labels = x[:3], batch.labels[:3]
    method = AttnLRP(toy_vit)
    together = method.attribute(x, labels)
    alone = torch.cat([method.attribute(x[i:i + 1], int(labels[i])) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_device_follows_the_input(device):
    model = tiny_timm()
    model.net.to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    out = AttnLRP(model).attribute(x, 1)
    assert out.device.type == device and out.shape == (2, 32, 32) and torch.isfinite(out).all()
    ierfs = AttnLRP(model).ierfs(x, [ierf.PFVTarget("blocks.0", p) for p in range(3)])
    assert ierfs.device.type == device and ierfs.shape == (3, 2, 32, 32)


def model_state(net: nn.Module) -> list:
    return [(n, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
             "forward" in m.__dict__, getattr(m, "fused_attn", None)) for n, m in net.named_modules()]


@pytest.mark.parametrize("build", [lambda: tiny_timm(True), lambda: tiny_timm(False),
                                   tiny_torchvision], ids=["timm-fused", "timm-explicit", "tv"])
def test_the_model_is_left_as_it_was(build):
    model = build()
    net = model.net
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    before = model_state(net)
    grad_before = torch.autograd.grad(net(x)[0, 1], x)[0]
    method = AttnLRP(model)
    method.attribute(x, 1)
    with pytest.raises(ierf.IerfError):
        method.ierfs(x, [ierf.PFVTarget("blocks.0" if hasattr(net, "blocks") else
                                        "encoder.layers.0", 99)])  # fails midway
    assert model_state(net) == before
    assert all(p.requires_grad for p in net.parameters())
    assert torch._C._len_torch_function_stack() == 0  # no mode left behind
    torch.testing.assert_close(torch.autograd.grad(net(x)[0, 1], x)[0], grad_before)
    # the attribution itself differs from the plain gradient: the rules were really applied
    plain = (x * grad_before).sum(1).detach()
    assert not torch.allclose(method.attribute(x, 1), plain, rtol=1e-3, atol=1e-5)


def test_torchvision_vit_b_16_through_the_registry():
    model = ierf.load_model("vit_b_16", weights=None)
    nn.init.normal_(model.net.heads.head.weight, std=0.02)  # torchvision initialises it to zero
    x = torch.randn(1, 3, 224, 224)
    with ierf.attributor("attnlrp", model) as method:
        out = method.attribute(x, 7)
    assert out.shape == (1, 224, 224) and torch.isfinite(out).all() and out.abs().sum() > 0
    assert not any("forward" in m.__dict__ for m in model.net.modules())


def test_bad_options_and_targets_say_what_to_do(toy_vit):
    with pytest.raises(ierf.IerfError, match="attention rule"):
        AttnLRP(toy_vit, attention="softmax")
    with pytest.raises(ierf.IerfError, match="one layer"):
        AttnLRP(toy_vit).ierfs(torch.zeros(1, 3, 64, 64), [ierf.PFVTarget("blocks.0", 0),
                                                           ierf.PFVTarget("blocks.1", 0)])
    with pytest.raises(ierf.IerfError, match="come after"):
        AttnLRP(toy_vit).relevance(torch.zeros(1, 3, 64, 64), ierf.PFVTarget("blocks.0", 0),
                                   layers=["blocks.2"])
    with pytest.raises(ierf.IerfError, match="prefix tokens"):
        AttnLRP(toy_vit).ierfs(torch.zeros(1, 3, 64, 64), [ierf.PFVTarget("blocks.0", -2)])


# --- iERFs ----------------------------------------------------------------------------------

def test_patch_embedding_token_ierf_lies_in_its_patch(toy_vit, synthetic):
    _, x = synthetic
    positions = [0, 9, 27, 63]
    maps = AttnLRP(toy_vit).ierfs(x[:2], [ierf.PFVTarget("patch_embed", p) for p in positions],
                                  internal_batch_size=3)
    assert maps.shape == (4, 2, 64, 64)
    for k, p in enumerate(positions):
        inside = torch.zeros(64, 64, dtype=torch.bool)
        r, c = divmod(p, 8)
        inside[8 * r:8 * r + 8, 8 * c:8 * c + 8] = True
        assert maps[k][:, ~inside].abs().max() == 0
        assert (maps[k][:, inside].abs().sum((1,)) > 0).all()


def test_token_ierf_sums_to_one_when_conserved():
    model = tiny_timm(True, True)
    x = torch.randn(2, 3, 32, 32)
    method = AttnLRP(model, attention="cp")
    maps = torch.cat([method.ierfs(x, [ierf.PFVTarget("blocks.0", 5)]),
                      method.ierfs(x, [ierf.PFVTarget("blocks.1", 10),
                                       ierf.PFVTarget("blocks.1", -1)])])  # -1: the CLS token
    torch.testing.assert_close(maps.sum((2, 3)), torch.ones(3, 2), rtol=1e-4, atol=1e-4)
    outside = maps[0].clone()
    outside[:, 8:16, 4:8] = 0  # token 5 is patch (1, 1); attention spreads its iERF beyond it
    assert outside.abs().sum() > 0


def test_batched_ierfs_equal_one_by_one(toy_vit, synthetic):
    _, x = synthetic
    x = x[:2]
    u = torch.randn(96, generator=torch.Generator().manual_seed(0))
    targets = [ierf.PFVTarget("blocks.1", 3), ierf.PFVTarget("blocks.1", [7, 40]),
               ierf.PFVTarget("blocks.1", -1), ierf.ConceptTarget("blocks.1", u),
               ierf.ConceptTarget("blocks.1", u, position=12)]
    method = AttnLRP(toy_vit)
    batched = method.ierfs(x, targets, internal_batch_size=2)
    alone = torch.stack([method.relevance(x, t)["input"].sum(1) for t in targets])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-6)


def test_concept_ierfs_are_linear_in_the_direction(toy_vit, synthetic):
    _, x = synthetic
    g = torch.Generator().manual_seed(1)
    u, w = torch.randn(96, generator=g), torch.randn(96, generator=g)
    maps = AttnLRP(toy_vit).ierfs(x[:2], [ierf.ConceptTarget("blocks.2", v)
                                          for v in (u, w, 2 * u - 3 * w)])
    torch.testing.assert_close(maps[2], 2 * maps[0] - 3 * maps[1], rtol=1e-4,
                               atol=1e-5 * maps.abs().max().item())


class LinearSAE(nn.Module):
    """encode(v) = act(v Wᵀ + b): identity activation, or ReLU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> None:
        super().__init__()
        self.enc = nn.Linear(weight.shape[1], weight.shape[0])
        self.enc.weight.data.copy_(weight)
        self.enc.bias.data.copy_(bias)
        self.relu = relu

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        z = self.enc(v)
        return F.relu(z) if self.relu else z


def test_latent_ierf_of_a_linear_sae_is_the_concept_ierf(toy_vit, synthetic):
    _, x = synthetic
    g = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(6, 96, generator=g), torch.randn(6, generator=g)
    sae = LinearSAE(weight, bias, relu=False)
    method = AttnLRP(toy_vit)
    latent = method.ierfs(x[:2], [ierf.LatentTarget("blocks.1", sae, 4),
                                  ierf.LatentTarget("blocks.1", sae, 4, position=20)])
    concept = method.ierfs(x[:2], [ierf.ConceptTarget("blocks.1", weight[4]),
                                   ierf.ConceptTarget("blocks.1", weight[4], position=20)])
    torch.testing.assert_close(latent, concept, rtol=1e-4, atol=1e-6)


def test_relu_sae_latent_ierf_gathers_the_tokens_where_it_fires(toy_vit, synthetic):
    _, x = synthetic
    x = x[:1]
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(4, 96, generator=g), torch.randn(4, generator=g)
    sae = LinearSAE(weight, bias, relu=True)
    pre = toy_vit.pfvs(x, "blocks.1")["blocks.1"].vectors[0] @ weight[2] + bias[2]
    active = torch.nonzero(pre > 0)[:, 0].tolist()
    assert 0 < len(active) < pre.numel()  # a latent that fires on some tokens only
    method = AttnLRP(toy_vit)
    latent = method.ierfs(x, [ierf.LatentTarget("blocks.1", sae, 2)])[0]
    per_token = method.ierfs(x, [ierf.ConceptTarget("blocks.1", weight[2], position=p)
                                 for p in active])
    torch.testing.assert_close(latent, per_token.sum(0), rtol=1e-4,
                               atol=1e-5 * latent.abs().max().item())


def test_latent_target_relevance_is_gradient_times_input():
    sae = LinearSAE(torch.eye(3), torch.zeros(3), relu=False)
    v = torch.randn(2, 5, 3)
    r = ierf.LatentTarget("x", sae, 1).relevance(v)
    torch.testing.assert_close(r, v[..., 1])
    with pytest.raises(ierf.IerfError, match="out of range"):
        ierf.LatentTarget("x", sae, 3).relevance(v)


# --- localisation and CLI -------------------------------------------------------------------

def attribution_localisation(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = saliency.clamp_min(0)
    return (pos * mask).sum((1, 2)) / pos.sum((1, 2)).clamp_min(1e-12)


def test_attnlrp_localises_the_class_parts_better_than_the_gradient(toy_vit, synthetic):
    batch, x = synthetic
    area = float(batch.parts_mask.float().mean())
    scores = {m: float(attribution_localisation(
        ierf.attributor(m, toy_vit).attribute(x, batch.labels), batch.parts_mask).mean())
        for m in ("attnlrp", "gradient")}
    print(f"positive mass on parts: {scores}, mask area {area:.3f}")
    assert scores["attnlrp"] > 2 * area
    assert scores["attnlrp"] > scores["gradient"] + 0.1
    patch = AttnLRP(toy_vit, resolution="patch", reduce="sum").attribute(x, batch.labels)
    assert float(attribution_localisation(patch, batch.parts_mask).mean()) > 2 * area


def test_cli_explains_a_synthetic_png_with_the_toy_vit(tmp_path, capsys):
    image = generate(1, seed=5, split="test").images[0]
    png = tmp_path / "scene.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(png)
    out = tmp_path / "scene_attnlrp.png"
    assert main(["explain", str(png), "--model", "toy-vit", "--method", "attnlrp",
                 "-o", str(out), "--save-tensor"]) == 0
    assert "scene" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert (tmp_path / "scene_attnlrp.safetensors").is_file()
