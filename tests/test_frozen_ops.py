"""LayerNorm and attention written out once (ierf.local.frozen_ops) for both rule modes:
forward values are those of the torch functions, whatever part is held constant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ierf.local.attnlrp_rules import AttnLRPMode
from ierf.local.frozen import FrozenMode

MODES = {"frozen-record": lambda: FrozenMode(), "attnlrp": lambda: AttnLRPMode(),
         "attnlrp-cp": lambda: AttnLRPMode(cp=True), "attnlrp-eps": lambda: AttnLRPMode(0.1)}


def qkv(kv_heads: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k, v = (torch.randn(2, kv_heads, 7, 8, generator=g) for _ in range(2))
    return tuple(t.requires_grad_(True) for t in (q, k, v))


def masks() -> dict[str, dict]:
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(5, 7, generator=g) > 0.3
    keep[:, 0] = True  # every query sees one key
    return {"none": {}, "bool": {"attn_mask": keep},
            "float": {"attn_mask": torch.randn(2, 1, 5, 7, generator=g)},
            "causal": {"is_causal": True}, "scale": {"scale": 0.3},
            "scale+bool": {"scale": 0.3, "attn_mask": keep}}


def replayed(call):
    """``call()`` under a FrozenMode that replays what a recording pass saw."""
    recording = FrozenMode()
    with recording:
        call()
    with FrozenMode(recording.constants):
        return call()


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("mask", sorted(masks()))
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_attention_forward_is_unchanged(mode, mask, kv_heads):
    q, k, v = qkv(kv_heads)
    kwargs = {**masks()[mask], **({"enable_gqa": True} if kv_heads != 4 else {})}
    want = F.scaled_dot_product_attention(q, k, v, **kwargs)
    with MODES[mode]():
        got = F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(replayed(lambda: F.scaled_dot_product_attention(q, k, v, **kwargs)),
                               want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_forward_is_unchanged(mode, affine):
    g = torch.Generator().manual_seed(2)
    x = (3 * torch.randn(2, 5, 6, 8, generator=g) + 1).requires_grad_(True)
    w, b = (torch.randn(6, 8, generator=g) for _ in range(2)) if affine else (None, None)
    want = F.layer_norm(x, (6, 8), w, b, eps=1e-3)
    with MODES[mode]():
        got = F.layer_norm(x, (6, 8), w, b, eps=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(replayed(lambda: F.layer_norm(x, (6, 8), w, b, eps=1e-3)), want,
                               rtol=1e-5, atol=1e-6)


def test_held_constants_carry_no_gradient():
    q, k, v = qkv(2)
    for mode in (FrozenMode(), AttnLRPMode(cp=True)):  # constant attention weights
        with mode:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        g_q, g_k = torch.autograd.grad(out.sum(), [q, k], allow_unused=True)
        assert g_q is None and g_k is None
    x = torch.randn(3, 8, requires_grad=True)
    with AttnLRPMode():  # σ constant: LayerNorm is linear in x (Prop. 3.4)
        y = F.layer_norm(x, (8,))
    (g,) = torch.autograd.grad(y[:, 2].sum(), x)
    sigma = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(g, (torch.eye(8)[2] - 1 / 8).expand(3, 8) / sigma)
