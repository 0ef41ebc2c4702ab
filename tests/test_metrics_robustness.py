"""Stability, randomisation test and the manipulation attack: Quantus cross-checks and ground truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch
import torch.nn.functional as F

import ierf
from ierf.data.synthetic import generate
from ierf.metrics import Randomisation, Stability, manipulation_attack
from ierf.metrics.robustness import randomise


def gradient_x_input(net, x, y):
    x = x.detach().requires_grad_(True)
    g, = torch.autograd.grad(net(x).gather(1, y[:, None]).sum(), x)
    return (g * x).sum(1)


def gradient(net, x, y, create_graph=False):
    """Differentiable saliency |∂F_y/∂x| summed over channels (for the attack)."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    g, = torch.autograd.grad(net(x).gather(1, y[:, None]).sum(), x, create_graph=create_graph)
    return g.abs().sum(1)


def edges(net, x, y):
    """A 'map' that never looks at the network: the input's gradient magnitude (Sobel)."""
    k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    gray = x.mean(1, keepdim=True)
    gx = F.conv2d(gray, k.view(1, 1, 3, 3), padding=1)
    gy = F.conv2d(gray, k.t().reshape(1, 1, 3, 3), padding=1)
    return (gx**2 + gy**2).sqrt()[:, 0]


@pytest.fixture(scope="module")
def toy_data():
    toy = ierf.load_model("toy-resnet")
    d = generate(3, seed=7, split="test")
    x = toy.normalize(d.images)
    return toy, x, d.labels, gradient_x_input(toy.net, x, d.labels).detach()


def _numpy_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return gradient_x_input(model, x, torch.as_tensor(targets)).detach().numpy()[:, None]


def test_stability_of_a_linear_gradient_is_zero():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    s = Stability(nr_samples=8)(net, x, y, gradient(net, x, y), explain=gradient)
    assert torch.all(s < 1e-5)  # the gradient of a linear model ignores the input
    s = Stability(nr_samples=8)(net, x, y, gradient_x_input(net, x, y), explain=gradient_x_input)
    assert torch.all(s > 0.01)


def test_stability_matches_quantus_with_same_noise(toy_data, monkeypatch):
    toy, x, y, a = toy_data
    ours_metric = Stability(nr_samples=4, internal_batch_size=5)
    ours = ours_metric(toy, x, y, a, explain=gradient_x_input).numpy()
    noise = ours_metric.noise(x).flatten(1).numpy()
    draws = iter(np.broadcast_to(n, (len(x), n.size)) for n in noise)
    monkeypatch.setattr(np.random, "normal", lambda *args, **kwargs: next(draws))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.array(quantus.LocalLipschitzEstimate(
            nr_samples=4, normalise_func_kwargs={"normalise_axes": [1, 2, 3]}, disable_warnings=True)(
            model=toy.net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
            explain_func=_numpy_explain, device="cpu"))
    assert np.allclose(ours, theirs, rtol=1e-4), (ours, theirs)


def test_randomisation_matches_quantus(toy_data):
    toy, x, y, a = toy_data
    ours = Randomisation()(toy, x, y, a, explain=gradient_x_input).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.MPRT(return_last_correlation=True, disable_warnings=True)(
            model=toy.net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
            explain_func=_numpy_explain, device="cpu")
    assert np.allclose(ours, np.asarray(theirs, dtype=float).ravel(), atol=1e-4), (ours, theirs)


def test_randomisation_flags_a_map_that_ignores_the_weights(toy_data):
    toy, x, y, a = toy_data
    e = edges(toy.net, x, y)
    flagged = Randomisation()(toy, x, y, e, explain=edges)
    assert torch.allclose(flagged, torch.ones(len(x)))
    honest = Randomisation()(toy, x, y, a, explain=gradient_x_input)
    assert torch.all(honest < 0.7), honest
    for sim in ("pearson", "ssim"):
        assert torch.all(Randomisation(similarity=sim)(toy, x, y, e, explain=edges) > 0.999)
        assert torch.all(Randomisation(similarity=sim)(toy, x, y, a, explain=gradient_x_input) < 0.9)


def test_randomise_changes_every_parameter_and_keeps_the_model(toy_data):
    toy = toy_data[0]
    before = {k: v.clone() for k, v in toy.net.state_dict().items()}
    random_net = randomise(toy.net)
    for k, v in toy.net.state_dict().items():
        assert torch.equal(v, before[k])  # the original is untouched
    for (name, p), q in zip(toy.net.named_parameters(), random_net.parameters()):
        if p.numel() > 1 and p.std() > 0:  # BN weights reset to ones, biases to zeros: changed too
            assert not torch.equal(p, q), name


def test_batched_equals_one_at_a_time(toy_data):
    toy, x, y, a = toy_data
    for m in (Stability(nr_samples=3), Randomisation()):
        whole = m(toy, x, y, a, explain=gradient_x_input)
        single = torch.cat([m(toy, x[i:i + 1], y[i:i + 1], a[i:i + 1], explain=gradient_x_input)
                            for i in range(len(x))])
        assert torch.allclose(whole, single, atol=1e-5), m


def test_bad_input_raises(toy_data):
    toy, x, y, a = toy_data
    with pytest.raises(ierf.IerfError, match="explain"):
        Stability()(toy, x, y, a)
    with pytest.raises(ierf.IerfError, match="shape"):
        Randomisation()(toy, x, y, a, explain=lambda net, x, y: torch.zeros(len(x), 8, 8))
    with pytest.raises(ierf.IerfError, match="similarity"):
        Randomisation(similarity="cosine")


def test_attack_moves_the_gradient_map_within_bounds(toy_data):
    toy, x, y, _ = toy_data
    target = gradient(toy.net, x.roll(1, 0), y.roll(1, 0))  # another image's map
    res = manipulation_attack(toy, x, target, lambda n, z, c: gradient(n, z, c, create_graph=True),
                              y, max_steps=12, lr=1e-2)
    assert torch.all(res.target_pearson_after > res.target_pearson_before + 0.1), (
        res.target_pearson_before, res.target_pearson_after)
    with torch.no_grad():
        logits, adv_logits = toy.net(x), toy.net(res.x_adv)
    assert torch.equal(adv_logits.argmax(1), logits.argmax(1))
    assert torch.all(res.output_mse < 0.01 * logits.var(1))  # the logits barely move
    assert torch.allclose(res.output_mse, (adv_logits - logits).pow(2).mean(1))
    assert torch.all((res.x_adv - x).pow(2).flatten(1).mean(1) < 1e-3)  # the paper's stop
    std = torch.tensor(toy.preprocessing.std).view(1, 3, 1, 1)
    mean = torch.tensor(toy.preprocessing.mean).view(1, 3, 1, 1)
    assert (res.x_adv - x).mul(std).abs().max() <= 8 / 255 + 1e-6  # per channel, pixel scale
    pixels = res.x_adv * std + mean
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # still an image
    assert torch.all(res.steps > 0)
    assert torch.all(res.pearson < 0.95) and torch.all(res.ssim < 0.95)  # the gradient is fragile
    # the reported maps are the real network's maps of x and x_adv
    for z, m in ((x, res.map_original), (res.x_adv, res.map_adv)):
        g = gradient(toy.net, z, y)
        assert torch.allclose(m, g / g.flatten(1).sum(1).view(-1, 1, 1), atol=1e-6)
