"""Dense feature maps for the C2-score (FaCT Sec. 4): the "independent model" whose features
the concepts' attribution maps pool (Eq. 14).

* :class:`DinoV2Features` – DINOv2-S/14, the paper's choice, loaded through ``torch.hub``
  (``facebookresearch/dinov2``) or timm on a connected machine. The paper upsamples the
  16×16 patch features with LoftUp (or AnyUp), both hub-only; here a plain bilinear
  upsampler stands in, so fine structure below a 14-pixel patch is blurred.
* :func:`label_features` – on the synthetic benchmark, the per-pixel ground-truth labels
  (one-hot colour / shape / texture / part) as features: C2 then measures whether a concept
  lands on the same known attributes in every image (a ground-truth consistency score).
* :class:`ModelFeatures` – offline on photos: a layer of an ``ierf.Model`` (by default
  EfficientNet-Lite0 at stride 16), bilinearly upsampled. A **stand-in** for DINOv2, not the
  paper's metric: its scores are not comparable to published C2 values.

Every feature model maps RGB images (B, 3, H, W) in [0, 1] to features (B, D, H, W) at the
images' resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor, nn

from ierf.errors import IerfError, WeightsUnavailableError, unknown_name
from ierf.models.model import Model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_HUB = "facebookresearch/dinov2"
DINOV2_TIMM = {"dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
               "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m"}
#: label maps of the synthetic benchmark used as features, and their class counts
LABEL_KEYS = ("colour", "shape", "texture", "part")


class FeatureModel(Protocol):
    """Images (B, 3, H, W) in [0, 1] → dense features (B, D, H, W)."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


def _upsample(grid: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)


def load_dinov2(variant: str = "dinov2_vits14", source: str = "hub", size: int = 224
                ) -> nn.Module:
    """DINOv2 from ``torch.hub`` (``source="hub"``, the paper's) or timm (``"timm"``, built
    for ``size``-pixel inputs); both download the weights once (a clear error offline)."""
    if source not in ("hub", "timm"):
        raise IerfError(f"DINOv2 source must be 'hub' or 'timm', got {source!r}")
    if source == "timm" and variant not in DINOV2_TIMM:
        raise unknown_name("DINOv2 variant", variant, DINOV2_TIMM)
    try:
        if source == "hub":
            return torch.hub.load(DINOV2_HUB, variant)
        import timm
        return timm.create_model(DINOV2_TIMM[variant], pretrained=True, img_size=size)
    except Exception as e:
        raise WeightsUnavailableError(
            f"could not load DINOv2 ({variant} via {source}; no network?). The C2-score's "
            "feature model needs it once; offline, use --features labels on the synthetic "
            "benchmark or efficientnet_lite0 (a stand-in)") from e


class DinoV2Features(nn.Module):
    """DINOv2 patch features, bilinearly upsampled to the image size (FaCT Sec. 4).

    Parameters
    ----------
    backbone : a DINOv2 ViT: the ``torch.hub`` model (``forward_features`` returns a dict
        with ``x_norm_patchtokens``) or a timm one (returns tokens, ``num_prefix_tokens``
        first); ``None`` loads ``variant`` with :func:`load_dinov2`.
    size : side the images are resized to before the ViT (a multiple of the patch size;
        224 → a 16×16 grid, as the paper's code).
    """

    def __init__(self, backbone: nn.Module | None = None, variant: str = "dinov2_vits14",
                 size: int = 224, source: str = "hub") -> None:
        super().__init__()
        self.backbone = (backbone if backbone is not None else
                         load_dinov2(variant, source, size)).eval()
        patch = getattr(getattr(self.backbone, "patch_embed", None), "patch_size", None)
        if patch is None:
            raise IerfError(f"{type(self.backbone).__name__} is not a ViT with a patch_embed: "
                            "pass a DINOv2 model (torch.hub or timm)")
        self.patch = int(patch if isinstance(patch, int) else patch[0])
        if size % self.patch:
            raise IerfError(f"size must be a multiple of the patch size {self.patch}, got {size}")
        self.size = size
        self.name = f"dinov2 ({variant}, bilinear upsampling)"

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)
        out = self.backbone.forward_features(TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
        if isinstance(out, dict):
            tokens = out["x_norm_patchtokens"]
        else:
            tokens = out[:, getattr(self.backbone, "num_prefix_tokens", 1):]
        g = self.size // self.patch
        if tokens.shape[1] != g * g:
            raise IerfError(f"expected {g * g} patch tokens from the backbone, got "
                            f"{tokens.shape[1]}")
        grid = tokens.transpose(1, 2).reshape(len(images), -1, g, g)
        return _upsample(grid, images.shape[-2:])


class ModelFeatures:
    """A layer of an ``ierf.Model`` as dense features, bilinearly upsampled to the image size:
    the offline **stand-in** for DINOv2 (default EfficientNet-Lite0 at stride 16).

    Images in [0, 1] are resized to the model's input size and normalised as it expects.
    """

    def __init__(self, model: Model, layer: str | None = None) -> None:
        if model.input_size is None:
            raise IerfError("ModelFeatures needs a model with preprocessing (ierf.load_model)")
        self.model = model
        self.layer = layer if layer is not None else model.layer_at_stride(16)
        self.name = f"{model.name} {self.layer} (stand-in for DINOv2)"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=self.model.input_size[1:], mode="bilinear",
                          align_corners=False, antialias=True)
        x = self.model.normalize(x.clamp(0, 1)).to(self.model.device)
        grid = self.model.pfvs(x, self.layer)[self.layer].as_map()
        return _upsample(grid.float(), images.shape[-2:])


def label_feature_names(keys: Sequence[str] = LABEL_KEYS) -> list[str]:
    """Names of the :func:`label_features` channels, ``"<key>=<label>"``."""
    from ierf.data.synthetic import CONCEPTS, PART_TYPES

    names = {**{k: v[1:] for k, v in CONCEPTS.items()}, "part": [p["name"] for p in PART_TYPES]}
    for k in keys:
        if k not in names:
            raise unknown_name("label map", k, names)
    return [f"{k}={v}" for k in keys for v in names[k]]


def label_features(concept_maps: Mapping[str, Tensor], keys: Sequence[str] = LABEL_KEYS
                   ) -> Tensor:
    """The synthetic benchmark's per-pixel labels as one-hot features (N, D, H, W).

    ``concept_maps`` is :attr:`ierf.data.synthetic.SyntheticBatch.concept_maps` ((N, H, W)
    integer maps, 0 = background / no part). One block per key with one channel per label;
    label 0 (background, or a distractor's missing part) is the zero vector, so "being an
    object" is not itself a feature every object shares. Channel names:
    :func:`label_feature_names`.
    """
    from ierf.data.synthetic import CONCEPTS, PART_TYPES

    sizes = {**{k: len(v) for k, v in CONCEPTS.items()}, "part": len(PART_TYPES) + 1}
    blocks = []
    for k in keys:
        if k not in sizes or k not in concept_maps:
            raise unknown_name("label map", k, [s for s in sizes if s in concept_maps])
        blocks.append(F.one_hot(concept_maps[k].long(), sizes[k])[..., 1:].movedim(-1, 1))
    return torch.cat(blocks, 1).float()
