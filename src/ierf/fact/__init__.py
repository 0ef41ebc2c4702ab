"""FaCT: B-cos networks with bias-free TopK-SAE bottlenecks, whose concept contributions to
every logit and concept traces down to the pixels are exact by construction (FaCT, Sec. 3.1).

>>> import ierf
>>> from ierf.fact import concept_contributions, concept_deletion
>>> model = ierf.load_model("fact-toy")          # doctest: +SKIP
>>> c = concept_contributions(model, images)     # doctest: +SKIP
>>> c.contributions.sum(-1)  # == c.logits        # doctest: +SKIP
>>> d = concept_deletion(model, images)          # doctest: +SKIP
"""

from ierf.fact.backbones import BcosResNet, bcos_resnet50, bcos_toy_resnet
from ierf.fact.bottleneck import TopKBottleneck
from ierf.fact.contributions import (
    ConceptContributions,
    ConceptTraces,
    CrossLayerContributions,
    as_fact,
    concept_contributions,
    concept_traces,
    contribution_traces,
    cross_layer_contributions,
)
from ierf.fact.deletion import (
    BottleneckTail,
    ConceptDeletion,
    always_on,
    concept_deletion,
    concept_importances,
)
from ierf.fact.explain import FactExplanation, concept_activations, explain_image
from ierf.fact.layers import (
    BcosConv2d,
    BcosLinear,
    UncenteredBatchNorm2d,
    encode_input,
    explanation_mode,
)
from ierf.fact.model import FaCT, check_bcos

__all__ = ["BcosConv2d", "BcosLinear", "BcosResNet", "BottleneckTail", "ConceptContributions",
           "ConceptDeletion", "ConceptTraces", "CrossLayerContributions", "FaCT",
           "FactExplanation", "TopKBottleneck", "UncenteredBatchNorm2d", "always_on", "as_fact",
           "bcos_resnet50", "bcos_toy_resnet", "check_bcos", "concept_activations",
           "concept_contributions", "concept_deletion", "concept_importances", "concept_traces",
           "contribution_traces", "cross_layer_contributions", "encode_input", "explain_image",
           "explanation_mode"]
