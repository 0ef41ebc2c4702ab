"""Model adapters: preprocessing, PFV extraction for CNNs and ViTs, layer names, the zoo."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import ierf
from ierf.models.pfv import to_pfvs


def test_preprocess_accepts_pil_arrays_and_greyscale(lite0):
    image = ierf.load_image("chelsea")
    x = lite0.preprocess(image)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    from_uint8 = lite0.preprocess(np.asarray(image))
    from_float = lite0.preprocess(np.asarray(image).astype(np.float32) / 255)
    torch.testing.assert_close(from_uint8, x)
    torch.testing.assert_close(from_float, x, atol=1e-5, rtol=0)
    grey = lite0.preprocess(np.asarray(ierf.load_image("camera"))[..., 0])
    assert grey.shape == (1, 3, 224, 224)
    # mean = std = 0.5 normalisation maps [0, 1] onto [-1, 1]
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0
    torch.testing.assert_close(lite0.denormalize(x) * 2 - 1, x, atol=1e-6, rtol=0)


def test_cnn_pfvs_match_torchvision_feature_extractor(resnet50_random):
    model = resnet50_random
    x = torch.randn(2, 3, 224, 224)
    pfvs = model.pfvs(x, ["layer2", "layer4"])
    ref = create_feature_extractor(model.net, ["layer2", "layer4"])(x)
    for name, (grid, c) in {"layer2": ((28, 28), 512), "layer4": ((7, 7), 2048)}.items():
        p = pfvs[name]
        assert p.grid == grid and p.vectors.shape == (2, grid[0] * grid[1], c) and p.prefix is None
        torch.testing.assert_close(p.as_map(), ref[name])
        # position (row 1, col 2) is the PFV at index 1·W + 2
        torch.testing.assert_close(p.vectors[:, grid[1] + 2], ref[name][:, :, 1, 2])


def test_vgg16_layers_and_pfvs():
    model = ierf.load_model("vgg16", weights=None)
    names = model.layer_names()
    assert "features.29" in names and "features.30" in names
    assert "classifier.0" not in names  # a vector output has no positions
    p = model.pfvs(torch.randn(1, 3, 224, 224), "features.29")["features.29"]
    assert p.grid == (14, 14) and p.vectors.shape == (1, 196, 512)


def test_torchvision_vit_tokens_become_a_grid_with_cls_apart():
    model = ierf.load_model("vit_b_16", weights=None)
    x = torch.randn(1, 3, 224, 224)
    name = "encoder.layers.encoder_layer_5"
    p = model.pfvs(x, name)[name]
    tokens = create_feature_extractor(model.net, [name])(x)[name]
    assert p.grid == (14, 14) and p.vectors.shape == (1, 196, 768) and p.prefix.shape == (1, 1, 768)
    torch.testing.assert_close(p.prefix, tokens[:, :1])
    torch.testing.assert_close(p.vectors, tokens[:, 1:])
    assert name in model.layer_names()


def test_timm_vit_pfvs_match_forward_intermediates():
    model = ierf.load_model("vit_small_patch16_224", weights=None)
    x = torch.randn(2, 3, 224, 224)
    p = model.pfvs(x, "blocks.6")["blocks.6"]
    _, inter = model.net.forward_intermediates(x, indices=[6], return_prefix_tokens=True,
                                               norm=False)
    spatial, prefix = inter[0]  # (B, C, H, W), (B, P, C)
    assert p.grid == (14, 14) and p.vectors.shape == (2, 196, 384)
    torch.testing.assert_close(p.as_map(), spatial)
    torch.testing.assert_close(p.prefix, prefix)


def test_plain_vit_module_with_register_tokens_keeps_all_prefix_tokens_apart():
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, reg_tokens=3, num_classes=5)
    model = ierf.as_model(net)
    assert model.num_prefix_tokens == 4 and model.num_classes == 5
    p = model.pfvs(torch.randn(1, 3, 32, 32), "blocks.1")["blocks.1"]
    assert p.grid == (4, 4) and p.prefix.shape == (1, 4, 16)


def test_to_pfvs_rejects_outputs_without_positions():
    with pytest.raises(ierf.IerfError, match="no spatial positions"):
        to_pfvs(torch.zeros(2, 10))
    with pytest.raises(ierf.IerfError, match="grid"):
        to_pfvs(torch.zeros(1, 7, 4))  # 7 tokens form no square grid


def test_unknown_layer_lists_valid_names(resnet50_random):
    with pytest.raises(ierf.UnknownNameError, match="layer4") as err:
        resnet50_random.pfvs(torch.randn(1, 3, 224, 224), "layer5")
    assert "Valid layers" in str(err.value) and "layer4" in str(err.value)


def test_hooks_are_released_after_pfv_extraction(resnet50_random):
    model = resnet50_random
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model.net(x)
    model.pfvs(x, ["layer1", "layer3"])
    model.layer_names()
    assert all(not m._forward_hooks for m in model.net.modules())
    with torch.no_grad():
        torch.testing.assert_close(model.net(x), before)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ierf.UnknownNameError, match="efficientnet_lite0") as err:
        ierf.load_model("resnet5O")
    assert "resnet50" in str(err.value)


def test_torchvision_weights_offline_give_a_clear_message(monkeypatch):
    import torchvision.models._api as api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    with pytest.raises(ierf.WeightsUnavailableError, match="efficientnet_lite0") as err:
        ierf.load_model("resnet50", weights="imagenet")
    assert "weights=None" in str(err.value)


def test_timm_weights_offline_give_a_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-ierf-test")
    with pytest.raises(ierf.WeightsUnavailableError, match="offline"):
        ierf.load_model("vit_tiny_patch16_224", weights="pretrained")


def test_weights_from_a_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = ierf.load_model("vit_tiny_patch16_224", weights=None)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path))
    again = ierf.load_model("vit_tiny_patch16_224", weights=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    with pytest.raises(ierf.IerfError, match="does not exist"):
        ierf.load_model("vit_tiny_patch16_224", weights=tmp_path / "missing.pth")


def test_toy_models_load_through_the_zoo_and_classify_the_benchmark():
    from ierf.data.synthetic import CLASS_NAMES, generate
    from ierf.models.toy import TOY_MODELS

    batch = generate(64, seed=99, split="test")
    for name in TOY_MODELS:
        model = ierf.load_model(name)
        assert model.input_size == (3, 64, 64) and model.class_names == CLASS_NAMES
        x = model.normalize(batch.images)
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == batch.labels).float().mean()
        assert accuracy >= 0.85, name
    vit = ierf.load_model("toy-vit")
    p = vit.pfvs(x[:2], "blocks.2")["blocks.2"]
    assert vit.is_vit and p.grid == (8, 8) and p.prefix.shape[1] == 1


def test_normalize_is_preprocess_for_images_at_the_input_size():
    from ierf.data.synthetic import generate

    batch = generate(3, seed=7, split="test")
    for name in ("toy-resnet", "toy-vit"):
        model = ierf.load_model(name)
        one_by_one = torch.cat([model.preprocess(img.permute(1, 2, 0).numpy())
                                for img in batch.images])
        torch.testing.assert_close(model.normalize(batch.images), one_by_one, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.denormalize(model.normalize(batch.images)),
                                   batch.images, atol=1e-6, rtol=0)


def test_pfvs_are_not_changed_by_later_in_place_operations(resnet50_random) -> None:
    # torchvision's Bottleneck adds the identity into bn3's output in place (out += identity)
    # and applies an in-place ReLU: the recorded PFVs must be bn3's output as it was computed
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    bn3 = resnet50_random.module("layer3.2.bn3")
    seen = []
    handle = bn3.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    try:
        pfvs = resnet50_random.pfvs(x, "layer3.2.bn3")["layer3.2.bn3"]
    finally:
        handle.remove()
    torch.testing.assert_close(pfvs.as_map(), seen[0], rtol=0, atol=0)
