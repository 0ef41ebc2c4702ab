"""Bad input to the FaCT tools: a model that is not FaCT (or not B-cos), images with the wrong
channel count for the 6-channel [x, 1 − x] encoding, a bottleneck layer that does not exist,
an SAE with a bias – each a clear error that says what to do instead."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import ierf
from ierf.cli import main
from ierf.concepts.extractors import TopKSAE
from ierf.errors import IerfError, UnknownNameError
from ierf.fact import (
    FaCT,
    TopKBottleneck,
    as_fact,
    bcos_toy_resnet,
    concept_contributions,
    concept_deletion,
    concept_traces,
    explain_image,
)


@pytest.fixture(scope="module")
def fact_toy() -> ierf.Model:
    return ierf.load_model("fact-toy")


def test_models_that_are_not_fact(tmp_path, capsys) -> None:
    x = torch.rand(2, 3, 64, 64)
    toy = ierf.load_model("toy-resnet", weights=None)
    for tool in (lambda m: concept_deletion(m, x), lambda m: explain_image(m, x[:1], x),
                 lambda m: concept_traces(m, x)):
        with pytest.raises(IerfError, match="not a FaCT model.*FaCT\\(backbone"):
            tool(toy)
    with pytest.raises(IerfError, match="not a FaCT model"):
        concept_deletion(bcos_toy_resnet(), x)  # B-cos, but without a bottleneck
    with pytest.raises(IerfError, match="not a B-cos network.*conv1 \\(Conv2d\\).*B-cos backbone"):
        FaCT.build(torchvision.models.resnet18(num_classes=4), "layer2", 16, 2)
    assert main(["fact", "explain", "benchmark:0", "--model", "toy-resnet", "-o",
                 str(tmp_path)]) == 2
    assert "not a FaCT model" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # failed before writing anything


@pytest.mark.parametrize(("shape", "hint"), [
    ((2, 6, 64, 64), "already encoded.*x\\[:, :3\\]"),
    ((2, 1, 64, 64), "grayscale.*expand"),
    ((2, 4, 64, 64), "RGBA"),
    ((2, 64, 64, 3), "channels last.*permute"),
    ((3, 64, 64), "unsqueeze"),
])
def test_wrong_channel_counts_say_what_to_do(fact_toy, shape, hint) -> None:
    x = torch.rand(shape)
    with pytest.raises(IerfError, match="RGB images shaped \\(B, 3, H, W\\).*" + hint):
        fact_toy.net(x)
    with pytest.raises(IerfError, match=hint):
        concept_deletion(fact_toy, x)
    with pytest.raises(IerfError, match="6-channel.*pass RGB images"):
        fact_toy.net.forward_encoded(torch.rand(1, 3, 64, 64))


def test_a_grayscale_file_is_read_as_rgb(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "gray.png"
    Image.fromarray((torch.rand(64, 64) * 255).byte().numpy(), mode="L").save(path)
    assert main(["fact", "explain", str(path), "--n", "2", "--top", "1", "--per-concept", "1",
                 "-o", str(tmp_path / "out")]) == 0


def test_missing_bottleneck_layers(fact_toy, tmp_path, capsys) -> None:
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(UnknownNameError, match="'layer3' has no bottleneck.*layer2.*FaCT.build"):
        concept_contributions(fact_toy, x, layer="layer3")
    with pytest.raises(UnknownNameError, match="unknown bottleneck layer 'layer22'.*'layer2'"):
        concept_deletion(fact_toy, x, layer="layer22")
    with pytest.raises(UnknownNameError, match="'layer3' has no bottleneck"):
        explain_image(fact_toy, x, x, layer="backbone.layer3")
    with pytest.raises(UnknownNameError, match="unknown layer 'layer_2'"):
        FaCT.build(bcos_toy_resnet(), "layer_2", 16, 2)
    assert main(["fact", "explain", "benchmark:0", "--layer", "layer9", "--n", "2", "-o",
                 str(tmp_path)]) == 2
    assert "unknown bottleneck layer 'layer9'" in capsys.readouterr().err


class _EncoderBias(TopKBottleneck):
    """A TopK SAE with an encoder bias: ``u = TopK(ReLU(W_e h + b))``."""

    def __init__(self, n_features: int, n_concepts: int, k: int) -> None:
        super().__init__(n_features, n_concepts, k)
        self.bias = nn.Parameter(torch.full((n_concepts,), 0.1))


def test_bottlenecks_with_a_bias_or_of_another_kind_are_rejected() -> None:
    with pytest.raises(IerfError, match="parameters \\['bias'\\].*encoder bias breaks"):
        FaCT(bcos_toy_resnet(), {"layer2": _EncoderBias(64, 32, 4)})
    with pytest.raises(IerfError, match="TopKSAE, not a TopKBottleneck.*from_sae"):
        FaCT(bcos_toy_resnet(), {"layer2": TopKSAE(64, 32, k=4)})
    fact = FaCT(bcos_toy_resnet(), {"layer2": TopKBottleneck(64, 32, 4)})
    assert isinstance(copy.deepcopy(fact), FaCT)


def test_bad_classes_and_counts(fact_toy, tmp_path, capsys) -> None:
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(IerfError, match="target class must lie in \\[0, 8\\)"):
        explain_image(fact_toy, x, x, target=8)
    with pytest.raises(IerfError, match="versus must differ"):
        explain_image(fact_toy, x, x, target=1, versus=1)
    with pytest.raises(IerfError, match="one image"):
        explain_image(fact_toy, torch.rand(2, 3, 64, 64), x)
    assert main(["fact", "explain", "benchmark:0", "--versus", "blue-square", "--n", "2",
                 "-o", str(tmp_path)]) == 2
    assert "unknown class 'blue-square'" in capsys.readouterr().err
    assert main(["fact", "explain", "benchmark:x:val:3", "-o", str(tmp_path)]) == 2
    assert "benchmark:<seed>:<split>:<index>" in capsys.readouterr().err
    assert as_fact(fact_toy) is fact_toy.net
