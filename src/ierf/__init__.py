"""ierf: explain vision models from pixels to concepts to decisions.

Names are imported on first use (PEP 562), so ``import ierf`` and the command line's
``--help`` start without loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name → the module that defines it
_EXPORTS = {
    "ConceptBasis": "ierf.concepts.basis", "load_image": "ierf.data.images",
    "IerfError": "ierf.errors", "UnknownNameError": "ierf.errors",
    "WeightsUnavailableError": "ierf.errors", "Attributor": "ierf.local.base",
    "attributor": "ierf.local.registry", "methods": "ierf.local.registry",
    "SRD": "ierf.local.srd", "Model": "ierf.models", "PFVs": "ierf.models",
    "as_model": "ierf.models", "available_models": "ierf.models", "load_model": "ierf.models",
    "Subnetwork": "ierf.models.subnetwork", "ClassTarget": "ierf.targets",
    "ConceptTarget": "ierf.targets", "LatentTarget": "ierf.targets",
    "OutputTarget": "ierf.targets", "PFVTarget": "ierf.targets", "ScalarTarget": "ierf.targets",
}
#: subpackages reachable as ``ierf.<name>`` after a plain ``import ierf``
SUBPACKAGES = ("atlas", "bench", "cafe", "concepts", "data", "fact", "graph", "local", "metrics",
               "models", "viz")
__all__ = ["SRD", "Attributor", "ClassTarget", "ConceptBasis", "ConceptTarget", "IerfError",
           "LatentTarget", "Model", "OutputTarget", "PFVTarget", "PFVs", "ScalarTarget",
           "Subnetwork", "UnknownNameError", "WeightsUnavailableError", "as_model", "attributor",
           "available_models", "load_image", "load_model", "methods"]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in SUBPACKAGES:
        return importlib.import_module(f"ierf.{name}")
    raise AttributeError(f"module 'ierf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *SUBPACKAGES})
