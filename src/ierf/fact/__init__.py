"""FaCT: B-cos networks with bias-free TopK-SAE bottlenecks, whose concept contributions to
every logit and concept traces down to the pixels are exact by construction (FaCT, Sec. 3.1).

>>> import ierf
>>> from ierf.fact import concept_contributions
>>> model = ierf.load_model("fact-toy")          # doctest: +SKIP
>>> c = concept_contributions(model, images)     # doctest: +SKIP
>>> c.contributions.sum(-1)  # == c.logits        # doctest: +SKIP
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
    cross_layer_contributions,
)
from ierf.fact.layers import (
    BcosConv2d,
    BcosLinear,
    UncenteredBatchNorm2d,
    encode_input,
    explanation_mode,
)
from ierf.fact.model import FaCT, check_bcos

__all__ = ["BcosConv2d", "BcosLinear", "BcosResNet", "ConceptContributions", "ConceptTraces",
           "CrossLayerContributions", "FaCT", "TopKBottleneck", "UncenteredBatchNorm2d",
           "as_fact", "bcos_resnet50", "bcos_toy_resnet", "check_bcos", "concept_contributions",
           "concept_traces", "cross_layer_contributions", "encode_input", "explanation_mode"]
