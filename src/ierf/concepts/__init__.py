"""Concepts: dictionaries learnt from PFVs and the decomposition of PFVs over them.

IERF Sec. VI-A (Table III, Eqs. 11–12) and GIG Sec. 3.1–3.2, Appendices B and F. Extractors
(bisecting spherical k-means, dictionary learning, SAEs) learn ``V (C, K)``; the Lasso
(:func:`decompose`) gives the coefficients ``U``; a :class:`ConceptBasis` binds a fitted
extractor to the model and layer it was learnt on.
"""

from ierf.concepts.basis import BasisMismatchError, ConceptBasis
from ierf.concepts.centering import bn_shift
from ierf.concepts.decompose import (
    decompose,
    l0_ratio,
    lasso_objective,
    reconstruct,
    relative_l2,
)
from ierf.concepts.extractors import (
    BiasFreeTopKSAE,
    BisectingSphericalKMeans,
    ConceptExtractor,
    DictionaryLearner,
    MatryoshkaSAE,
    SAEBase,
    SparseAutoencoder,
    TopKSAE,
)
from ierf.concepts.fitting import fit_basis, fit_concepts
from ierf.concepts.synthetic import sparse_pfvs

__all__ = ["BasisMismatchError", "BiasFreeTopKSAE", "BisectingSphericalKMeans",
           "ConceptBasis", "ConceptExtractor", "DictionaryLearner", "MatryoshkaSAE", "SAEBase",
           "SparseAutoencoder", "TopKSAE", "bn_shift", "decompose", "fit_basis", "fit_concepts",
           "l0_ratio", "lasso_objective", "reconstruct", "relative_l2", "sparse_pfvs"]
