"""Bad input gets a clear error that says what to do instead."""

from __future__ import annotations

import pytest
import torch

import ierf


def test_load_image_from_path_and_bundled_name(tmp_path):
    chelsea = ierf.load_image("chelsea")
    assert chelsea.mode == "RGB" and chelsea.size == (451, 300)
    path = tmp_path / "c.png"
    chelsea.save(path)
    assert ierf.load_image(path).size == chelsea.size
    assert ierf.load_image("camera").mode == "RGB"  # greyscale photo comes back as RGB


def test_unreadable_or_missing_images(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ierf.IerfError, match="not a readable image"):
        ierf.load_image(text)
    with pytest.raises(ierf.IerfError, match="bundled photo"):
        ierf.load_image(tmp_path / "missing.jpg")
    with pytest.raises(ierf.IerfError, match="folder"):
        ierf.load_image(tmp_path)


def test_wrong_tensor_shapes_and_nan(lite0):
    method = ierf.attributor("gradient", lite0)
    with pytest.raises(ierf.IerfError, match="unsqueeze"):
        method.attribute(torch.zeros(3, 224, 224))
    with pytest.raises(ierf.IerfError, match="channels"):
        method.attribute(torch.zeros(1, 1, 224, 224))
    x = torch.zeros(1, 3, 224, 224)
    x[0, 0, 5, 5] = float("nan")
    with pytest.raises(ierf.IerfError, match="NaN"):
        method.attribute(x)
    with pytest.raises(ierf.IerfError, match="torch.Tensor"):
        method.attribute([[0.0]])


def test_vit_needs_its_exact_input_size():
    model = ierf.load_model("vit_tiny_patch16_224", weights=None)
    with pytest.raises(ierf.IerfError, match=r"\(B, 3, 224, 224\)"):
        model(torch.zeros(1, 3, 160, 160))


def test_targets_out_of_range_or_unknown(lite0):
    method = ierf.attributor("gradient", lite0)
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(ierf.IerfError, match=r"out of range.*1000 classes"):
        method.attribute(x, target=1000)
    with pytest.raises(ierf.IerfError, match="out of range"):
        method.attribute(x, target=-1)
    with pytest.raises(ierf.UnknownNameError, match="class"):
        method.attribute(x, target="unicorn")
    with pytest.raises(ierf.IerfError, match="2 target classes for a batch of 1"):
        method.attribute(x, target=[1, 2])


def test_unknown_method_lists_methods(lite0):
    with pytest.raises(ierf.UnknownNameError, match="gradient"):
        ierf.attributor("gradcamm", lite0)


def test_non_module_model_is_rejected():
    with pytest.raises(ierf.IerfError, match="nn.Module"):
        ierf.attributor("gradient", "resnet50")
