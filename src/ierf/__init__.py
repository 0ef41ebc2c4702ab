"""ierf: explain vision models from pixels to concepts to decisions."""

from ierf.data.images import load_image
from ierf.errors import IerfError, UnknownNameError, WeightsUnavailableError
from ierf.local.base import Attributor
from ierf.local.registry import attributor, methods
from ierf.local.srd import SRD
from ierf.models import Model, PFVs, as_model, available_models, load_model
from ierf.targets import ClassTarget, ConceptTarget, LatentTarget, PFVTarget, ScalarTarget

__version__ = "0.1.0"
__all__ = ["SRD", "Attributor", "ClassTarget", "ConceptTarget", "IerfError", "LatentTarget",
           "Model", "PFVTarget", "PFVs", "ScalarTarget", "UnknownNameError",
           "WeightsUnavailableError", "as_model", "attributor", "available_models", "load_image",
           "load_model", "methods"]
