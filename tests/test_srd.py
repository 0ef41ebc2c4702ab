"""SRD: the fast one-VJP path against the explicit reference, conservation, formulations."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import ierf
from ierf.local.nonlinearity import NonlinearityMode
from ierf.local.srd import SRD
from ierf.local.srd_reference import sharing_ratios

ACTIVATIONS = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "elu": nn.ELU, "leakyrelu": lambda: nn.LeakyReLU(0.1),
    "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "hardswish": nn.Hardswish,
}
FUNCTIONAL = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu, "elu": F.elu}


def _randomise_bn(net: nn.Module, bias_scale: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, bias_scale, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, bias_scale, generator=g)
    return net.eval()


class Block(nn.Module):
    """Residual block with a depthwise conv, the activation given as a module."""

    def __init__(self, c: int, act: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.dw, self.bn2 = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)
        self.act = act  # reused twice, like torchvision's Bottleneck

    def forward(self, x):
        return self.act(self.bn2(self.dw(self.act(self.bn1(self.conv1(x))))) + x)


def small_net(act) -> nn.Sequential:
    """Stride-2 conv, BN, max-pool, a residual depthwise block, avg-pool head; ``act`` makes
    the activation modules."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), act(),
                        nn.MaxPool2d(2), Block(8, act()), nn.Conv2d(8, 12, 3, padding=1), act(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    return _randomise_bn(net)


class FunctionalNet(nn.Module):
    """The same kind of net with the activation called functionally."""

    def __init__(self, fn) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fn = fn
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Identity()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.fn(self.bn1(self.conv1(x)))
        h = self.out(self.fn(self.conv2(h)) + h)
        return self.head(h.mean((2, 3)))


def _reference(net, x, start, r_start, bias):
    return sharing_ratios(net, x, start, bias=bias).backward(r_start.flatten(1)).reshape(
        x.shape[0], *x.shape[2:])


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", ["proportional", "absorb"])
def test_fast_path_equals_reference_for_every_activation(act, bias):
    net = small_net(ACTIVATIONS[act])
    x = torch.randn(2, 3, 16, 16)
    srd = SRD(net, layer="6", bias=bias)
    r = srd.relevance(x, target=[1, 3])
    ref = _reference(net, x, net[6], r["6"], bias)
    torch.testing.assert_close(r["input"], ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("act", sorted(FUNCTIONAL))
def test_functional_activations_equal_reference(act):
    net = _randomise_bn(FunctionalNet(FUNCTIONAL[act]))
    x = torch.randn(2, 3, 12, 12)
    r = SRD(net, layer="out").relevance(x, target=0)
    ref = _reference(net, x, net.out, r["out"], "proportional")
    torch.testing.assert_close(r["input"], ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("layer, size", [("layer1", 24),
                                         pytest.param("layer2", 32, marks=pytest.mark.slow)])
def test_torchvision_resnet18_with_reused_relu_equals_reference(layer, size):
    torch.manual_seed(0)
    net = _randomise_bn(torchvision.models.resnet18(num_classes=6), 0.1)
    x = torch.randn(1, 3, size, size)
    r = SRD(net, layer=layer).relevance(x, target=2)
    ref = _reference(net, x, net.get_submodule(layer), r[layer], "proportional")
    torch.testing.assert_close(r["input"], ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("layer, size", [("blocks.1", 20),
                                         pytest.param("blocks.2", 32, marks=pytest.mark.slow)])
def test_efficientnet_lite0_architecture_equals_reference(layer, size):
    torch.manual_seed(0)
    net = _randomise_bn(timm.create_model("tf_efficientnet_lite0", num_classes=4), 0.1)
    x = torch.randn(1, 3, size, size)
    r = SRD(net, layer=layer).relevance(x, target=1)
    ref = _reference(net, x, net.get_submodule(layer), r[layer], "proportional")
    torch.testing.assert_close(r["input"], ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


def test_sharing_ratios_sum_to_one_under_the_norm_rule():
    net = small_net(nn.GELU)
    sr = sharing_ratios(net, torch.randn(2, 3, 16, 16), net[6], bias="norm")
    for k in sr.sink_grids:
        total = sum(sr.mu[s][k].sum(1) for s in sr.mu if k in sr.mu[s])  # Σ_i μ(i→j), Eq. 19
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def test_forward_and_backward_formulations_agree():
    net = small_net(nn.SiLU)
    x = torch.randn(2, 3, 16, 16)
    r_start = torch.rand(2, 16)
    for bias in ("norm", "proportional"):
        sr = sharing_ratios(net, x, net[6], bias=bias)
        torch.testing.assert_close(sr.forward(r_start), sr.backward(r_start), atol=1e-5, rtol=1e-4)


def test_relevance_is_conserved_layer_by_layer_without_bias_dominated_positions():
    torch.manual_seed(0)
    net = small_net(nn.ReLU)
    for m in net.modules():  # small positive folded biases: no position is bias-dominated
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.bias.data.fill_(0.01)
    x = torch.randn(2, 3, 16, 16)
    r = SRD(net, layer="6").relevance(x, target=1, layers=["2", "4"])
    total = r["6"].sum((1, 2))
    for name in ("4", "2", "input"):
        torch.testing.assert_close(r[name].sum((1, 2)), total, rtol=1e-4, atol=1e-6)
    absorbed = SRD(net, layer="6", bias="absorb").relevance(x, target=1)["input"].sum((1, 2))
    assert (absorbed < total).all()  # positive biases keep a share under Eq. 18 as written


def test_norm_rule_differs_little_from_proportional_on_a_trained_like_net():
    net = small_net(nn.ReLU)
    x = torch.randn(2, 3, 16, 16)
    r_start = torch.rand(2, 16)
    a = sharing_ratios(net, x, net[6], bias="norm").backward(r_start)
    b = sharing_ratios(net, x, net[6], bias="proportional").backward(r_start)
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert corr > 0.5


def test_batched_equals_one_by_one(lite0):
    x = torch.cat([lite0.preprocess(ierf.load_image(n)) for n in ("chelsea", "coffee")])
    srd = SRD(lite0)
    both = srd.relevance(x, target=[285, 967], layers=["blocks.2"])
    for i, c in enumerate((285, 967)):
        one = srd.relevance(x[i:i + 1], target=c, layers=["blocks.2"])
        for key in ("input", "blocks.2", "bn2"):
            torch.testing.assert_close(both[key][i], one[key][0], atol=1e-6, rtol=1e-4)


def test_hooks_and_modes_are_released(resnet50_random):
    net = resnet50_random.net
    x = torch.randn(1, 3, 64, 64)
    before = net(x)
    before.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    SRD(resnet50_random).attribute(x)
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    after = net(x)
    after.sum().backward()
    torch.testing.assert_close(after, before)
    for p, g in zip(net.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
    net.zero_grad()


def test_final_ratio_variants_follow_eqs_5_and_6():
    net = small_net(nn.ReLU)
    x = torch.randn(2, 3, 16, 16)
    raw = torch.stack([SRD(net, layer="6", final="raw").relevance(x, target=c)["6"]
                       for c in range(5)])  # Φ^c for every class
    mean = SRD(net, layer="6", final="mean").relevance(x, target=3)["6"]
    clamped = SRD(net, layer="6", final="clamped-mean").relevance(x, target=3)["6"]
    torch.testing.assert_close(mean, raw[3] - raw.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clamped, (raw[3] - raw.mean(0)).clamp_min(0), atol=1e-5, rtol=1e-5)
    # Eq. 6 for an avg-pool + linear head: α_k^c = W_ck / (H·W)
    a = net[:7](x)
    phi = torch.einsum("k,bkhw->bhw", net[9].weight[3] / 16, a)
    torch.testing.assert_close(raw[3], phi, atol=1e-5, rtol=1e-5)
    ones = SRD(net, layer="6", final="ones").relevance(x, target=3)["6"]
    assert torch.equal(ones, torch.ones_like(ones))


def test_pfv_ierf_stays_inside_the_receptive_field_and_sums_to_one():
    torch.manual_seed(0)
    net = small_net(nn.ELU)
    x = torch.randn(1, 3, 16, 16)
    pos = 5  # row 1, col 1 of the 4×4 grid of layer "4"
    ierf_map = SRD(net, bias="proportional").relevance(x, ierf.PFVTarget("4", pos))["input"][0]
    # the theoretical RF: gradient support of the PFV with every activation made the identity
    xg = x.clone().requires_grad_(True)
    with NonlinearityMode(lambda v, act: v):
        out = net[:5](xg)
    out.flatten(2)[0, :, pos].sum().backward()
    rf = xg.grad[0].abs().sum(0) > 0
    assert rf.sum() < rf.numel()  # a real restriction
    assert ierf_map[~rf].abs().max() == 0
    ref = sharing_ratios(net, x, net[4], bias="norm").backward(torch.eye(16)[pos][None])
    assert ref.sum().item() == pytest.approx(1.0, abs=1e-5)  # Eq. 19 chained: Σ iERF = 1


def test_concept_target_is_linear_in_the_direction():
    net = small_net(nn.ReLU)
    x = torch.randn(1, 3, 16, 16)
    srd = SRD(net)
    u, w = torch.randn(8), torch.randn(8)
    ru = srd.relevance(x, ierf.ConceptTarget("4", u))["input"]
    rw = srd.relevance(x, ierf.ConceptTarget("4", w))["input"]
    ruw = srd.relevance(x, ierf.ConceptTarget("4", 2 * u - w))["input"]
    torch.testing.assert_close(ruw, 2 * ru - rw, atol=1e-5, rtol=1e-4)
    with pytest.raises(ierf.IerfError, match="channels"):
        srd.relevance(x, ierf.ConceptTarget("4", torch.randn(3)))


def test_unsupported_module_is_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.LayerNorm([4, 6, 6]), nn.ReLU(),
                        nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(ierf.IerfError, match=r"'2' of type LayerNorm"):
        SRD(net, layer="3")


def test_three_resolutions_come_back_at_input_size(lite0):
    x = lite0.preprocess(ierf.load_image("coffee"))
    maps = {m: ierf.attributor(m, lite0).attribute(x) for m in ("srd", "srd-high", "srd-low")}
    assert all(v.shape == (1, 224, 224) for v in maps.values())
    native = SRD(lite0).relevance(x, layers=["blocks.2"])
    assert native["blocks.2"].shape == (1, 28, 28) and native["bn2"].shape == (1, 7, 7)


def test_many_ierfs_in_one_pass_equal_one_at_a_time():
    net = small_net(nn.GELU)
    x = torch.randn(2, 3, 16, 16)
    srd = SRD(net)
    targets = [ierf.PFVTarget("4", p) for p in (0, 5, 15)] + [
        ierf.ConceptTarget("4", torch.randn(8), position=3)]
    many = srd.ierfs(x, targets)
    assert many.shape == (4, 2, 16, 16)
    torch.testing.assert_close(srd.ierfs(x, targets, internal_batch_size=3), many)
    for k, t in enumerate(targets):
        torch.testing.assert_close(many[k], srd.relevance(x, t)["input"], atol=1e-6, rtol=1e-5)
    with pytest.raises(ierf.IerfError, match="one layer"):
        srd.ierfs(x, [ierf.PFVTarget("4", 0), ierf.PFVTarget("2", 0)])


def test_scalar_target_on_pfvs():
    net = small_net(nn.ReLU)
    x = torch.randn(2, 3, 16, 16)
    srd = SRD(net)
    u = torch.randn(8)
    linear = srd.relevance(x, ierf.ScalarTarget("4", lambda v: (v @ u).sum(1)))["input"]
    concept = srd.relevance(x, ierf.ConceptTarget("4", u))["input"]
    torch.testing.assert_close(linear, concept, atol=1e-6, rtol=1e-5)
    energy = srd.relevance(x, ierf.ScalarTarget("4", lambda v: v.square().sum((1, 2))))
    pfv = net[:5](x).detach().flatten(2)
    torch.testing.assert_close(energy["4"].flatten(1), 2 * pfv.square().sum(1))  # ⟨v, 2v⟩
    with pytest.raises(ierf.IerfError, match="one score per image"):
        srd.relevance(x, ierf.ScalarTarget("4", lambda v: v.sum(1)))


def test_latent_target_is_the_concept_target_of_a_linear_latent():
    net = small_net(nn.ReLU)
    x = torch.randn(2, 3, 16, 16)
    srd = SRD(net)
    W = torch.randn(8, 5)

    class LinearSAE:  # encode(v) = v W: latent k is the direction W[:, k]
        def encode(self, v: torch.Tensor) -> torch.Tensor:
            return v @ W

    latent = srd.ierfs(x, [ierf.LatentTarget("4", LinearSAE(), k) for k in (0, 3)])
    concept = srd.ierfs(x, [ierf.ConceptTarget("4", W[:, k]) for k in (0, 3)])
    torch.testing.assert_close(latent, concept, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(latent[0], latent[1])
