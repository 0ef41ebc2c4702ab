"""The model zoo: ``ierf.load_model(name, weights=...)``.

Offline with real weights: ``efficientnet_lite0`` (ImageNet) and the synthetic benchmark's
toy models. torchvision and timm models download their ImageNet weights on a user's
machine; ``weights=None`` gives random weights for structural work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ierf.errors import IerfError, WeightsUnavailableError, unknown_name
from ierf.models import efficientnet_lite0
from ierf.models.model import Model, Preprocessing, vit_layout
from ierf.models.toy import TOY_MEAN, TOY_MODELS, TOY_STD, build_toy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_DIR = Path(__file__).parent / "weights"
TORCHVISION_MODELS = ["resnet50", "vgg16", "vit_b_16"]
TIMM_MODELS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
               "deit_small_patch16_224"]
FACT_MODELS = ["fact-toy"]  # B-cos + bias-free TopK-SAE bottleneck (ierf.fact)
OFFLINE_MODELS = ["efficientnet_lite0", *TOY_MODELS, *FACT_MODELS]


SYNTHETIC_MODELS = [*TOY_MODELS, *FACT_MODELS]
"""Models trained on the synthetic benchmark's 64 × 64 scenes (:mod:`ierf.data.synthetic`)."""


def warn_if_out_of_domain(model: Model, image: object, name: str) -> None:
    """Warn when a model trained on 64 × 64 synthetic scenes is given anything else (a
    photo): it still predicts one of its 8 classes, and the prediction means little."""
    from ierf.data.synthetic import IMAGE_SIZE

    size = getattr(image, "size", None)
    if model.name in SYNTHETIC_MODELS and size != (IMAGE_SIZE, IMAGE_SIZE):
        import warnings

        warnings.warn(f"{model.name} was trained on {IMAGE_SIZE}×{IMAGE_SIZE} synthetic "
                      f"scenes; {name} ({size[0]}×{size[1]}) is outside what it knows, so its "
                      "prediction and explanation mean little", stacklevel=2)


def available_models() -> list[str]:
    """Names ``load_model`` accepts (any timm model also works as ``timm/<name>``, any OpenCLIP
    architecture as ``openclip/<name>``)."""
    return [*OFFLINE_MODELS, *TORCHVISION_MODELS, *TIMM_MODELS]


def load_model(name: str, weights: str | Path | None = "pretrained") -> Model:
    """Load a model by name.

    Parameters
    ----------
    name : one of :func:`available_models`, ``"timm/<timm model name>"``, or
        ``"openclip/<architecture>"`` (the image tower of an OpenCLIP model, e.g.
        ``"openclip/ViT-L-14"``; needs ``pip install -e '.[clip]'``).
    weights : ``"pretrained"`` (alias ``"imagenet"`` for ImageNet models): the model's real
        weights; ``None``: random weights; or a path to a state dict (``.pth``/``.safetensors``).
        OpenCLIP models also take an open_clip pretrained tag (``"openai"``, ...): see
        :func:`ierf.models.openclip.load_openclip`.
    """
    if name.startswith("openclip/"):
        from ierf.models.openclip import load_openclip  # on use: open_clip is optional
        return load_openclip(name.removeprefix("openclip/"), weights)
    builders: dict[str, Callable[[bool], Model]] = {
        "efficientnet_lite0": _efficientnet_lite0,
        **{n: (lambda p, n=n: _toy(n, p)) for n in TOY_MODELS},
        "fact-toy": _fact_toy,
        **{n: (lambda p, n=n: _torchvision(n, p)) for n in TORCHVISION_MODELS},
        **{n: (lambda p, n=n: _timm(n, p)) for n in TIMM_MODELS},
    }
    if name.startswith("timm/"):
        builder = lambda p: _timm(name.removeprefix("timm/"), p)
    elif name in builders:
        builder = builders[name]
    else:
        raise unknown_name("model", name, available_models())
    if weights in ("pretrained", "imagenet"):
        if weights == "imagenet" and name in TOY_MODELS + FACT_MODELS:
            raise IerfError(f"{name} is trained on the synthetic benchmark, not ImageNet; "
                            "use weights='pretrained'")
        return builder(True)
    if weights is None:
        return builder(False)
    model = builder(False)
    model.net.load_state_dict(_read_state_dict(Path(weights)), strict=True)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise IerfError(f"weights file {str(path)!r} does not exist; pass 'pretrained', None or a "
                        "path to a state dict (.pth or .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _offline_hint(name: str) -> str:
    return (f"could not download ImageNet weights for {name!r} (no network?). Connect once so "
            "torch/timm can cache them, pass weights=<path to a state dict>, use weights=None for "
            f"random weights, or use a model that works offline: {', '.join(OFFLINE_MODELS)}")


@contextmanager
def _download_errors(name: str, pretrained: bool) -> Iterator[None]:
    """Turn any failure of a weight download (URLError, hub errors, ...) into a clear error."""
    try:
        yield
    except Exception as e:
        if not pretrained:
            raise
        raise WeightsUnavailableError(_offline_hint(name)) from e


def _imagenet_classes() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES
    return list(_IMAGENET_CATEGORIES)


def _efficientnet_lite0(pretrained: bool) -> Model:
    net = efficientnet_lite0.build(pretrained)
    # Plain 224×224 bilinear resize and mean = std = 0.5, as the TF-Lite reference model:
    # chelsea → Egyptian cat 0.79, coffee → espresso 0.88 (a 256 → 224 centre crop gives 0.38
    # and "tiger cat" for chelsea).
    prep = Preprocessing((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize=None,
                         interpolation="bilinear")
    return Model(net, "efficientnet_lite0", _imagenet_classes(), prep)


def _toy(name: str, pretrained: bool) -> Model:
    from ierf.data.synthetic import CLASS_NAMES, IMAGE_SIZE

    net = build_toy(name, num_classes=len(CLASS_NAMES))
    if pretrained:
        state = _read_state_dict(WEIGHTS_DIR / f"{name}.safetensors")
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    prep = Preprocessing((IMAGE_SIZE, IMAGE_SIZE), TOY_MEAN, TOY_STD, resize=IMAGE_SIZE)
    prefix, grid = vit_layout(net)
    return Model(net, name, list(CLASS_NAMES), prep, num_prefix_tokens=prefix, patch_grid=grid)


def _fact_toy(pretrained: bool) -> Model:
    from ierf.fact.zoo import fact_toy  # on use: ierf.fact stays out of ``import ierf.models``
    return fact_toy(pretrained)


def _torchvision(name: str, pretrained: bool) -> Model:
    import torchvision

    with _download_errors(name, pretrained):
        net: nn.Module = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    prep = Preprocessing((224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256,
                         interpolation="bilinear")
    prefix, grid = vit_layout(net)
    return Model(net, name, _imagenet_classes(), prep, num_prefix_tokens=prefix, patch_grid=grid)


def _timm(name: str, pretrained: bool) -> Model:
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(name):
        raise unknown_name("timm model", name, timm.list_models("vit_*"))
    with _download_errors(name, pretrained):
        net = timm.create_model(name, pretrained=pretrained)
    cfg = resolve_data_config({}, model=net)
    size = tuple(cfg["input_size"][1:])
    prep = Preprocessing(size, tuple(cfg["mean"]), tuple(cfg["std"]),
                         resize=int(size[0] / cfg["crop_pct"]))
    prefix, grid = vit_layout(net)
    classes = _imagenet_classes() if net.num_classes == 1000 else [f"class {i}" for i in
                                                                    range(net.num_classes)]
    return Model(net, name, classes, prep, num_prefix_tokens=prefix, patch_grid=grid)
