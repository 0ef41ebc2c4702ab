"""Concept extractors sharing one interface: fit, encode, decode, get_dictionary, save, load."""

from ierf.atlas.extractors.base import ConceptExtractor
from ierf.atlas.extractors.dictionary import DictionaryLearner
from ierf.atlas.extractors.kmeans import BisectingSphericalKMeans
from ierf.atlas.extractors.sae import (
    BiasFreeTopKSAE,
    MatryoshkaSAE,
    SAEBase,
    SparseAutoencoder,
    TopKSAE,
)

__all__ = ["BiasFreeTopKSAE", "BisectingSphericalKMeans", "ConceptExtractor", "DictionaryLearner",
           "MatryoshkaSAE", "SAEBase", "SparseAutoencoder", "TopKSAE"]
