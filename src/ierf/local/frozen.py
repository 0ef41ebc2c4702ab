"""Attention weights and LayerNorm scales as constants of the forward pass (ViT SRD).

Our extension of SRD to ViTs (not in the paper, which uses AttnLRP there): with the
softmax attention matrix A and each LayerNorm's 1/σ held at their forward values, every map
between two nonlinearities of a ViT (patch embedding, LayerNorm, qkv/proj/MLP linears,
token mixing ``A·V``, residual adds) is affine, so sharing ratios (Eq. 18) are defined and
the same one-VJP engine gives ViT tokens their iERFs.

:class:`FrozenMode` records those constants on a first pass and replays them on later ones,
so the bias pass and the relevance pass see exactly the forward's attention and scales. The
written-out LayerNorm and attention are :mod:`ierf.local.frozen_ops`, shared with AttnLRP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ierf.errors import IerfError
from ierf.local import frozen_ops
from ierf.local.mha import UNSUPPORTED, self_attention

_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax}


class FrozenMode(TorchFunctionMode):
    """Compute LayerNorm with a constant σ and attention with a constant A.

    Parameters
    ----------
    constants : ``None`` to record (``.constants`` fills up in call order), or the list a
        recording pass produced, to replay.
    """

    def __init__(self, constants: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.recording = constants is None
        self.constants: list[torch.Tensor] = [] if constants is None else constants
        self._next = 0
        self.active = True

    def _constant(self, compute) -> torch.Tensor:
        if self.recording:
            value = compute().detach()
            self.constants.append(value)
            return value
        value = self.constants[self._next]
        self._next += 1
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.active:
            return func(*args, **kwargs)
        if func is F.layer_norm:
            return self._layer_norm(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        if func in _SOFTMAX:
            return self._constant(lambda: func(*args, **kwargs))
        if func is F.multi_head_attention_forward:  # nn.MultiheadAttention (torchvision ViTs)
            return self._multi_head_attention(*args, **kwargs)
        return func(*args, **kwargs)

    def _layer_norm(self, *args, **kwargs) -> torch.Tensor:
        """``F.layer_norm`` with σ recorded / replayed."""
        return frozen_ops.layer_norm(*args, **kwargs, sigma=self._constant)

    def _attention(self, *args, **kwargs) -> torch.Tensor:
        """``F.scaled_dot_product_attention`` with the weights A recorded / replayed."""
        return frozen_ops.attention(*args, **kwargs, weights=self._constant)

    def _multi_head_attention(self, query, key, value, embed_dim, num_heads, in_proj_weight,
                              in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p,
                              out_proj_weight, out_proj_bias, training=True,
                              key_padding_mask=None, need_weights=True, attn_mask=None,
                              use_separate_proj_weight=False, q_proj_weight=None,
                              k_proj_weight=None, v_proj_weight=None, static_k=None,
                              static_v=None, average_attn_weights=True, is_causal=False):
        """``F.multi_head_attention_forward`` (seq-first) with its softmax through
        :meth:`_attention` (a mode does not see the calls inside a function it passes on)."""
        if (key is not query or value is not query or bias_k is not None or add_zero_attn
                or key_padding_mask is not None or attn_mask is not None or static_k is not None
                or is_causal or use_separate_proj_weight or query.dim() != 3
                or (training and dropout_p > 0) or need_weights):
            raise IerfError(f"{UNSUPPORTED}, called with need_weights=False; explain this "
                            "model with a gradient-based method instead")
        out = self_attention(query.transpose(0, 1), in_proj_weight, in_proj_bias,
                             out_proj_weight, out_proj_bias, num_heads, self._attention)
        return out.transpose(0, 1), None
