"""LayerNorm with a constant σ and attention with pluggable weights: one written-out form.

Both rule modes need these two operations written out, with a part of them held constant:
AttnLRP (:mod:`ierf.local.attnlrp_rules`) takes LayerNorm's σ as a constant (AttnLRP paper,
Prop. 3.4) and applies its rules to the two products of attention (Props. 3.1–3.3); ViT SRD
(:mod:`ierf.local.frozen`) replays σ and the attention weights A recorded on a first pass.
The forward values are those of ``F.layer_norm`` and ``F.scaled_dot_product_attention``
(masks, causal masking, ``scale`` and grouped-query attention included); only what the
backward pass sees differs, through ``constant`` and ``matmul``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: ``evaluate(compute)``: the value to use for ``compute()`` (itself, a recorded constant, …)
Evaluate = Callable[[Callable[[], torch.Tensor]], torch.Tensor]


def computed(compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` as it is, gradient included."""
    return compute()


def constant(compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` outside autograd: a constant of the backward pass."""
    with torch.no_grad():
        return compute()


def layer_norm(x: torch.Tensor, normalized_shape: Sequence[int],
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, *, sigma: Evaluate = constant) -> torch.Tensor:
    """``F.layer_norm`` with σ a constant (Prop. 3.4): linear in ``x``, mean centring kept.

    ``sigma`` evaluates σ (default: computed here, without gradient; SRD: replayed).
    """
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    y = centred / sigma(lambda: (x.var(dims, unbiased=False, keepdim=True) + eps).sqrt())
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
              *, weights: Evaluate = computed,
              matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul
              ) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` written out: ``softmax(q kᵀ · scale + mask) v``.

    Parameters
    ----------
    q, k, v, attn_mask, is_causal, scale, enable_gqa : as ``F.scaled_dot_product_attention``
        (a boolean mask marks the keys that take part; a float mask is added to the logits).
    dropout_p : ignored: explanations run the model as in evaluation.
    weights : given the function that computes the softmax weights A, the A to use (a
        recorded constant for SRD, detached for CP-LRP; by default A itself).
    matmul : the product for ``q kᵀ`` and ``A v`` (AttnLRP: the uniform rule, Eq. 7).
    """
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, -3), v.repeat_interleave(repeat, -3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale

    def softmax() -> torch.Tensor:
        logits = matmul(q * scale, k.transpose(-2, -1))
        if is_causal:
            causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
            logits = logits.masked_fill(~causal.tril(), float("-inf"))
        if attn_mask is not None:
            logits = (logits.masked_fill(~attn_mask, float("-inf"))
                      if attn_mask.dtype == torch.bool else logits + attn_mask)
        return logits.softmax(-1)

    return matmul(weights(softmax), v)
