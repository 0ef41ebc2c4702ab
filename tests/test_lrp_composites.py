"""`lrp` with Zennit's composites: relevance is conserved through residual sums of any
architecture (LRP's sum rule, ShareSums), where plain canonizers know torchvision's only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ierf
from ierf.errors import IerfError


class Residual(nn.Module):
    """Bias-free conv net with an inlined residual sum (no torchvision block to canonize)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.act0, self.act1, self.act2 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4, bias=False)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g).abs() * 0.3   # positive logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act0(self.stem(x))
        h = self.act2(self.act1(self.conv(h)) + h)
        return self.fc(self.pool(h).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon-plus-flat", "epsilon-plus"])
def test_relevance_is_conserved_through_a_residual_sum(composite) -> None:
    net = Residual().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    logits = net(x)[:, 2]
    ours = ierf.attributor("lrp", net, composite=composite).attribute(x, 2).sum((1, 2))
    torch.testing.assert_close(ours, logits.detach(), rtol=1e-4, atol=1e-5)
    # without the sum rule the skip path's relevance is counted twice
    copied = ierf.attributor("lrp-zplus", net).attribute(x, 2).sum((1, 2))
    assert (copied > 1.2 * logits).all()


def test_gamma_box_bounds_need_a_pixel_range_and_bad_names_are_refused() -> None:
    with pytest.raises(IerfError, match="pixel range"):
        ierf.attributor("lrp", Residual(), composite="epsilon-gamma-box").attribute(
            torch.rand(1, 3, 8, 8), 0)
    with pytest.raises(IerfError, match="unknown LRP composite"):
        ierf.attributor("lrp", Residual(), composite="zplus")
    toy = ierf.load_model("toy-resnet")
    x = toy.normalize(torch.rand(1, 3, 64, 64))
    r = ierf.attributor("lrp", toy, composite="epsilon-gamma-box").attribute(x)
    assert r.shape == (1, 64, 64) and torch.isfinite(r).all()
