"""``nn.MultiheadAttention`` written out around one attention call, so rules see its softmax.

PyTorch's multi-head attention runs its attention step inside ``F.multi_head_attention_forward``
(or a fused kernel), where neither a ``TorchFunctionMode`` nor a hook can reach it. Our ViT
methods need that step: SRD freezes the softmax, AttnLRP applies its attention rules to
``F.scaled_dot_product_attention``, TransMM records ``A``. :func:`self_attention` is the
same computation with the attention step a parameter; :func:`explicit_attention` routes
every ``nn.MultiheadAttention`` of a network through it (torchvision ViTs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ierf.errors import IerfError

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
UNSUPPORTED = ("supported: nn.MultiheadAttention as self-attention with a packed in-projection "
               "and no masks, bias_k/v, zero attention or static keys (as in torchvision ViTs)")


def self_attention(x: torch.Tensor, in_proj_weight: torch.Tensor,
                   in_proj_bias: torch.Tensor | None, out_proj_weight: torch.Tensor,
                   out_proj_bias: torch.Tensor | None, num_heads: int,
                   attention: Attention = F.scaled_dot_product_attention) -> torch.Tensor:
    """Multi-head self-attention of batch-first tokens ``x`` (B, T, E): in-projection, per-head
    ``attention(q, k, v)`` on (B, h, T, E/h), out-projection."""
    q, k, v = F.linear(x, in_proj_weight, in_proj_bias).unflatten(-1, (3, num_heads, -1)) \
        .permute(2, 0, 3, 1, 4)
    out = attention(q, k, v).transpose(1, 2).flatten(2)
    return F.linear(out, out_proj_weight, out_proj_bias)


def check_supported(mha: nn.MultiheadAttention) -> None:
    """Raise for the ``nn.MultiheadAttention`` configurations :func:`explicit_attention` lacks."""
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise IerfError(UNSUPPORTED)


def _forward(mha: nn.MultiheadAttention, attention: Attention, query: torch.Tensor,
             key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
             need_weights: bool = True, attn_mask: torch.Tensor | None = None,
             average_attn_weights: bool = True, is_causal: bool = False
             ) -> tuple[torch.Tensor, None]:
    """``nn.MultiheadAttention.forward`` through :func:`self_attention` (weights: ``None``)."""
    if key is not query or value is not query or key_padding_mask is not None \
            or attn_mask is not None or is_causal or query.dim() != 3:
        raise IerfError(UNSUPPORTED)
    x = query if mha.batch_first else query.transpose(0, 1)
    out = self_attention(x, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight,
                         mha.out_proj.bias, mha.num_heads, attention)
    return (out if mha.batch_first else out.transpose(0, 1)), None


@contextmanager
def explicit_attention(net: nn.Module, attention: Attention = F.scaled_dot_product_attention
                       ) -> Iterator[None]:
    """Route every ``nn.MultiheadAttention`` in ``net`` (``net`` itself included) through
    ``attention``; the instance ``forward`` overrides are removed on exit."""
    mhas = [m for m in net.modules() if isinstance(m, nn.MultiheadAttention)]
    for m in mhas:
        check_supported(m)
    for m in mhas:
        m.forward = partial(_forward, m, attention)  # instance attribute shadows the method
    try:
        yield
    finally:
        for m in mhas:
            del m.forward
