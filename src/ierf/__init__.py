"""ierf: explain vision models from pixels to concepts to decisions."""

from ierf.concepts.basis import ConceptBasis
from ierf.data.images import load_image
from ierf.errors import IerfError, UnknownNameError, WeightsUnavailableError
from ierf.local.base import Attributor
from ierf.local.registry import attributor, methods
from ierf.local.srd import SRD
from ierf.models import Model, PFVs, as_model, available_models, load_model
from ierf.models.subnetwork import Subnetwork
from ierf.targets import (
    ClassTarget,
    ConceptTarget,
    LatentTarget,
    OutputTarget,
    PFVTarget,
    ScalarTarget,
)

__version__ = "0.1.0"
__all__ = ["SRD", "Attributor", "ClassTarget", "ConceptBasis", "ConceptTarget", "IerfError",
           "LatentTarget", "Model", "OutputTarget", "PFVTarget", "PFVs", "ScalarTarget",
           "Subnetwork", "UnknownNameError", "WeightsUnavailableError", "as_model", "attributor",
           "available_models", "load_image", "load_model", "methods"]

#: subpackages reachable as ``ierf.<name>`` after a plain ``import ierf`` (imported on first use)
SUBPACKAGES = ("atlas", "bench", "concepts", "data", "graph", "local", "metrics", "models", "viz")


def __getattr__(name: str) -> object:
    if name in SUBPACKAGES:
        import importlib

        return importlib.import_module(f"ierf.{name}")
    raise AttributeError(f"module 'ierf' has no attribute {name!r}")
