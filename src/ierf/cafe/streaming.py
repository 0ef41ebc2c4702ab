"""Image streams and a bounded token buffer for training SAEs on activations (IERF Sec. V-C).

The paper trains one SAE per layer on 5 × 10⁸ tokens: far more than fit in memory. Tokens
are streamed instead: images are read batch by batch, run through the model once for every
layer wanted, and each (layer, token kind)'s tokens go into a :class:`TokenBuffer` of fixed
capacity. A full buffer is shuffled and drained in minibatches; memory never exceeds the
capacity × channels per buffer, whatever the image count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ierf.data.sources import ImageSource, load_images
from ierf.errors import IerfError
from ierf.models.model import Model


class ImageStream(Protocol):
    """Images read a slice at a time: ``len``, ``load(start, stop) -> (n, 3, H, W)`` model
    inputs, and ``describe()``: a string naming the images (settings, provenance)."""

    def __len__(self) -> int: ...

    def load(self, start: int, stop: int) -> torch.Tensor: ...

    def describe(self) -> str: ...


@dataclass
class SourceImages:
    """The images ``ids`` of an :class:`~ierf.data.sources.ImageSource`, preprocessed for
    ``model``."""

    source: ImageSource
    ids: Sequence[str]
    model: Model

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, start: int, stop: int) -> torch.Tensor:
        return load_images(self.source, list(self.ids[start:stop]), self.model)

    def describe(self) -> str:
        return f"{self.source}[{len(self.ids)}]"


@dataclass
class TensorImages:
    """Model-ready images already in memory, ``(n, 3, H, W)``."""

    x: torch.Tensor
    name: str = "tensor"

    def __len__(self) -> int:
        return len(self.x)

    def load(self, start: int, stop: int) -> torch.Tensor:
        return self.x[start:stop]

    def describe(self) -> str:
        return f"{self.name}[{len(self.x)}]"


class TokenBuffer:
    """A fixed-capacity store of ``(n, C)`` tokens: :meth:`add` until :attr:`full`, then
    :meth:`drain` shuffled minibatches. What does not fit waits in the buffer's overflow
    until the next drain, so no token is lost and memory stays bounded by
    ``capacity + one image batch``.
    """

    def __init__(self, capacity: int, n_features: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if capacity < 1:
            raise IerfError(f"the token buffer needs a capacity ≥ 1, got {capacity}")
        self.capacity = capacity
        self.data = torch.empty(capacity, n_features, device=device, dtype=dtype)
        self.size = 0
        self.overflow = torch.empty(0, n_features, device=device, dtype=dtype)

    @property
    def full(self) -> bool:
        return self.size == self.capacity

    def add(self, tokens: torch.Tensor) -> None:
        """Append ``(n, C)`` tokens; those beyond the capacity are kept for after the drain."""
        tokens = torch.cat([self.overflow, tokens.to(self.data)])
        take = min(self.capacity - self.size, len(tokens))
        self.data[self.size:self.size + take] = tokens[:take]
        self.size += take
        self.overflow = tokens[take:].clone()

    def drain(self, batch_size: int, generator: torch.Generator, passes: int = 1
              ) -> Iterator[torch.Tensor]:
        """Shuffled minibatches of ``batch_size`` over the stored tokens (a last smaller one
        per pass too), ``passes`` times, then the buffer is refilled from its overflow."""
        orders = [torch.randperm(self.size, generator=generator).to(self.data.device)
                  for _ in range(passes)]
        batches = [self.data[i] for order in orders for i in order.split(batch_size)]
        self.size = 0
        pending, self.overflow = self.overflow, self.overflow[:0]
        self.add(pending)
        return iter(batches)

    def state(self) -> dict[str, torch.Tensor]:
        """The stored tokens (for a checkpoint)."""
        return {"data": self.data[:self.size].clone(), "overflow": self.overflow.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        n = len(state["data"])
        self.data[:n] = state["data"].to(self.data)
        self.size = n
        self.overflow = state["overflow"].to(self.data)
