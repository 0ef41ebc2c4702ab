"""The one verb every attributor shares: ``attribute(x, target) -> (B, H_in, W_in)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

import torch
from torch import nn

from ierf.errors import IerfError
from ierf.models.model import Model, as_model
from ierf.targets import ClassTarget, resolve_target, target_layer


class Attributor(ABC):
    """Base class: validates input, resolves the target, returns maps on the input's device.

    Subclasses implement :meth:`_attribute`. Attributors that register hooks release them
    in :meth:`close`; use them as context managers to be sure.
    """

    name: ClassVar[str] = ""
    #: model kinds the method is made for (``"cnn"``, ``"vit"``)
    kinds: ClassVar[tuple[str, ...]] = ("cnn", "vit")

    def __init__(self, model: Model | nn.Module) -> None:
        self.model = as_model(model)

    def attribute(self, x: torch.Tensor, target: object = None) -> torch.Tensor:
        """Explain ``target`` for each image of ``x``.

        Parameters
        ----------
        x : (B, 3, H, W) preprocessed images.
        target : ``None``/``"auto"`` (top class), class index or name, indices per image,
            or a target object (anything with ``scalar``, see :mod:`ierf.targets`).

        Returns
        -------
        (B, H, W) attribution maps, larger = more evidence for the target.
        """
        x = self.model.check(x)
        out = self._attribute(x, target)
        return out.to(x.device)

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
