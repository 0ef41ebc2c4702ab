"""Concept extractors sharing one interface: fit, encode, decode, get_dictionary, save, load."""

from ierf.concepts.extractors.base import ConceptExtractor
from ierf.concepts.extractors.dictionary import DictionaryLearner
from ierf.concepts.extractors.kmeans import BisectingSphericalKMeans
from ierf.concepts.extractors.sae import (
    BiasFreeTopKSAE,
    MatryoshkaSAE,
    SAEBase,
    SparseAutoencoder,
    TopKSAE,
)

__all__ = ["BiasFreeTopKSAE", "BisectingSphericalKMeans", "ConceptExtractor", "DictionaryLearner",
           "MatryoshkaSAE", "SAEBase", "SparseAutoencoder", "TopKSAE"]
