"""B-cos layers against their formula (FaCT Eq. 2) and their dynamic linearity (Eq. 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ierf.fact import (
    BcosConv2d,
    BcosLinear,
    UncenteredBatchNorm2d,
    encode_input,
    explanation_mode,
)
from ierf.fact.layers import _BcosB2


@pytest.mark.parametrize("b", [2.0, 3.0])
def test_bcos_conv_matches_formula(b: float) -> None:
    torch.manual_seed(0)
    conv = BcosConv2d(4, 5, kernel_size=3, stride=2, padding=1, b=b).double()
    x = torch.randn(2, 4, 9, 9, dtype=torch.double)
    w = conv.unit_weight()
    assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(5, dtype=torch.double))
    patches = F.unfold(x, 3, padding=1, stride=2)  # (B, 4·9, L)
    lin = torch.einsum("ok,bkl->bol", w.flatten(1), patches)
    cos = lin / (patches.square().sum(1, keepdim=True) + 1e-6).sqrt()
    scale = cos.abs() if b == 2 else (cos.abs() + 1e-6) ** (b - 1)
    expected = (scale * lin).view(2, 5, 5, 5)
    assert torch.allclose(conv(x), expected, atol=1e-12)
    assert not any(n == "bias" for n, _ in conv.named_parameters())


def test_bcos_linear_matches_formula() -> None:
    torch.manual_seed(0)
    lin = BcosLinear(6, 3).double()
    x = torch.randn(4, 6, dtype=torch.double)
    w = lin.unit_weight()
    assert torch.allclose(w.norm(dim=1), torch.ones(3, dtype=torch.double))
    dot = x @ w.T
    cos = dot / (x.norm(dim=1, keepdim=True) ** 2 + 1e-6).sqrt()
    assert torch.allclose(lin(x), cos.abs() * dot, atol=1e-12)


def test_explanation_mode_gives_exact_dynamic_linear_map() -> None:
    """With the scales detached, ``out = W(x) x`` and ``W(x)`` is the input gradient."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(BcosConv2d(6, 8, 3, 1, 1), UncenteredBatchNorm2d(8),
                              BcosConv2d(8, 4, 3, 2, 1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), BcosLinear(4, 3)).double()
    net.train()(encode_input(torch.rand(8, 3, 10, 10, dtype=torch.double)))  # set running var
    x = encode_input(torch.rand(2, 3, 10, 10, dtype=torch.double)).requires_grad_(True)
    with explanation_mode(net):
        out = net(x)
        W = torch.stack([torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)[0]
                         for c in range(3)], 1)  # (B, 3, 6, H, W) dynamic weights
    assert torch.allclose((W * x.unsqueeze(1)).flatten(2).sum(-1), out, rtol=1e-10, atol=1e-12)
    assert net.training  # restored
    assert not any(m.explain for m in net.modules() if hasattr(m, "explain"))


def test_single_layer_dynamic_weight_is_scaled_unit_weight() -> None:
    """For B = 2 a 1×1 B-cos conv's dynamic weight at a pixel is ``|cos| · ŵ``."""
    torch.manual_seed(1)
    conv = BcosConv2d(6, 2, 1).double()
    x = torch.rand(1, 6, 1, 1, dtype=torch.double, requires_grad=True)
    with explanation_mode(conv):
        out = conv(x)
        (g,) = torch.autograd.grad(out[0, 0, 0, 0], x)
    w = conv.unit_weight()[0, :, 0, 0]
    cos = (w @ x[0, :, 0, 0]) / (x.detach().square().sum() + 1e-6).sqrt()
    assert torch.allclose(g[0, :, 0, 0], cos.abs() * w)


def test_fused_training_op_matches_autograd() -> None:
    torch.manual_seed(0)
    lin = torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    norm = (torch.rand(2, 1, 4, 4, dtype=torch.double) + 1).requires_grad_()
    assert torch.autograd.gradcheck(_BcosB2.apply, (lin, norm))
    tokens = torch.randn(2, 5, 3, dtype=torch.double, requires_grad=True)
    tnorm = (torch.rand(2, 5, 1, dtype=torch.double) + 1).requires_grad_()
    assert torch.autograd.gradcheck(_BcosB2.apply, (tokens, tnorm))
    conv = BcosConv2d(2, 3, 3, 2, 1).double()
    assert torch.autograd.gradcheck(conv, (torch.randn(1, 2, 5, 5, dtype=torch.double,
                                                       requires_grad=True),))


def test_uncentered_norm_is_bias_free_and_linear_in_eval() -> None:
    torch.manual_seed(0)
    bn = UncenteredBatchNorm2d(3)
    x = torch.randn(16, 3, 5, 5) + 4.0
    bn.train()(x)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=False))
    bn.eval()
    assert torch.equal(bn(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))
    assert torch.allclose(bn(2 * x[:2]), 2 * bn(x[:2]))
    assert [n for n, _ in bn.named_parameters()] == ["weight"]


def test_encode_input_adds_inverse_channels() -> None:
    x = torch.rand(2, 3, 4, 4)
    e = encode_input(x)
    assert e.shape == (2, 6, 4, 4)
    assert torch.allclose(e[:, 3:], 1 - x)
