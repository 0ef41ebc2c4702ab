"""The one verb every attributor shares: ``attribute(x, target) -> (B, H_in, W_in)``."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Self

import torch
from torch import nn

from ierf.errors import IerfError
from ierf.models.model import Model, as_model
from ierf.targets import ClassTarget, LayerTarget, one_layer, resolve_target, target_layer


class Attributor(ABC):
    """Base class: validates input, resolves the target, returns maps on the input's device.

    Subclasses implement :meth:`_attribute`. Attributors that register hooks release them
    in :meth:`close`; use them as context managers to be sure.
    """

    name: ClassVar[str] = ""
    #: model kinds the method is made for (``"cnn"``, ``"vit"``)
    kinds: ClassVar[tuple[str, ...]] = ("cnn", "vit")
    #: constructor options that may also be given to :meth:`attribute` for one call
    #: (Captum's habit: ``ig.attribute(x, target, n_steps=64)``)
    call_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: Model | nn.Module) -> None:
        self.model = as_model(model)

    def attribute(self, x: torch.Tensor, target: object = None, **options: object
                  ) -> torch.Tensor:
        """Explain ``target`` for each image of ``x``.

        Parameters
        ----------
        x : (B, 3, H, W) preprocessed images.
        target : ``None``/``"auto"`` (top class), class index or name, indices per image,
            or a target object (anything with ``scalar``, see :mod:`ierf.targets`).
        **options : this call's values of the method's :attr:`call_options` (the attributor
            itself keeps its own).

        Returns
        -------
        (B, H, W) attribution maps, larger = more evidence for the target; (B, 3, H, W) per
        colour channel for the methods that take ``per_channel=True``.
        """
        method = self.with_options(**options)
        x = method.model.check(x)
        return method._attribute(x, target).to(x.device)

    def with_options(self, **options: object) -> Self:
        """A copy of this attributor with some :attr:`call_options` changed."""
        if not options:
            return self
        unknown = sorted(set(options) - set(self.call_options))
        if unknown:
            allowed = ", ".join(self.call_options) or "none"
            raise IerfError(f"method {self.name!r} takes no option {', '.join(map(repr, unknown))} "
                            f"at attribute() time (there: {allowed}); give the others when "
                            f"creating it: ierf.attributor({self.name!r}, model, ...)")
        method = copy.copy(self)
        for key, value in options.items():
            setattr(method, key, value)
        return method

    @abstractmethod
    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        """(B, H, W) maps for a validated batch ``x``; each method implements this."""

    def score(self, logits: torch.Tensor, target: object) -> torch.Tensor:
        """(B,) target scores of ``logits`` (the target resolved against these logits)."""
        if target_layer(target) is not None:
            raise IerfError(f"method {self.name!r} explains the model output, not a target on "
                            f"layer {target.layer!r}: use SRD or AttnLRP for PFV-level targets")
        return resolve_target(target, logits.detach(), self.model.class_names).scalar(logits)

    def class_indices(self, x: torch.Tensor, target: object) -> torch.Tensor:
        """(B,) class indices of a class target, resolved on one no-grad forward pass of ``x``.

        For wrapped libraries that take class indices (Captum, pytorch-grad-cam, Zennit):
        ``auto`` becomes each image's top class, names become indices, and the range is checked.
        """
        with torch.no_grad():
            logits = self.model.net(x)
        resolved = resolve_target(target, logits, self.model.class_names)
        if not isinstance(resolved, ClassTarget):
            raise IerfError(f"method {self.name!r} explains class logits: give a class index or "
                            f"name, 'auto', or ierf.ClassTarget, not {target!r}")
        resolved.scalar(logits)  # checks the range of a ClassTarget passed as an object
        return resolved.indices(x.shape[0], x.device)

    def close(self) -> None:
        """Release hooks or other resources (nothing to do for hook-free attributors)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recorded_layer(targets: Sequence[LayerTarget], recorded: Sequence[str],
                   internal_batch_size: int) -> str:
    """The one layer of PFV-level ``targets``, checked against the layers a shared forward
    pass recorded (``forward_pass(x, layers)`` of SRD and AttnLRP)."""
    if internal_batch_size < 1:
        raise IerfError(f"internal_batch_size must be ≥ 1, got {internal_batch_size}")
    layer = one_layer(targets)
    if layer not in recorded:
        raise IerfError(f"this pass recorded layers {list(recorded)}, not {layer!r}; pass it "
                        "to forward_pass()")
    return layer
