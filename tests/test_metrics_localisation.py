"""Localisation and complexity metrics: ground truth, Quantus cross-checks, input validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch

import ierf
from ierf.data.synthetic import generate
from ierf.metrics import (
    AttributionLocalisation,
    GridPointingGame,
    PointingGame,
    Sparseness,
    make_grid,
    metric,
    metric_names,
)
from ierf.metrics.similarity import average_ranks, pearson, spearman, ssim


@pytest.fixture(scope="module")
def data(toy):
    d = generate(6, seed=3, split="test")
    x = toy.normalize(d.images)
    xg = x.detach().requires_grad_(True)
    g, = torch.autograd.grad(toy.net(xg).gather(1, d.labels[:, None]).sum(), xg)
    return x, d.labels, (g * x).sum(1), d.parts_mask


def _quantus(metric_obj, toy, x, y, a, mask):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(metric_obj(model=toy.net, x_batch=x.numpy(), y_batch=y.numpy(),
                                   a_batch=a[:, None].numpy(), s_batch=mask[:, None].numpy().astype(float),
                                   device="cpu"), dtype=float)


def test_mask_as_map_scores_one(toy, data):
    x, y, _, mask = data
    a = mask.float()
    assert torch.equal(PointingGame()(toy, x, y, a, mask=mask), torch.ones(len(x)))
    assert torch.allclose(AttributionLocalisation()(toy, x, y, a, mask=mask), torch.ones(len(x)))


@pytest.mark.parametrize("tolerance", [0, 3, 15])
def test_pointing_game_tolerance_boundary(tolerance):
    """A single peak at Euclidean distance d from a one-pixel object hits iff d <= tolerance."""
    h = w = 64
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 20, 20] = True
    x, y = torch.zeros(1, 3, h, w), torch.zeros(1, dtype=torch.long)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * h * w, 2))
    for dy, dx in [(tolerance, 0), (tolerance + 1, 0), (0, tolerance + 1), (9, 12), (12, 12)]:
        a = torch.zeros(1, h, w)
        a[0, 20 + dy, 20 + dx] = 1.0
        hit = PointingGame(tolerance=tolerance)(net, x, y, a, mask=mask).item()
        assert hit == float(dy**2 + dx**2 <= tolerance**2), (dy, dx)


def test_pointing_game_outside_by_16px_misses(toy, data):
    x, y, _, mask = data
    m = torch.zeros_like(mask)
    m[:, 10:20, 10:20] = True
    a = torch.zeros(mask.shape)
    a[:, 15, 19 + 16] = 1.0  # 16 px right of the mask's edge
    assert PointingGame(tolerance=15)(toy, x, y, a, mask=m).eq(0).all()
    a[:, 15, 19 + 15] = 2.0  # the peak moves to 15 px
    assert PointingGame(tolerance=15)(toy, x, y, a, mask=m).eq(1).all()


def test_grid_pointing_game(toy):
    images = generate(8, seed=1, split="val").images
    grids, masks = make_grid(images, (2, 2))
    assert grids.shape == (2, 3, 128, 128) and masks.shape == (2, 4, 128, 128)
    # tiles land where the masks say: tile k of grid g is image 4g + k
    for g in range(2):
        for k in range(4):
            tile = grids[g][:, masks[g, k]].view(3, 64, 64)
            assert torch.equal(tile, images[4 * g + k])
    x, y = grids, torch.zeros(2, dtype=torch.long)
    metric_ = GridPointingGame((2, 2))
    for k in range(4):
        inside = masks[:, k].float() * torch.rand(2, 128, 128) - (~masks[:, k]).float()  # negatives outside
        assert torch.allclose(metric_(toy, x, y, inside, mask=masks[:, k]), torch.ones(2))
        uniform = torch.ones(2, 128, 128)
        assert torch.allclose(metric_(toy, x, y, uniform, mask=masks[:, k]), torch.full((2,), 0.25))
    with pytest.raises(ierf.IerfError, match="one grid"):
        metric_(toy, x, y, torch.ones(2, 128, 128), mask=masks[:, 0] | masks[:, 1])


def test_gini_one_hot_and_constant(toy, data):
    x, y, _, _ = data
    n = 64 * 64
    one_hot = torch.zeros(len(x), 64, 64)
    one_hot[:, 5, 7] = 3.0
    assert torch.allclose(Sparseness()(toy, x, y, one_hot), torch.full((len(x),), (n - 1) / n))
    assert torch.allclose(Sparseness()(toy, x, y, torch.full((len(x), 64, 64), 0.3)),
                          torch.zeros(len(x)), atol=1e-6)


def test_localisation_matches_quantus(toy, data):
    x, y, a, mask = data
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    for b in (a, noise):  # the explanations hit, the noise mostly misses
        ours = PointingGame(tolerance=0)(toy, x, y, b, mask=mask).numpy()
        theirs = _quantus(quantus.PointingGame(), toy, x, y, b, mask)
        assert np.array_equal(ours, theirs)
    assert ours.sum() < len(ours)  # the noise case did exercise misses
    # the paper's R_in / R_tot of positive relevance = Quantus with clipping instead of |a|
    ours = AttributionLocalisation()(toy, x, y, a, mask=mask).numpy()
    theirs = _quantus(quantus.AttributionLocalisation(abs=False, positive_attributions=True),
                      toy, x, y, a, mask)
    assert np.allclose(ours, theirs, atol=1e-5)
    ours = Sparseness()(toy, x, y, a).numpy()
    theirs = _quantus(quantus.Sparseness(), toy, x, y, a, mask)
    assert np.allclose(ours, theirs, atol=1e-5)


def test_batched_equals_one_at_a_time(toy, data):
    x, y, a, mask = data
    for m in (PointingGame(), AttributionLocalisation(), Sparseness()):
        whole = m(toy, x, y, a, mask=mask)
        single = torch.cat([m(toy, x[i:i + 1], y[i:i + 1], a[i:i + 1], mask=mask[i:i + 1])
                            for i in range(len(x))])
        assert torch.allclose(whole, single)


def test_bad_input_raises(toy, data):
    x, y, a, mask = data
    with pytest.raises(ierf.IerfError, match="mask"):
        PointingGame()(toy, x, y, a)
    with pytest.raises(ierf.IerfError, match="shape"):
        AttributionLocalisation()(toy, x, y, a[:, :32], mask=mask)
    with pytest.raises(ierf.IerfError, match="NaN"):
        Sparseness()(toy, x, y, torch.full_like(a, float("nan")))
    with pytest.raises(ierf.IerfError, match="targets"):
        Sparseness()(toy, x, y[:2], a)
    with pytest.raises(ierf.UnknownNameError, match="pointing-game"):
        metric("pointing_game")
    assert set(metric_names()) >= {"pointing-game", "fidelity", "saco", "stability", "randomisation"}


def test_similarities_match_scipy_and_skimage():
    from scipy.stats import pearsonr, rankdata, spearmanr
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 40, generator=g)
    b = (a + 0.5 * torch.rand(3, 40, 40, generator=g)).round(decimals=1)  # with ties
    for i in range(3):
        ai, bi = a[i].numpy().ravel(), b[i].numpy().ravel()
        assert np.allclose(average_ranks(b[i:i + 1]).numpy().ravel(), rankdata(bi))
        assert abs(pearson(a[i:i + 1], b[i:i + 1]).item() - pearsonr(ai, bi)[0]) < 1e-5
        assert abs(spearman(a[i:i + 1], b[i:i + 1]).item() - spearmanr(ai, bi)[0]) < 1e-5
        ref = structural_similarity(a[i].double().numpy(), b[i].double().numpy(), data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(ssim(a[i:i + 1], b[i:i + 1]).item() - ref) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_input(toy, data):
    x, y, a, mask = data
    net = toy.net.cuda()
    try:
        for m in (PointingGame(), AttributionLocalisation(), Sparseness()):
            out = m(net, x.cuda(), y.cuda(), a.cuda(), mask=mask.cuda())
            assert out.device.type == "cuda"
            assert torch.allclose(out.cpu(), m(net.cpu(), x, y, a, mask=mask), atol=1e-5)
            net.cuda()
    finally:
        net.cpu()
