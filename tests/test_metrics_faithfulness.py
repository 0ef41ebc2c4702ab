"""Faithfulness metrics: exact contributions of linear models, Quantus cross-checks, batching."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch
from torch import nn

import ierf
from ierf.data.synthetic import generate
from ierf.metrics import Deletion, FaithfulnessCorrelation, Insertion, PixelFlipping, SaCo, metric


class Linear2(nn.Module):
    """Logits (z, −z) with z = ⟨w, x⟩: a linear model whose contributions are known exactly."""

    def __init__(self, shape: tuple[int, int, int], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(0.02 * torch.randn(*shape, generator=g, dtype=torch.float64))  # |z| ~ 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() * self.w).flatten(1).sum(1)
        return torch.stack([z, -z], 1)


@pytest.fixture(scope="module")
def linear():
    net = Linear2((3, 16, 16))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return net, x, torch.zeros(4, dtype=torch.long)


def contributions(net: Linear2, x: torch.Tensor, reference: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Exact contribution of each pixel to z relative to ``reference`` (summed over channels)."""
    return (net.w * (x - reference)).sum(1).float().detach()


def _rand_maps(shape, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_fidelity_of_exact_contributions_is_one(linear):
    net, x, y = linear
    a = contributions(net, x)  # baseline 0: Δz(S) = Σ_{i∈S} a_i exactly
    for patch in (1, 4):
        r = FaithfulnessCorrelation(subset_size=20 if patch == 1 else 3, nr_runs=30,
                                    patch_size=patch)(net, x, y, a)
        assert torch.allclose(r, torch.ones(4), atol=1e-5), r
    r = FaithfulnessCorrelation(subset_size=20, nr_runs=30)(net, x, y, -a)
    assert torch.allclose(r, -torch.ones(4), atol=1e-5)


def test_deletion_and_insertion_order_optimal_on_linear_model(linear):
    """Removing the largest contributions first gives the lowest curve (Δz of the top-k set is
    the largest among all k-sets), so gradient×input has the lowest deletion AUC and the highest
    insertion AUC of all maps, and beats its negation."""
    net, x, y = linear
    a = contributions(net, x)
    for cls, sign in ((Deletion, 1), (PixelFlipping, 1), (Insertion, -1)):
        m = cls(features_in_step=8, baseline=0.0)
        best = m(net, x, y, a)
        assert torch.all(sign * best < sign * m(net, x, y, -a))
        for r in _rand_maps(a.shape, 3):
            assert torch.all(sign * best <= sign * m(net, x, y, r) + 1e-6)


def test_saco_of_exact_contributions(linear):
    net, x, y = linear
    mean = x.mean((2, 3), keepdim=True)  # SaCo replaces by the per-sample mean
    a = contributions(net, x, mean)
    assert torch.allclose(SaCo(groups=8)(net, x, y, a), torch.ones(4))
    assert torch.allclose(SaCo(groups=8)(net, x, y, -a), -torch.ones(4))
    patches = SaCo(groups=4, patch_size=4)(net, x, y, a)  # 16 patches in 4 groups
    assert torch.allclose(patches, torch.ones(4))
    random = torch.stack([SaCo(groups=8)(net, x, y, r) for r in _rand_maps(a.shape, 3)])
    assert random.abs().max() < 0.9


def test_pixel_flipping_curve_endpoints(linear):
    net, x, y = linear
    m = PixelFlipping(features_in_step=32, baseline=0.0, output="logits")
    curve = m.curve(net, x, y, contributions(net, x))
    assert curve.shape == (4, 256 // 32 + 1)
    z = net(x)[:, 0].float()
    assert torch.allclose(curve[:, 0], z, atol=1e-4)  # nothing removed
    assert torch.allclose(curve[:, -1], torch.zeros(4), atol=1e-4)  # all replaced by 0
    auc = m(net, x, y, contributions(net, x))
    assert torch.allclose(auc, (curve[:, :-1] + curve[:, 1:]).sum(1) / 2 / 8, atol=1e-5)


@pytest.fixture(scope="module")
def toy_data():
    toy = ierf.load_model("toy-resnet")
    d = generate(3, seed=5, split="test")
    x = toy.normalize(d.images)
    xg = x.detach().requires_grad_(True)
    g, = torch.autograd.grad(toy.net(xg).gather(1, d.labels[:, None]).sum(), xg)
    a = (g * x).sum(1)
    a = a + 1e-6 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))  # no ties
    return toy, x, d.labels, a


def _pixel_indices_to_channels(arr, indices, perturb_baseline, **kwargs):
    """Quantus perturb_func that replaces all channels of the given pixel indices."""
    hw = arr.shape[1] // 3
    idx = np.concatenate([indices + c * hw for c in range(3)], axis=1)
    return quantus.functions.perturb_func.batch_baseline_replacement_by_indices(
        arr, idx, perturb_baseline=perturb_baseline)


def test_fidelity_matches_quantus_with_same_subsets(toy_data, monkeypatch):
    """Quantus perturbs C·H·W channel entries; with its perturb_func replacing whole pixels and
    its random subsets replaced by ours, both compute the same correlation."""
    toy, x, y, a = toy_data
    ours_metric = FaithfulnessCorrelation(subset_size=200, nr_runs=20, internal_batch_size=32)
    ours = ours_metric(toy, x, y, a).numpy()
    subsets = ours_metric.subsets(64 * 64, torch.device("cpu")).numpy()
    draws = iter([subsets[r] for r in range(20) for _ in range(len(x))])
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(draws))
    theirs = quantus.FaithfulnessCorrelation(
        nr_runs=20, subset_size=200, perturb_func=_pixel_indices_to_channels, perturb_baseline=0.0,
        return_aggregate=False, disable_warnings=True)(
        model=toy.net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), device="cpu")
    assert np.allclose(ours, theirs, atol=1e-4), (ours, theirs)


def test_pixel_flipping_matches_quantus(toy_data):
    """Quantus' features are channel entries: 3·k entries per step flip k whole pixels
    (no ties in the map); its curve lacks the unperturbed point s_0."""
    toy, x, y, a = toy_data
    x, a = x[:, :, 8:56, 8:56], a[:, 8:56, 8:56]  # Quantus needs H·W divisible by its step
    ours = PixelFlipping(features_in_step=64, baseline="black").curve(toy, x, y, a)[:, 1:].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.array(quantus.PixelFlipping(features_in_step=3 * 64, perturb_baseline="black",
                                                disable_warnings=True)(
            model=toy.net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
            device="cpu", softmax=True))
    assert theirs.shape == ours.shape
    assert np.allclose(ours, theirs, atol=1e-5)


def test_batched_equals_one_at_a_time_and_chunking(toy_data):
    toy, x, y, a = toy_data
    for m in (FaithfulnessCorrelation(nr_runs=10, internal_batch_size=7),
              PixelFlipping(features_in_step=256, internal_batch_size=5),
              Insertion(internal_batch_size=9), Deletion(), SaCo(internal_batch_size=4)):
        whole = m(toy, x, y, a)
        single = torch.cat([m(toy, x[i:i + 1], y[i:i + 1], a[i:i + 1]) for i in range(len(x))])
        assert torch.allclose(whole, single, atol=1e-5), m
        m.internal_batch_size = 1000
        assert torch.allclose(whole, m(toy, x, y, a), atol=1e-5), m


def test_real_model_prefers_its_gradient_to_noise(toy_data):
    """On the trained toy ResNet gradient×input beats a random map on every faithfulness metric."""
    toy, x, y, a = toy_data
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    for name, kw in (("fidelity", {"nr_runs": 30}), ("deletion", {}), ("insertion", {}),
                     ("saco", {}), ("pixel-flipping", {"features_in_step": 128})):
        m = metric(name, **kw)
        ours, rand = m(toy, x, y, a).mean(), m(toy, x, y, noise).mean()
        assert (ours > rand) if m.score_direction == "higher" else (ours < rand), (name, ours, rand)


def test_bad_input_raises(toy_data):
    toy, x, y, a = toy_data
    with pytest.raises(ierf.IerfError, match="patch"):
        SaCo(patch_size=5)(toy, x, y, a)
    with pytest.raises(ierf.IerfError, match="shape"):
        Deletion()(toy, x, y, a[None])
    with pytest.raises(ierf.IerfError, match="NaN"):
        FaithfulnessCorrelation()(toy, x, y, a * float("nan"))
    with pytest.raises(ierf.IerfError, match="output"):
        PixelFlipping(output="softmax")
    with pytest.raises(ierf.IerfError, match="subset_size"):
        FaithfulnessCorrelation(subset_size=5000)(toy, x, y, a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_input(toy_data):
    toy, x, y, a = toy_data
    net = toy.net.cuda()
    try:
        for m in (FaithfulnessCorrelation(nr_runs=10), PixelFlipping(features_in_step=256),
                  Insertion(), Deletion(), SaCo()):
            out = m(net, x.cuda(), y.cuda(), a.cuda())
            assert out.device.type == "cuda"
            net.cpu()
            assert torch.allclose(out.cpu(), m(net, x, y, a), atol=1e-4), m
            net.cuda()
    finally:
        net.cpu()


def test_patch_level_on_the_toy_vit_matches_a_direct_computation():
    """ViT variant (thesis Sec. 7.2.1): whole 8×8 patches are replaced; checked against
    perturbing the image by hand for the metric's own subsets and SaCo groups."""
    vit = ierf.load_model("toy-vit")
    d = generate(2, seed=9, split="test")
    x = vit.normalize(d.images)
    y = d.labels
    a = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(4))
    fc = FaithfulnessCorrelation(subset_size=5, nr_runs=6, patch_size=8)
    s = fc.subsets(64, torch.device("cpu"))
    with torch.no_grad():
        z = vit.net(x).gather(1, y[:, None])[:, 0]
        drops, sums = [], []
        for run in s:
            keep = torch.ones(64)
            keep[run] = 0
            keep = keep.view(1, 1, 8, 8).repeat_interleave(8, 2).repeat_interleave(8, 3)
            drops.append(z - vit.net(x * keep).gather(1, y[:, None])[:, 0])
            sums.append((a / a.flatten(1).abs().amax(1).view(-1, 1, 1) * (1 - keep[:, 0])).sum((1, 2)))
    drops, sums = torch.stack(drops, 1), torch.stack(sums, 1)
    expected = torch.stack([torch.corrcoef(torch.stack([sums[i], drops[i]]))[0, 1] for i in range(2)])
    assert torch.allclose(fc(vit, x, y, a), expected, atol=1e-4)
    patches = FaithfulnessCorrelation(subset_size=5, nr_runs=6, patch_size=8).features(a)
    assert patches.shape == (2, 64)
    with pytest.raises(ierf.IerfError, match="patch"):
        SaCo(patch_size=7)(vit, x, y, a)
