"""The plain gradient against Captum's Saliency and the autograd definition."""

from __future__ import annotations

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
    torch.manual_seed(0)
    x = torch.randn(3, 3, 96, 96)
    method = ierf.attributor("gradient", resnet50_random)
    batched = method.attribute(x)
    top = resnet50_random(x).argmax(1)
    for i in range(3):
        torch.testing.assert_close(batched[i], method.attribute(x[i:i + 1], int(top[i]))[0])
