"""Targeted FGSM and PGD (IERF Sec. VI-E2) against their mathematics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ierf
from ierf.data.synthetic import generate
from ierf.diagnose.attack import fgsm, loss_gradient, pgd, pixel_forward, run_attack
from ierf.errors import IerfError

torch.set_num_threads(2)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)
                         ).double().eval()


def images(n: int = 4, size: int = 12, seed: int = 1, lo: float = 0.0, hi: float = 1.0
           ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(n, 3, size, size, generator=g)).double()


def test_fgsm_step_is_eps_times_the_sign_of_the_gradient() -> None:
    net, x, t = small_net(), images(lo=0.2, hi=0.8), torch.tensor([0, 1, 2, 3])
    eps = 0.05
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(net(xg), t, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    out = fgsm(net, x, t, eps)
    torch.testing.assert_close(out.adversarial, x - eps * g.sign())     # no clipping here
    assert out.method == "fgsm" and torch.equal(out.steps, torch.ones(4, dtype=torch.long))
    assert float(out.linf.max()) == pytest.approx(eps)
    torch.testing.assert_close(out.delta, -eps * g.sign())


def test_fgsm_clips_to_the_valid_range_and_respects_a_mask() -> None:
    net, x = small_net(), images()
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    mask = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    mask[..., :6] = 1
    out = fgsm(net, x, 4, 0.3, mask=mask)
    assert float(out.adversarial.min()) >= 0 and float(out.adversarial.max()) <= 1
    assert float(out.delta[..., 6:].abs().max()) == 0.0
    assert float(out.delta.abs().max()) <= 0.3 + 1e-12


def test_small_fgsm_lowers_the_targeted_loss() -> None:
    """First order: L(x − ε sign g) ≈ L(x) − ε ‖g‖₁ < L(x) for a small ε."""
    net, x, t = small_net(), images(lo=0.1, hi=0.9), torch.tensor([4, 3, 2, 1])
    out = fgsm(net, x, t, 1e-4)
    assert bool((out.losses[1] < out.losses[0]).all())
    _, g, _ = loss_gradient(net, x, t)
    torch.testing.assert_close(out.losses[0] - out.losses[1], 1e-4 * g.abs().flatten(1).sum(1),
                               rtol=0.05, atol=0)


def test_pgd_stays_in_the_ball_and_the_range_and_lowers_the_loss() -> None:
    net, x, t = small_net(2), images(6, seed=3), torch.tensor([0, 1, 2, 3, 4, 0])
    x[0] = 0.0                             # on the boundary of the valid range
    x[1] = 1.0
    eps = 0.1
    out = pgd(net, x, t, eps, steps=12, step_size=0.04, random_start=True, early_stop=False)
    d = out.adversarial - x
    assert float(d.abs().max()) <= eps + 1e-12
    assert float(out.adversarial.min()) >= 0 and float(out.adversarial.max()) <= 1
    assert out.losses.shape == (13, 6)
    clean_loss, _, _ = loss_gradient(net, x, t)
    assert bool((out.losses[-1] < clean_loss).all())
    assert bool((out.losses[-1] < out.losses[0]).all())
    assert torch.equal(out.steps, torch.full((6,), 12))


def test_pgd_one_step_from_x_is_fgsm_with_step_eps() -> None:
    net, x, t = small_net(), images(lo=0.2, hi=0.8), torch.tensor([0, 1, 2, 3])
    a = pgd(net, x, t, 0.05, steps=1, step_size=0.05, early_stop=False)
    b = fgsm(net, x, t, 0.05)
    torch.testing.assert_close(a.adversarial, b.adversarial)


def test_pgd_stops_at_the_target_and_freezes_the_image() -> None:
    net, x = small_net(), images(lo=0.2, hi=0.8)
    with torch.no_grad():
        already = net(x).argmax(1)
    out = pgd(net, x, already, 0.05, steps=5)
    assert bool(out.success.all()) and torch.equal(out.steps, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(out.adversarial, x)


def test_attacks_reach_targets_on_the_toy_model_and_report_misses() -> None:
    model = ierf.load_model("toy-resnet")
    batch = generate(6, seed=0, split="test")
    forward = pixel_forward(model)
    with torch.no_grad():
        clean = forward(batch.images).argmax(1)
    target = (clean + 3) % 8
    strong = pgd(forward, batch.images, target, 16 / 255, steps=10)
    assert float(strong.success.float().mean()) >= 0.8
    assert float((strong.adversarial - batch.images).abs().max()) <= 16 / 255 + 1e-6
    weak = fgsm(forward, batch.images, target, 1e-5)
    assert not bool(weak.success.any())
    info = weak.to_dict(0, model.class_names)
    assert info["success"] is False and info["target"] == model.class_names[int(target[0])]
    assert torch.equal(weak.adv_pred, clean)


def test_bad_input_is_refused() -> None:
    net, x = small_net(), images()
    for eps in (0, -0.1, float("inf"), True):
        with pytest.raises(IerfError, match="eps must be a positive"):
            fgsm(net, x, 0, eps)
    with pytest.raises(IerfError, match="pixel range"):
        fgsm(net, x * 3 - 1, 0, 0.1)
    with pytest.raises(IerfError, match="out of range"):
        fgsm(net, x, 7, 0.1)
    with pytest.raises(IerfError, match="3 targets for 4 images"):
        fgsm(net, x, [0, 1, 2], 0.1)
    with pytest.raises(IerfError, match="steps >= 1"):
        pgd(net, x, 0, 0.1, steps=0)
    with pytest.raises(IerfError, match="unknown attack 'cw'"):
        run_attack("cw", net, x, 0, 0.1)
    with pytest.raises(IerfError, match="PGD options"):
        run_attack("fgsm", net, x, 0, 0.1, steps=3)
    with pytest.raises(IerfError, match="does not broadcast"):
        fgsm(net, x, 0, 0.1, mask=torch.ones(1, 1, 5, 5))
