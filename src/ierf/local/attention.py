"""Per-head attention maps of a ViT, their gradients, and the residual stream, in one pass.

TransMM (thesis Eqs. 3.16–3.20), its feature-gradient gating (thesis Ch. 6), rollout and raw
attention all start from the same record: for every block ``ℓ`` the attention probabilities
``A^(ℓ) (B, h, T, T)`` and ``∇A^(ℓ) = ∂y_t/∂A^(ℓ)``, and for chosen blocks the residual
stream ``x^(ℓ) (B, T, C)`` after the block with its gradient ``g^(ℓ) = ∂y_t/∂x^(ℓ)``.
:func:`trace` gets them with one forward and one backward pass.

Supported: timm ``VisionTransformer``-style blocks (an ``attn`` module with ``attn_drop`` and a
``fused_attn`` switch; fused attention is switched off while recording and restored after) and
torchvision's ``vit_b_16`` family and open_clip image towers (``nn.MultiheadAttention`` in
``EncoderBlock`` / ``ResidualAttentionBlock``, recomputed explicitly per head while recording).
Hooks live only for the duration of one :func:`trace`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ierf.errors import IerfError, unknown_name
from ierf.local.mha import explicit_attention
from ierf.models.hooks import forward_hooks, record_outputs
from ierf.models.model import Model


@dataclass(frozen=True)
class AttentionBlock:
    """One transformer block: its module name, the block and its attention module."""

    name: str
    block: nn.Module
    attn: nn.Module


@dataclass
class AttentionTrace:
    """What :func:`trace` recorded, one entry per block in forward order.

    Attributes
    ----------
    blocks : block names (``blocks.3``, ``encoder.layers.encoder_layer_3``).
    attentions : per-head attention probabilities ``A^(ℓ)`` (B, h, T, T), detached.
    attention_grads : ``∂y/∂A^(ℓ)`` (B, h, T, T), or ``None`` without a score.
    residuals : block name → residual stream after the block (B, T, C), for requested blocks.
    residual_grads : block name → ``∂y/∂x^(ℓ)`` (B, T, C), for requested blocks.
    """

    blocks: list[str]
    attentions: list[torch.Tensor]
    attention_grads: list[torch.Tensor] | None
    residuals: dict[str, torch.Tensor]
    residual_grads: dict[str, torch.Tensor]


def attention_blocks(model: Model) -> list[AttentionBlock]:
    """The self-attention blocks of a ViT, in forward order.

    Raises
    ------
    IerfError
        If the model has none (a CNN) or its attention modules are of an unsupported kind.
    """
    found = []
    for name, m in model.net.named_modules():
        attn = getattr(m, "attn", None)
        if isinstance(getattr(attn, "attn_drop", None), nn.Module) and hasattr(attn, "fused_attn"):
            found.append(AttentionBlock(name, m, attn))
        elif isinstance(getattr(m, "self_attention", None), nn.MultiheadAttention):
            found.append(AttentionBlock(name, m, m.self_attention))
        elif isinstance(attn, nn.MultiheadAttention):  # open_clip's ResidualAttentionBlock
            found.append(AttentionBlock(name, m, attn))
    if not found:
        raise IerfError(f"{model.name} has no supported self-attention blocks: attention-based "
                        "methods (raw-attention, rollout, transmm, gated-transmm) explain vision "
                        "transformers (timm VisionTransformer, torchvision vit_b_16, open_clip, "
                        "toy-vit); "
                        "for CNNs use srd, gradient or a CAM method")
    if model.num_prefix_tokens < 1 or getattr(model.net, "global_pool", "token") != "token" \
            or getattr(model.net, "pool_type", "tok") != "tok":  # open_clip's pooling
        raise IerfError(f"{model.name} does not classify from a CLS token (num_prefix_tokens = "
                        f"{model.num_prefix_tokens}, global_pool = "
                        f"{getattr(model.net, 'global_pool', None)!r}); attention-based methods "
                        "read the CLS row of the relevancy matrix, use a CLS-token ViT")
    return found


def block_index(blocks: Sequence[AttentionBlock], layer: int | str) -> int:
    """Position of a block given as an index (negative counts from the end) or module name."""
    names = [b.name for b in blocks]
    if isinstance(layer, int) and not isinstance(layer, bool):
        if not -len(blocks) <= layer < len(blocks):
            raise IerfError(f"block index {layer} is out of range: the model has {len(blocks)} "
                            f"blocks ({names[0]} … {names[-1]})")
        return layer % len(blocks)
    if layer not in names:
        raise unknown_name("attention block", layer, names)
    return names.index(layer)


def trace(model: Model, x: torch.Tensor,
          score: Callable[[torch.Tensor], torch.Tensor] | None = None,
          residual_blocks: Sequence[int] = ()) -> AttentionTrace:
    """Forward ``x`` once recording every block's attention; backward ``score`` once.

    Parameters
    ----------
    model : a ViT (see :func:`attention_blocks`).
    x : (B, 3, H, W) validated input.
    score : logits (B, K) → (B,) target scores ``y_t``; ``None`` records attention only
        (no gradients, no autograd graph).
    residual_blocks : indices of the blocks whose output (residual stream) and its gradient
        are wanted.
    """
    blocks = attention_blocks(model)
    attentions: list[list[torch.Tensor]] = [[] for _ in blocks]
    residuals: dict[int, torch.Tensor] = {}
    with ExitStack() as stack:
        for i, b in enumerate(blocks):
            stack.enter_context(_record_attention(b.attn, attentions[i].append))
        stack.enter_context(record_outputs({i: blocks[i].block for i in residual_blocks},
                                           into=residuals, first_only=False))
        with torch.set_grad_enabled(score is not None):
            # a graph even when the weights are frozen (requires_grad=False)
            logits = model.net(x.detach().requires_grad_(score is not None))
            if any(len(a) != 1 for a in attentions):
                raise IerfError(f"recorded {[len(a) for a in attentions]} attention maps per block "
                                "instead of one each; this ViT's attention is not supported")
            A = [a[0] for a in attentions]
            if A[0].dim() != 4 or A[0].shape[-1] != A[0].shape[-2]:
                raise IerfError(f"recorded attention of shape {tuple(A[0].shape)}, expected "
                                "(B, heads, T, T); this ViT's attention is not supported")
            res = [residuals[i] for i in residual_blocks]
            grads = None if score is None else torch.autograd.grad(score(logits).sum(), [*A, *res])
    names = [blocks[i].name for i in residual_blocks]
    return AttentionTrace([b.name for b in blocks], [a.detach() for a in A],
                          None if grads is None else list(grads[:len(A)]),
                          {n: r.detach() for n, r in zip(names, res, strict=True)},
                          {} if grads is None else dict(zip(names, grads[len(A):], strict=True)))


@contextmanager
def _record_attention(attn: nn.Module, record: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """While active, ``record`` receives the (B, h, T, T) attention probabilities of ``attn``."""
    if isinstance(attn, nn.MultiheadAttention):
        # written out so that A is a node of the graph: asking the module for its weights
        # returns a tensor the output does not depend on, whose gradient vanishes
        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            a = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
            record(a)
            return a @ v

        with explicit_attention(attn, attend):
            yield
        return
    fused = attn.fused_attn
    attn.fused_attn = False  # the explicit softmax path passes A through attn_drop
    try:
        with forward_hooks([(attn.attn_drop, lambda _m, _i, out: record(out))]):
            yield
    finally:
        attn.fused_attn = fused


def cls_row_map(row: torch.Tensor, model: Model, size: tuple[int, int]) -> torch.Tensor:
    """CLS row of a relevancy matrix (B, T) → patch map upsampled to ``size`` (B, H_in, W_in).

    Drops the ``model.num_prefix_tokens`` prefix tokens (CLS, registers), lays the patches on
    ``model.patch_grid`` (square if unknown) and upsamples bilinearly.
    """
    p = model.num_prefix_tokens
    n = row.shape[1] - p
    grid = model.patch_grid
    if grid is None or grid[0] * grid[1] != n:
        side = round(n ** 0.5)
        if side * side != n:
            raise IerfError(f"cannot lay {n} patch tokens on a grid; set the model's patch_grid")
        grid = (side, side)
    patches = row[:, p:].reshape(-1, 1, *grid)
    return F.interpolate(patches, size=size, mode="bilinear", align_corners=False)[:, 0]
