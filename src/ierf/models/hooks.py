"""Forward hooks that are always released: record named outputs, stop a forward early.

Every place that needs a module's output during a forward pass uses these context managers
instead of registering and removing hooks by hand (pytorch-grad-cam's habit: hooks that are
released even when the forward raises).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]],
                  pre_hooks: Iterable[tuple[nn.Module, Callable]] = ()) -> Iterator[None]:
    """Register each ``(module, hook)`` pair's forward hook (and each ``pre_hooks`` pair's
    forward pre-hook) for the ``with`` block; removed on exit, whatever happens inside. A
    module may appear in several pairs."""
    handles = [*(m.register_forward_hook(h) for m, h in hooks),
               *(m.register_forward_pre_hook(h) for m, h in pre_hooks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_outputs(modules: Mapping[Hashable, nn.Module], into: dict | None = None,
                   first_only: bool = True, copy: bool = False) -> Iterator[dict]:
    """Record each named module's output during the ``with`` block.

    Parameters
    ----------
    modules : name (any key) → module.
    into : dictionary to fill (a new one by default); yielded.
    first_only : keep the first output of a module called more than once (reused modules);
        ``False`` keeps the last.
    copy : record a copy of each tensor output, so that in-place operations later in the
        forward (``out += identity`` after a ResNet's ``bn3``, ``ReLU(inplace=True)``) do not
        change what was recorded.
    """
    outputs: dict = {} if into is None else into

    def recorder(name: Hashable) -> Callable:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if first_only and name in outputs:
                return
            outputs[name] = out.clone() if copy and isinstance(out, torch.Tensor) else out
        return hook

    with forward_hooks((m, recorder(n)) for n, m in modules.items()):
        yield outputs


class _StopForward(Exception):
    """Raised by :func:`forward_until`'s hook to end a forward pass early."""


def forward_until(net: nn.Module, x: torch.Tensor, layer: nn.Module,
                  on_output: Callable[[torch.Tensor], None]) -> None:
    """Run ``net(x)`` only as far as ``layer``'s (first) output, handed to ``on_output``."""

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        on_output(out)
        raise _StopForward

    try:
        with forward_hooks([(layer, hook)]):
            net(x)
    except _StopForward:
        pass
