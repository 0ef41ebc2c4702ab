"""The offline EfficientNet-Lite0: checkpoint mapping and real ImageNet predictions."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

import ierf
from ierf.models import efficientnet_lite0 as E


def _source_and_target():
    source = torch.load(E.checkpoint_path(), map_location="cpu", weights_only=True)
    import timm

    target = timm.create_model(E.TIMM_NAME, pretrained=False).state_dict()
    return source, target


def test_every_tensor_maps_shape_for_shape():
    source, target = _source_and_target()
    mapped = E.map_state_dict(source, target)
    assert list(mapped) == list(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    assert all(mapped[k] is v for k, v in zip(mapped, source.values()))


def test_mapping_fails_loudly_on_a_shape_mismatch():
    source, target = _source_and_target()
    broken = OrderedDict(source)
    key = list(broken)[10]
    broken[key] = torch.zeros(broken[key].numel() + 1)
    with pytest.raises(ierf.IerfError, match="mismatch"):
        E.map_state_dict(broken, target)
    broken = OrderedDict(list(source.items())[:-1])
    with pytest.raises(ierf.IerfError, match="cannot be mapped"):
        E.map_state_dict(broken, target)


@pytest.mark.parametrize("photo, expected", [("chelsea", "Egyptian cat"), ("coffee", "espresso"),
                                             ("camera", "tripod")])
def test_bundled_photos_are_classified_correctly(lite0, photo, expected):
    with torch.no_grad():
        probs = lite0(lite0.preprocess(ierf.load_image(photo))).softmax(1)[0]
    assert lite0.class_names[int(probs.argmax())] == expected
    assert probs.max() > 0.5
