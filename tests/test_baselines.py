"""The baseline attributors against the libraries they wrap (Captum, pytorch-grad-cam, Zennit),
plus shapes, batching, hook hygiene and the CLI."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from captum import attr as captum
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from zennit.attribution import Gradient as ZennitGradient
from zennit.composites import LayerMapComposite, layer_map_base
from zennit.rules import ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

import ierf
from ierf.cli import main
from ierf.models import Preprocessing

pytestmark = pytest.mark.filterwarnings(  # Captum's notices on the reference calls
    "ignore:Input Tensor 0 did not already require gradients",
    "ignore:Setting backward hooks on ReLU activations")

IMAGENET = Preprocessing((64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GRADIENT_FAMILY = ["saliency", "guided-backprop", "grad-x-input", "integrated-gradients",
                   "smoothgrad", "lrp-zplus"]
CAMS = ["gradcam", "gradcam++", "scorecam", "ablationcam", "xgradcam", "layercam"]
HIGH = [f"{name}-high" for name in CAMS]
BASELINES = [*GRADIENT_FAMILY, *CAMS, *HIGH, "fullgrad"]
LIBRARY_CAMS = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus,
                "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM,
                "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM}


def tiny_cnn(bias: bool = True, batchnorm: bool = True) -> nn.Sequential:
    """64² → 4²: five conv blocks (inplace ReLUs, like torchvision), stride 8 at ``block3``."""
    def block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)]
        layers += [nn.BatchNorm2d(c_out)] if batchnorm else []
        layers += [nn.ReLU(inplace=True)] + ([nn.MaxPool2d(2)] if pool else [])
        return nn.Sequential(*layers)

    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        block1=block(3, 8, True), block2=block(8, 16, True), block3=block(16, 16, True),
        block4=block(16, 16, True), block5=block(16, 16, False),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10, bias=bias))))
    return randomize_batchnorms(net)


def randomize_batchnorms(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (fresh ones are the identity: nothing to merge)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net


@pytest.fixture(scope="module")
def tiny() -> ierf.Model:
    return ierf.Model(tiny_cnn(), "tiny", [f"class {i}" for i in range(10)], IMAGENET)


@pytest.fixture(scope="module")
def resnet18() -> ierf.Model:
    torch.manual_seed(0)
    net = randomize_batchnorms(torchvision.models.resnet18(num_classes=10))
    return ierf.Model(net, "resnet18", [f"class {i}" for i in range(10)], IMAGENET)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


@pytest.fixture(scope="module")
def chelsea(lite0) -> torch.Tensor:
    return lite0.preprocess(ierf.load_image("chelsea"))


def top(model: ierf.Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.net(x).argmax(1)


def without_inplace(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with in-place activations off (Captum's hooks need that)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    return net


# --- the gradient family against Captum ----------------------------------------------------

def test_saliency_is_captum_saliency_max_abs_over_channels(tiny, x64):
    idx = top(tiny, x64)
    ours = ierf.attributor("saliency", tiny).attribute(x64)
    ref = captum.Saliency(tiny.net).attribute(x64, target=idx, abs=True).amax(1)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours, ierf.attributor("gradient", tiny).attribute(x64))


def test_guided_backprop_matches_captum_on_a_relu_resnet(resnet18, x64):
    ours = ierf.attributor("guided-backprop", resnet18).attribute(x64, target=[3, 7])
    ref = captum.GuidedBackprop(without_inplace(resnet18.net)).attribute(x64, target=[3, 7])
    torch.testing.assert_close(ours, ref.abs().amax(1))
    plain = ierf.attributor("saliency", resnet18).attribute(x64, target=[3, 7])
    assert not torch.allclose(ours, plain, atol=1e-6)


class _GuidedReLU6(torch.autograd.Function):
    """Reference guided ReLU6: forward relu6, backward relu(grad) where 0 < x < 6."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > 0) & (x < 6))


class _GuidedReLU6Module(nn.Module):
    def forward(self, x):
        return _GuidedReLU6.apply(x)


def test_guided_backprop_guides_relu6_of_efficientnet_lite0(lite0, chelsea):
    """Captum only hooks nn.ReLU: our wrapper also guides timm's (in-place) ReLU6 modules."""
    ours = ierf.attributor("guided-backprop", lite0).attribute(chelsea, target=285)
    ref_net = copy.deepcopy(lite0.net)
    for module in list(ref_net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, name, _GuidedReLU6Module())
    x = chelsea.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ref_net(x)[0, 285], x)
    torch.testing.assert_close(ours, grad.abs().amax(1), rtol=1e-4, atol=1e-6)
    relu6 = [m for m in lite0.net.modules() if isinstance(m, nn.ReLU6)]
    assert relu6 and all(type(m) is nn.ReLU6 and m.inplace for m in relu6)


def test_grad_x_input_is_captum_summed_over_channels(tiny, x64):
    idx = top(tiny, x64)
    ours = ierf.attributor("grad-x-input", tiny).attribute(x64)
    ref = captum.InputXGradient(tiny.net).attribute(x64, target=idx).sum(1)
    torch.testing.assert_close(ours, ref)


def test_integrated_gradients_is_captum_with_the_same_steps(tiny, x64):
    ours = ierf.attributor("integrated-gradients", tiny, n_steps=16,
                           internal_batch_size=8).attribute(x64, target=[1, 2])
    ref = captum.IntegratedGradients(tiny.net).attribute(
        x64, target=[1, 2], n_steps=16, internal_batch_size=8).sum(1)
    torch.testing.assert_close(ours, ref)
    # the internal batch size changes the chunking only
    bigger = ierf.attributor("integrated-gradients", tiny, n_steps=16,
                             internal_batch_size=64).attribute(x64, target=[1, 2])
    torch.testing.assert_close(bigger, ours, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_is_complete_and_takes_a_baseline(tiny, x64):
    x = x64[:1]
    with torch.no_grad():
        gap = (tiny.net(x) - tiny.net(torch.zeros_like(x)))[0, 4].item()
    ig = ierf.attributor("integrated-gradients", tiny, n_steps=128, internal_batch_size=128)
    total = ig.attribute(x, target=4).sum().item()
    assert abs(total - gap) < 0.03 * abs(gap), (total, gap)
    same = ierf.attributor("integrated-gradients", tiny, baselines=x).attribute(x, target=4)
    assert same.abs().max() == 0


def test_smoothgrad_is_captum_noise_tunnel_with_the_same_noise(tiny, x64):
    idx = top(tiny, x64)
    torch.manual_seed(5)
    ours = ierf.attributor("smoothgrad", tiny, nt_samples=6, stdevs=0.3,
                           internal_batch_size=8).attribute(x64)
    torch.manual_seed(5)
    ref = captum.NoiseTunnel(captum.Saliency(tiny.net)).attribute(
        x64, nt_type="smoothgrad", nt_samples=6, nt_samples_batch_size=4, stdevs=0.3,
        target=idx, abs=True).amax(1)
    torch.testing.assert_close(ours, ref)


# --- LRP-z+ against Zennit -----------------------------------------------------------------

def test_lrp_zplus_is_zennit_zplus_with_the_resnet_canonizer(resnet18, x64):
    ours = ierf.attributor("lrp-zplus", resnet18).attribute(x64, target=[2, 5])
    composite = LayerMapComposite(
        layer_map=layer_map_base() + [(Convolution, ZPlus()), (nn.Linear, ZPlus())],
        canonizers=[ResNetCanonizer()])
    net = without_inplace(resnet18.net)
    with ZennitGradient(net, composite) as lrp:
        _, relevance = lrp(x64.clone(), lambda y: torch.eye(10)[[2, 5]] * y.detach())
    torch.testing.assert_close(ours, relevance.sum(1))


def test_lrp_zplus_conserves_relevance_in_a_bias_free_relu_net(x64):
    net = tiny_cnn(bias=False, batchnorm=False)
    model = ierf.Model(net, "tiny-nobias", [f"class {i}" for i in range(10)], IMAGENET)
    relevance = ierf.attributor("lrp-zplus", model).attribute(x64, target=[0, 9])
    with torch.no_grad():
        logits = net(x64)[[0, 1], [0, 9]]
    torch.testing.assert_close(relevance.sum((1, 2)), logits, rtol=1e-4, atol=1e-5)


def test_lrp_zplus_merges_the_fused_batchnorms_of_efficientnet_lite0(lite0, chelsea):
    from ierf.local.lrp import batchnorm_merger

    fused = [n for n, m in lite0.net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorm_merger(lite0.net).name_map) == len(fused) == 49
    before = copy.deepcopy(lite0.net.state_dict())
    relevance = ierf.attributor("lrp-zplus", lite0).attribute(chelsea, target=285)
    assert relevance.shape == (1, 224, 224) and torch.isfinite(relevance).all()
    assert relevance.sum() > 0
    after = lite0.net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# --- the CAM family against pytorch-grad-cam -----------------------------------------------

def _library(cam_class, net, layers, x, targets):
    cam = cam_class(model=net, target_layers=layers)
    try:
        return torch.from_numpy(cam(input_tensor=x, targets=targets))
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("name", [*CAMS, *HIGH])
def test_cam_is_pytorch_grad_cam_at_the_same_layer(tiny, x64, name):
    opts = {"batch_size": 8} if name.startswith(("scorecam", "ablationcam")) else {}
    method = ierf.attributor(name, tiny, **opts)
    assert method.layer == ("block3" if name.endswith("-high") else "block5")
    ours = method.attribute(x64, target=[3, 6])
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(6)]
    ref = _library(LIBRARY_CAMS[name.removesuffix("-high")], tiny.net,
                   [tiny.module(method.layer)], x64, targets)
    assert ours.shape == (2, 64, 64) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # min–max scaled per image, as the library does (all zero where the ReLU kills everything)
    assert all(m == 0 or m > 0.99 for m in ours.amax((1, 2)).tolist()) and ours.max() > 0.99


def test_gradcam_on_resnet18_defaults_to_layer4_and_layer2(resnet18, x64):
    assert ierf.attributor("gradcam", resnet18).layer == "layer4"
    assert ierf.attributor("gradcam-high", resnet18).layer == "layer2"
    ours = ierf.attributor("gradcam", resnet18, layer="layer3").attribute(x64)
    ref = _library(pgc.GradCAM, resnet18.net, [resnet18.net.layer3], x64, None)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ierf.UnknownNameError, match="layer3"):
        ierf.attributor("gradcam", resnet18, layer="layer33")


def test_fullgrad_is_pytorch_grad_cam_fullgrad(resnet18, x64):
    ours = ierf.attributor("fullgrad", resnet18).attribute(x64, target=[0, 1])
    ref = _library(pgc.FullGrad, resnet18.net, [], x64,
                   [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_cam_targets_by_name_index_object_and_auto(lite0, chelsea):
    gradcam = ierf.attributor("gradcam", lite0)
    by_name = gradcam.attribute(chelsea, "Egyptian cat")
    torch.testing.assert_close(gradcam.attribute(chelsea, 285), by_name)
    torch.testing.assert_close(gradcam.attribute(chelsea, ierf.ClassTarget(285)), by_name)
    torch.testing.assert_close(gradcam.attribute(chelsea), by_name)  # top class: Egyptian cat
    assert not torch.allclose(gradcam.attribute(chelsea, "tripod"), by_name)
    with pytest.raises(ierf.IerfError, match="out of range"):
        gradcam.attribute(chelsea, 1000)


# --- every baseline: shape, batching, hooks, side effects ----------------------------------

def test_methods_lists_every_baseline():
    assert set(BASELINES) | {"gradient"} <= set(ierf.methods())


@pytest.mark.parametrize("name", BASELINES)
def test_shape_batching_and_no_side_effects(tiny, x64, name):
    net = tiny.net
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad for p in net.parameters()]
    state = copy.deepcopy(net.state_dict())
    modules = [(n, type(m), getattr(m, "inplace", None)) for n, m in net.named_modules()]
    with torch.no_grad():
        logits = net(x64)

    with ierf.attributor(name, tiny) as method:
        batched = method.attribute(x64, target=[2, 7])
        assert batched.shape == (2, 64, 64) and batched.dtype == torch.float32
        assert batched.device == x64.device and torch.isfinite(batched).all()
        if name != "smoothgrad":  # random
            for i, t in enumerate([2, 7]):
                torch.testing.assert_close(method.attribute(x64[i:i + 1], t)[0], batched[i],
                                           rtol=1e-4, atol=1e-5 * batched.abs().max().item())

    for m in net.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or m._backward_pre_hooks), (name, m)
    assert [(n, type(m), getattr(m, "inplace", None)) for n, m in net.named_modules()] == modules
    assert all(p.grad is g and p.requires_grad for p, g in zip(net.parameters(), grads))
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        assert torch.equal(net(x64), logits)


@pytest.mark.parametrize("name", ["gradcam", "guided-backprop", "lrp-zplus", "fullgrad"])
def test_no_hooks_or_changes_left_on_efficientnet_lite0(lite0, chelsea, name):
    net = lite0.net
    inplace = [m.inplace for m in net.modules() if hasattr(m, "inplace")]
    with torch.no_grad():
        logits = net(chelsea)
    saliency = ierf.attributor(name, lite0).attribute(chelsea)
    assert saliency.shape == (1, 224, 224)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   or m._backward_pre_hooks for m in net.modules())
    assert [m.inplace for m in net.modules() if hasattr(m, "inplace")] == inplace
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    with torch.no_grad():
        assert torch.equal(net(chelsea), logits)


@pytest.mark.parametrize("name", ["lrp-zplus", "gradcam", "integrated-gradients"])
def test_non_class_targets_are_refused_and_leave_nothing_behind(tiny, x64, name):
    with pytest.raises(ierf.IerfError, match="explains class logits"):
        ierf.attributor(name, tiny).attribute(x64, lambda logits: logits[:, 0])
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   or m._backward_pre_hooks for m in tiny.net.modules())
    assert all(p.requires_grad for p in tiny.net.parameters())


def test_ablationcam_puts_the_layer_back_when_the_call_fails(tiny, x64, monkeypatch):
    from pytorch_grad_cam import AblationCAM

    def fail(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(AblationCAM, "assemble_ablation_scores", fail)
    block5 = tiny.net.block5
    with pytest.raises(RuntimeError, match="boom"):
        ierf.attributor("ablationcam", tiny).attribute(x64)
    assert tiny.net.block5 is block5


def test_cli_explains_with_gradcam(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["explain", "chelsea", "--method", "gradcam", "-o", str(out)]) == 0
    assert out.stat().st_size > 0 and "Egyptian cat" in capsys.readouterr().out


def _vit_tutorial_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT tutorial: drop the CLS token, lay the rest on the square grid."""
    side = int((tokens.shape[1] - 1) ** 0.5)
    return tokens[:, 1:, :].reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", ["gradcam", "layercam", "scorecam", "ablationcam"])
def test_cams_on_the_toy_vit_are_the_library_with_its_vit_reshape_and_localise(name):
    from pytorch_grad_cam.ablation_layer import AblationLayerVit

    from ierf.data.synthetic import generate

    model = ierf.load_model("toy-vit")
    batch = generate(6, seed=5, split="test")
    x = (batch.images - 0.5) / 0.5
    opts = {"batch_size": 32} if name in ("scorecam", "ablationcam") else {}
    ours = ierf.attributor(name, model, **opts).attribute(x, batch.labels)
    extra = {"ablation_layer": AblationLayerVit()} if name == "ablationcam" else {}
    cam = LIBRARY_CAMS[name](model=model.net, target_layers=[model.module("blocks.2")],
                             reshape_transform=_vit_tutorial_reshape, **extra)
    try:
        ref = torch.from_numpy(cam(input_tensor=x, targets=[
            ClassifierOutputTarget(int(c)) for c in batch.labels]))
    finally:
        cam.activations_and_grads.release()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    positive = ours.clamp(min=0)
    on_parts = (positive * batch.parts_mask).sum((1, 2)) / positive.sum((1, 2))
    assert on_parts.mean() > 1.5 * batch.parts_mask.float().mean()
