"""``fact-toy``: the FaCT model of the synthetic benchmark (``ierf.load_model("fact-toy")``).

A compact B-cos ResNet (:func:`~ierf.fact.backbones.bcos_toy_resnet`) with a bias-free TopK-SAE
bottleneck at :data:`FACT_TOY_LAYER`, trained by ``scripts/train_fact_toy.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ierf.fact.backbones import bcos_toy_resnet
from ierf.fact.model import FaCT

if TYPE_CHECKING:
    from ierf.models.model import Model

FACT_TOY_WIDTHS = (32, 64, 128)
FACT_TOY_DEPTHS = (1, 1, 1)
FACT_TOY_LAYER = "layer2"
FACT_TOY_CONCEPTS = 128
FACT_TOY_K = 8
WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights" / "fact-toy.safetensors"


def build_fact_toy(num_classes: int = 8) -> FaCT:
    """The ``fact-toy`` architecture with random weights."""
    backbone = bcos_toy_resnet(num_classes, FACT_TOY_WIDTHS, FACT_TOY_DEPTHS)
    return FaCT.build(backbone, FACT_TOY_LAYER, FACT_TOY_CONCEPTS, FACT_TOY_K)


def fact_toy(pretrained: bool) -> Model:
    """``fact-toy`` as an ``ierf.Model``: RGB input in [0, 1] (mean 0, std 1), 64×64."""
    from ierf.data.synthetic import CLASS_NAMES, IMAGE_SIZE
    from ierf.models.model import Model, Preprocessing

    net = build_fact_toy(len(CLASS_NAMES))
    if pretrained:
        from safetensors.torch import load_file

        net.load_state_dict({k: v.float() for k, v in load_file(str(WEIGHTS)).items()},
                            strict=True)
    prep = Preprocessing((IMAGE_SIZE, IMAGE_SIZE), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                         resize=IMAGE_SIZE)
    return Model(net, "fact-toy", list(CLASS_NAMES), prep)
