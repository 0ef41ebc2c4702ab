"""The plain gradient against Captum's Saliency and the autograd definition."""

from __future__ import annotations

import copy

import torch
from captum.attr import Saliency

import ierf


def test_gradient_matches_captum_saliency(lite0):
    x = lite0.preprocess(ierf.load_image("chelsea"))
    x = torch.cat([x, x.flip(-1)])
    ours = ierf.attributor("gradient", lite0).attribute(x, target=[285, 967])
    ref = Saliency(lite0.net).attribute(x, target=[285, 967], abs=True).amax(1)
    assert ours.shape == (2, 224, 224)
    torch.testing.assert_close(ours, ref)


def test_batched_equals_one_by_one_and_auto_target_is_top_class(resnet50_random):
    # Run in float64: the gradient of a ReLU network is piecewise constant in the ReLU/max-pool
    # pattern, so re-associated float32 sums (batch-size-dependent conv kernels) flip every
    # pre-activation within ~eps32·|z| of zero, and with ~10⁶ pre-activations per image one
    # flip is likely (measured: 0.4 % max difference on one of three images, 1 % against
    # float64); no tolerance on float32 maps is then safe. In float64 a flip needs |z| within
    # eps64 ≈ 2e-16 of zero (≈1e-10 expected flips), and a re-associated sum moves by at most
    # n·eps64 relative over its terms (fan-in n ≤ 3·3·512 = 4608, ~100 conv layers forward and
    # backward: ≈1e-10); atol = 1e-9·max|map| bounds that with a 10× margin.
    model = copy.deepcopy(resnet50_random)
    model.net.double()
    torch.manual_seed(0)
    x = torch.randn(3, 3, 96, 96, dtype=torch.float64)
    method = ierf.attributor("gradient", model)
    batched = method.attribute(x)
    top = model(x).argmax(1)
    for i in range(3):
        torch.testing.assert_close(batched[i], method.attribute(x[i:i + 1], int(top[i]))[0],
                                   rtol=0, atol=1e-9 * batched[i].abs().max().item())
