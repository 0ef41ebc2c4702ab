"""The metric contract: hyperparameters in ``__init__``, data in ``__call__`` (as in Quantus).

Every metric scores a batch of attributions ``a`` (B, H, W) of a model on inputs ``x``
(B, C, H, W) for target classes ``y`` (B,) and returns (B,) float scores on ``x``'s device.
``score_direction`` says whether higher or lower scores are better (Quantus' naming).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from ierf.errors import IerfError
from ierf.models.model import Model, as_model, check_input

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain(net, x, y) -> (B, H, W)``: re-runs an explainer (stability, randomisation, attack)."""


class Metric(ABC):
    """Base class of the evaluation metrics.

    Class attributes
    ----------------
    name : registry name, e.g. ``"pointing-game"``.
    score_direction : ``"higher"`` or ``"lower"``: which scores are better.
    needs_mask : the metric needs a ground-truth ``mask`` (localisation).
    needs_explain : the metric re-runs the explainer and needs ``explain``.
    """

    name: ClassVar[str]
    score_direction: ClassVar[str]
    needs_mask: ClassVar[bool] = False
    needs_explain: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        """Score attributions.

        Parameters
        ----------
        model : an :class:`ierf.Model` or a plain ``nn.Module`` returning logits.
        x : (B, C, H, W) model input, already normalised.
        y : (B,) int64 target classes.
        a : (B, H, W) attributions (a (B, C, H, W) map is summed over channels).
        mask : (B, H, W) bool ground-truth mask (localisation metrics).
        explain : ``explain(net, x, y) -> (B, H, W)`` (stability, randomisation).

        Returns
        -------
        (B,) float scores on ``x``'s device.
        """

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({hyper})"

    def validate(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor | int,
                 a: torch.Tensor, mask: torch.Tensor | None = None,
                 explain: Explain | None = None
                 ) -> tuple[Model, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Check the inputs of :meth:`__call__` and bring them to one device and dtype.

        Returns ``(model, x, y, a, mask)``: ``model`` wrapped by :func:`ierf.as_model`, ``y``
        int64 (B,), ``a`` float (B, H, W) on ``x``'s device, ``mask`` bool (B, H, W) or ``None``.
        """
        m = as_model(model)
        x = check_input(x)
        b, _, h, w = x.shape
        y = check_labels(y, b, x.device)
        a = check_attribution(a, (b, h, w), x.device)
        if self.needs_mask:
            if mask is None:
                raise IerfError(f"metric {self.name!r} needs a ground-truth mask: pass "
                                f"mask=(B, H, W) bool tensor of the object's pixels")
            mask = check_mask(mask, (b, h, w), x.device)
        elif mask is not None:
            mask = check_mask(mask, (b, h, w), x.device)
        if self.needs_explain and explain is None:
            raise IerfError(f"metric {self.name!r} re-runs the explainer: pass "
                            "explain=lambda net, x, y: (B, H, W) attribution")
        return m, x, y, a, mask


def check_labels(y: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """(B,) int64 target classes on ``device``; an int is broadcast over the batch."""
    y = torch.as_tensor(y, device=device)
    if y.dim() == 0:
        y = y.expand(batch)
    if y.shape != (batch,) or y.is_floating_point():
        raise IerfError(f"targets y must be (B,) = ({batch},) integer class indices, "
                        f"got {tuple(y.shape)} {y.dtype}")
    return y.long()


def check_attribution(a: torch.Tensor, shape: tuple[int, int, int],
                      device: torch.device) -> torch.Tensor:
    """(B, H, W) finite float attribution on ``device``; (B, C, H, W) is summed over C."""
    if not isinstance(a, torch.Tensor):
        raise IerfError(f"attribution must be a torch.Tensor of shape {shape}, got {type(a).__name__}")
    if a.dim() == 4 and a.shape[0] == shape[0] and tuple(a.shape[2:]) == shape[1:]:
        a = a.sum(1)
    if tuple(a.shape) != tuple(shape):
        raise IerfError(f"attribution must have shape (B, H, W) = {shape} like the input, "
                        f"got {tuple(a.shape)}; upsample the map to the input size first")
    a = a.detach().to(device=device, dtype=torch.float32)
    if not torch.isfinite(a).all():
        raise IerfError("attribution contains NaN or infinite values; check the explainer")
    return a


def check_mask(mask: torch.Tensor, shape: tuple[int, int, int],
               device: torch.device) -> torch.Tensor:
    """(B, H, W) bool mask on ``device``; (H, W) is broadcast over the batch."""
    if not isinstance(mask, torch.Tensor):
        raise IerfError(f"mask must be a torch.Tensor of shape {shape}, got {type(mask).__name__}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() == 2:
        mask = mask.expand(shape[0], *mask.shape)
    if tuple(mask.shape) != tuple(shape):
        raise IerfError(f"mask must have shape (B, H, W) = {shape} like the input, "
                        f"got {tuple(mask.shape)}")
    if mask.is_floating_point() and not torch.isfinite(mask).all():
        raise IerfError("mask contains NaN or infinite values")
    return mask.to(device) != 0


def normalise_map(a: torch.Tensor, normalise: bool = True, absolute: bool = False) -> torch.Tensor:
    """Quantus' defaults: divide each map by its largest absolute value, then optionally ``|·|``.

    The paper computes every metric "on normalized saliency maps following the default
    settings of Quantus" and clamped to [-1, 1] (Appendix VII-G); after the division by
    the max-abs the clamp changes nothing. All-zero maps stay zero.
    """
    if normalise:
        peak = a.flatten(1).abs().amax(1).view(-1, *[1] * (a.dim() - 1))
        a = a / torch.where(peak > 0, peak, torch.ones_like(peak))
    return a.abs() if absolute else a


def class_scores(logits: torch.Tensor, y: torch.Tensor, output: str) -> torch.Tensor:
    """(N,) target-class logits (``output="logits"``) or softmax probabilities."""
    if output == "probabilities":
        logits = logits.softmax(-1)
    return logits.gather(1, y[:, None])[:, 0].float()


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise :class:`IerfError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise IerfError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
