"""Model adapters: PFV extraction for CNNs and ViTs, the model zoo, and sub-networks."""

from ierf.models.model import Model, Preprocessing, as_model
from ierf.models.pfv import PFVs, to_pfvs
from ierf.models.subnetwork import Subnetwork
from ierf.models.zoo import available_models, load_model

__all__ = ["Model", "PFVs", "Preprocessing", "Subnetwork", "as_model", "available_models",
           "load_model", "to_pfvs"]
