"""Evaluation metrics: localisation, complexity, faithfulness, robustness, sanity.

Quantus' shape: hyperparameters in ``__init__``, data in ``__call__``::

    score = ierf.metrics.metric("pointing-game", tolerance=15)(model, x, y, a, mask=mask)

See ``docs/metrics.md`` for every definition and where we differ from Quantus.
"""

from ierf.metrics.attacks import AttackResult, manipulation_attack
from ierf.metrics.base import Explain, Metric
from ierf.metrics.c2 import C2Accumulator, C2Result, C2Score
from ierf.metrics.complexity import Sparseness
from ierf.metrics.faithfulness import (
    Deletion,
    FaithfulnessCorrelation,
    Insertion,
    PixelFlipping,
    SaCo,
)
from ierf.metrics.localisation import (
    AttributionLocalisation,
    GridPointingGame,
    PointingGame,
    make_grid,
)
from ierf.metrics.robustness import Randomisation, Stability
from ierf.registry import Registry

METRICS: Registry[type[Metric]] = Registry("metric", {cls.name: cls for cls in (
    PointingGame, AttributionLocalisation, GridPointingGame, Sparseness,
    FaithfulnessCorrelation, PixelFlipping, Insertion, Deletion, SaCo, Stability, Randomisation)})


def metric_names() -> list[str]:
    """Names accepted by :func:`metric`."""
    return list(METRICS)


def metric(name: str, **hyperparameters) -> Metric:
    """The metric called ``name``, built with its hyperparameters (see each class)."""
    return METRICS[name](**hyperparameters)


__all__ = ["METRICS", "AttackResult", "AttributionLocalisation", "C2Accumulator", "C2Result",
           "C2Score", "Deletion", "Explain",
           "FaithfulnessCorrelation", "GridPointingGame", "Insertion", "Metric",
           "PixelFlipping", "PointingGame", "Randomisation", "SaCo", "Sparseness", "Stability",
           "make_grid", "manipulation_attack", "metric", "metric_names"]
