"""OpenCLIP image towers as :class:`~ierf.Model`: ``ierf.load_model("openclip/ViT-L-14",
weights="openai")``, the CLIP ViT-L/14 the CAFE paper explains (optional extra:
``pip install -e '.[clip]'``).

The model is the image tower (``clip.visual``, an open_clip ``VisionTransformer``): its
output is the image embedding (one "class" per embedding dimension), its layers are
``transformer.resblocks.<i>`` with batch-first (B, 1 + N, C) tokens, the CLS token first
(``num_prefix_tokens = 1``), and its preprocessing is the one open_clip trained it with
(shorter side resized to the input size, bicubic, centre crop, CLIP's mean and std).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from torch import nn

from ierf.errors import IerfError, WeightsUnavailableError, unknown_name
from ierf.models.model import Model, Preprocessing, vit_layout

INSTALL_HINT = "OpenCLIP models need the optional extra: pip install -e '.[clip]'"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def import_open_clip() -> ModuleType:
    """``open_clip``, or a clear error naming the extra that installs it."""
    try:
        import open_clip
    except ImportError as e:
        raise IerfError(INSTALL_HINT) from e
    return open_clip


def load_openclip(arch: str, weights: str | Path | None = "pretrained") -> Model:
    """The image tower of OpenCLIP model ``arch`` (e.g. ``"ViT-L-14"``, ``"ViT-B-32"``).

    Parameters
    ----------
    arch : an architecture of ``open_clip.list_models()``.
    weights : an open_clip pretrained tag (``"openai"``, ``"laion2b_s32b_b82k"``, ...; see
        ``open_clip.list_pretrained_tags_by_model(arch)``), downloaded on first use;
        ``"pretrained"``: ``"openai"`` where it exists, else the first tag; a path to an
        open_clip checkpoint of the whole CLIP model; ``None``: random weights.
    """
    open_clip = import_open_clip()
    if arch not in open_clip.list_models():
        raise unknown_name("OpenCLIP architecture", arch, open_clip.list_models())
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if weights == "pretrained":
        if not tags:
            raise IerfError(f"open_clip has no pretrained weights for {arch}; pass weights=None "
                            "for random weights or a path to a checkpoint")
        weights = "openai" if "openai" in tags else tags[0]
    if weights == "imagenet":
        raise IerfError(f"{arch} is a CLIP model, not an ImageNet classifier; pass an open_clip "
                        f"tag ({', '.join(tags) or 'none known'}), a checkpoint path or None")
    if weights is not None and str(weights) not in tags and not Path(weights).is_file():
        raise IerfError(f"{str(weights)!r} is neither an open_clip tag of {arch} "
                        f"({', '.join(tags) or 'none known'}) nor a checkpoint file; pass one "
                        "of those, 'pretrained' or None (random weights)")
    quick_gelu = weights is not None and bool(
        open_clip.get_pretrained_cfg(arch, str(weights)).get("quick_gelu", False))
    try:
        clip = open_clip.create_model(arch, pretrained=None if weights is None else str(weights),
                                      force_quick_gelu=quick_gelu)
    except Exception as e:
        if weights is None:
            raise
        raise WeightsUnavailableError(
            f"could not load OpenCLIP weights {str(weights)!r} for {arch} (no network?): "
            "connect once so open_clip can cache them, pass a checkpoint path, or use "
            "weights=None for random weights") from e
    preprocess = getattr(clip.visual, "preprocess_cfg", None) or {}
    return openclip_model(clip.visual, f"openclip/{arch}", preprocess)


def openclip_model(visual: nn.Module, name: str = "openclip", preprocess: dict | None = None
                   ) -> Model:
    """Wrap an open_clip ``VisionTransformer`` (``clip.visual``) as a :class:`Model`.

    ``preprocess``: open_clip's preprocessing config (``mean``, ``std``, ``interpolation``,
    ``resize_mode``; default: the tower's ``image_mean``/``image_std``, else OpenAI CLIP's).
    """
    open_clip = import_open_clip()
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise IerfError(f"{name}'s image tower is a {type(visual).__name__}, not an open_clip "
                        "VisionTransformer; for timm-backed towers load the timm model as "
                        "'timm/<name>'")
    if not getattr(visual.transformer, "batch_first", False):
        raise IerfError(f"{name} runs its transformer sequence-first (L, B, C); ierf reads "
                        "batch-first (B, L, C) tokens: upgrade open_clip (pip install -U "
                        "'open_clip_torch>=2.26') or build the tower with batch_first=True")
    cfg = preprocess or {}
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = cfg.get("std") or getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    size = tuple(int(s) for s in visual.image_size)
    squash = cfg.get("resize_mode") == "squash"  # resized straight to the input size
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise unknown_name("interpolation", interpolation, INTERPOLATIONS)
    prep = Preprocessing(size, tuple(mean), tuple(std), resize=None if squash else min(size),
                         interpolation=interpolation)
    prefix, grid = vit_layout(visual)
    classes = [f"embedding {i}" for i in range(visual.output_dim)]
    return Model(visual, name, classes, prep, num_prefix_tokens=prefix, patch_grid=grid)
