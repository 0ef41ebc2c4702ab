"""Temporary changes to a network that the wrapped libraries need, undone on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def no_inplace(net: nn.Module) -> Iterator[None]:
    """Set ``inplace=False`` on every module that has it switched on, and restore it on exit.

    Backward hooks (Captum's guided backprop, Zennit's rules) and saved activations
    (pytorch-grad-cam) break when an activation overwrites its input: timm's EfficientNets
    and torchvision's ResNets build their ReLU/ReLU6 modules with ``inplace=True``.
    """
    switched = [m for m in net.modules() if getattr(m, "inplace", None) is True]
    for m in switched:
        m.inplace = False
    try:
        yield
    finally:
        for m in switched:
            m.inplace = True


@contextmanager
def frozen_params(net: nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` of every parameter; on exit restore it and each ``.grad``.

    pytorch-grad-cam calls ``model.zero_grad()`` and ``loss.backward()``: without this it
    would wipe the user's parameter gradients, leave its own behind, and spend half its
    backward pass on weight gradients nobody reads. The input must require grad instead.
    """
    params = list(net.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, (requires_grad, grad) in zip(params, saved):
            p.requires_grad_(requires_grad)
            p.grad = grad
