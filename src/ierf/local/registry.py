"""The method registry: ``ierf.attributor(name, model, **opts)`` and ``ierf.methods()``."""

from __future__ import annotations

from torch import nn

from ierf.errors import unknown_name
from ierf.local.base import Attributor
from ierf.local.gradients import Gradient
from ierf.models.model import Model

_REGISTRY: dict[str, type[Attributor]] = {cls.name: cls for cls in (Gradient,)}
DEFAULT_METHOD = "gradient"


def methods() -> list[str]:
    """Names of the available attribution methods."""
    return sorted(_REGISTRY)


def attributor(name: str, model: Model | nn.Module, **opts: object) -> Attributor:
    """Build the attributor ``name`` for ``model`` (an ``ierf.Model`` or a plain ``nn.Module``)."""
    if name not in _REGISTRY:
        raise unknown_name("method", name, methods())
    return _REGISTRY[name](model, **opts)
