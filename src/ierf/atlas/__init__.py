"""Concept atlas: extract concept dictionaries from PFVs and decompose PFVs over them.

IERF Sec. VI-A (Table III, Eq. 11–12) and GIG Sec. 3.1–3.2, Appendices B and F.
"""

from ierf.atlas.build import build_atlas
from ierf.atlas.centering import bn_shift
from ierf.atlas.decompose import (
    decompose,
    l0_ratio,
    lasso_objective,
    reconstruct,
    relative_l2,
)
from ierf.atlas.extractors import (
    BiasFreeTopKSAE,
    BisectingSphericalKMeans,
    ConceptExtractor,
    DictionaryLearner,
    MatryoshkaSAE,
    SAEBase,
    SparseAutoencoder,
    TopKSAE,
)
from ierf.atlas.store import Atlas, open_atlas
from ierf.atlas.synthetic import sparse_pfvs

__all__ = ["Atlas", "BiasFreeTopKSAE", "BisectingSphericalKMeans", "ConceptExtractor",
           "DictionaryLearner", "MatryoshkaSAE", "SAEBase", "SparseAutoencoder", "TopKSAE",
           "bn_shift", "build_atlas", "decompose", "l0_ratio", "lasso_objective", "open_atlas",
           "reconstruct", "relative_l2", "sparse_pfvs"]
