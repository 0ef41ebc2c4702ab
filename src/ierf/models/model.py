"""`Model`: a network plus everything an explanation needs to know about it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from ierf.errors import IerfError, unknown_name
from ierf.models.hooks import record_outputs
from ierf.models.pfv import PFVs, to_pfvs


@dataclass
class Preprocessing:
    """Resize, centre-crop and normalise, as the model was trained.

    ``resize`` is the shorter-side length before the centre crop to ``input_size``; with
    ``None`` the image is resized straight to ``input_size`` (aspect ratio not kept).
    ``interpolation`` is a torchvision ``InterpolationMode`` or its value (``"bicubic"``,
    ``"bilinear"``, ``"nearest"``).
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None
    interpolation: str = "bicubic"


@dataclass
class Model:
    """A vision model ready to be explained.

    Attributes
    ----------
    net : the ``nn.Module``, in eval mode.
    name : zoo name (or the class name of a wrapped module).
    class_names : one name per output logit.
    preprocessing : how images become input tensors; ``None`` for a wrapped module.
    num_prefix_tokens : CLS/register tokens of a ViT (0 for CNNs).
    patch_grid : patch grid of a ViT, if known.
    """

    net: nn.Module
    name: str
    class_names: list[str]
    preprocessing: Preprocessing | None = None
    num_prefix_tokens: int = 0
    patch_grid: tuple[int, int] | None = None
    _grids: dict[str, tuple[int, int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.net.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.check(x))

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an input batch for this model (ViTs need their exact input size)."""
        size = self.input_size
        return check_input(x, size if self.is_vit else None, channels=3 if size else None)

    @property
    def is_vit(self) -> bool:
        return self.num_prefix_tokens > 0 or self.patch_grid is not None

    @property
    def input_size(self) -> tuple[int, int, int] | None:
        """``(3, H, W)`` the model expects, or ``None`` if unknown."""
        p = self.preprocessing
        return None if p is None else (3, *p.input_size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocess(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """PIL image or HWC array (uint8, or float in [0, 1]) → normalised ``(1, 3, H, W)``."""
        if self.preprocessing is None:
            raise IerfError(f"model {self.name!r} has no preprocessing; build it with "
                            "ierf.load_model or pass Preprocessing to ierf.Model")
        # torchvision takes ~2 s to import: only when an image is preprocessed
        import torchvision.transforms.functional as TF

        p = self.preprocessing
        x = image_to_tensor(image)
        size = p.resize if p.resize is not None else list(p.input_size)
        x = TF.resize(x, size, interpolation=TF.InterpolationMode(p.interpolation),
                      antialias=True)
        x = TF.center_crop(x, list(p.input_size)).clamp(0, 1)
        return normalize(x, p.mean, p.std).unsqueeze(0)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images already at the input size, (B, 3, H, W) in [0, 1] (e.g. the synthetic
        benchmark's) → normalised model input, batched; no resizing."""
        if self.preprocessing is None:
            raise IerfError(f"model {self.name!r} has no preprocessing; build it with "
                            "ierf.load_model or pass Preprocessing to ierf.Model")
        return normalize(images, self.preprocessing.mean, self.preprocessing.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Invert the normalisation of ``preprocess``: (B, 3, H, W) → values in [0, 1]."""
        if self.preprocessing is None:
            return x
        mean = x.new_tensor(self.preprocessing.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.preprocessing.std).view(1, 3, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def module(self, name: str) -> nn.Module:
        """The submodule called ``name`` in ``net.named_modules()``; lists valid names if absent."""
        modules = dict(self.net.named_modules(remove_duplicate=False))
        if name == "" or name not in modules:
            valid = self.layer_names() if self.input_size else [n for n in modules if n]
            raise unknown_name("layer", name, valid)
        return modules[name]

    def layer_name(self, layer: str | nn.Module) -> str:
        """The name of ``layer``: a name (checked), or the module object itself, as
        pytorch-grad-cam users pass it (``layer=net.layer3``)."""
        if isinstance(layer, nn.Module):
            for name, m in self.net.named_modules():
                if m is layer and name:
                    return name
            raise IerfError(f"the module {type(layer).__name__} passed as a layer is not part of "
                            f"{self.name}; pass one of its submodules or a layer name")
        self.module(layer)
        return layer

    def layer_names(self) -> list[str]:
        """Layers whose output has PFVs (feature maps or patch tokens), in forward order."""
        return list(self.layer_grids())

    def layer_grids(self, example: torch.Tensor | None = None) -> dict[str, tuple[int, int]]:
        """Each analysable layer's PFV grid (H, W), in forward order.

        Traced once on zeros of the model's input size, or on ``example`` (a wrapped
        ``nn.Module`` has no known input size).
        """
        if self._grids is None or example is not None:
            if example is None and self.input_size is None:
                raise IerfError("layer names need the model's input size; use ierf.load_model, "
                                "give the Model a Preprocessing, or pass an example input")
            if example is None:
                example = torch.zeros(1, *self.input_size, device=self.device)
            _, outputs = self._trace(example[:1])
            grids = {n: g for n, out in outputs.items() if (g := self._grid_of(out))}
            if example is None or self.input_size is None:
                self._grids = grids
            return grids
        return dict(self._grids)

    def encoder_layer(self, example: torch.Tensor | None = None) -> str:
        """The encoder output L: the last layer with a spatial grid larger than 1×1.

        For a ViT, the input of the last block (output of ``blocks[-2]``): after the last
        block only the CLS token reaches the head, so patch tokens there carry no gradient.
        """
        blocks = vit_blocks(self.net) if self.is_vit else None
        if blocks is not None and len(blocks[1]) > 1:
            return f"{blocks[0]}.{list(blocks[1].named_children())[-2][0]}"
        return [n for n, g in self.layer_grids(example).items() if g[0] * g[1] > 1][-1]

    def layer_at_stride(self, stride: int, example: torch.Tensor | None = None) -> str:
        """The outermost, then last, layer whose grid is the input size divided by ``stride``
        (``layer2`` of a ResNet50, ``blocks.2`` of EfficientNet-Lite0).

        A wrapped ``nn.Module`` has no known input size: pass an ``example`` input batch.
        """
        if example is None and self.input_size is None:
            raise IerfError(f"finding the layer at stride {stride} needs the input size, which a "
                            f"plain nn.Module ({self.name}) does not carry: pass the layer by "
                            "name (layer='layer2'), or wrap the module as ierf.Model(net, name, "
                            "class_names, preprocessing=ierf.models.Preprocessing((H, W), mean, "
                            "std))")
        h = (self.input_size[1] if example is None else example.shape[-2]) // stride
        grids = self.layer_grids(example)
        names = [n for n, g in grids.items() if g[0] == h]
        if not names:
            shown = sorted({f"{g[0]}×{g[1]}" for g in grids.values()})
            raise IerfError(f"{self.name} has no layer at stride {stride} ({h}×{h} grid); its "
                            f"layers have grids {', '.join(shown)}: pass a layer name instead")
        depth = min(n.count(".") for n in names)
        return [n for n in names if n.count(".") == depth][-1]

    def pfvs(self, x: torch.Tensor, layers: str | Sequence[str]) -> dict[str, PFVs]:
        """Run the model once and return the PFVs of each requested layer."""
        return self.forward_pfvs(x, layers)[1]

    def forward_pfvs(self, x: torch.Tensor, layers: str | Sequence[str]
                     ) -> tuple[torch.Tensor, dict[str, PFVs]]:
        """One no-grad forward pass: the model's output and the PFVs of each requested layer."""
        names = [layers] if isinstance(layers, str) else list(layers)
        for n in names:
            self.module(n)
        out, outputs = self._trace(self.check(x), names)
        return out, {n: to_pfvs(outputs[n], self.num_prefix_tokens, self.patch_grid)
                     for n in names}

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _grid_of(self, out: object) -> tuple[int, int] | None:
        if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
            return None
        try:
            grid = to_pfvs(out, self.num_prefix_tokens, self.patch_grid).grid
        except IerfError:
            return None
        if self.is_vit and out.dim() == 4 and self.patch_grid not in (None, grid):
            return None  # (B, heads, T, d) attention internals are not feature maps
        return grid if grid[0] * grid[1] > 1 or out.dim() == 4 else None

    def _trace(self, x: torch.Tensor, names: Sequence[str] | None = None
               ) -> tuple[torch.Tensor, dict[str, object]]:
        """Forward ``x`` (no grad): the model's output and the (first) output of each named
        module — copied when ``names`` are given, so later in-place operations cannot change
        them (all modules: only their shapes are read)."""
        wanted = dict(self.net.named_modules(remove_duplicate=False))
        if names is not None:
            wanted = {n: wanted[n] for n in names}
        wanted.pop("", None)
        with record_outputs(wanted, copy=names is not None) as outputs, torch.no_grad():
            out = self.net(x)
        return out, outputs


def as_model(model: Model | nn.Module) -> Model:
    """Accept an :class:`Model` or a plain ``nn.Module`` (wrapped with generic metadata)."""
    if isinstance(model, Model):
        return model
    if not isinstance(model, nn.Module):
        raise IerfError(f"expected an ierf.Model or a torch.nn.Module, got {type(model).__name__}")
    num_classes = _guess_num_classes(model)
    prefix, grid = vit_layout(model)
    return Model(model, type(model).__name__, [f"class {i}" for i in range(num_classes)],
                 num_prefix_tokens=prefix, patch_grid=grid)


def vit_layout(net: nn.Module) -> tuple[int, tuple[int, int] | None]:
    """``(prefix tokens, patch grid)`` of a timm, torchvision or open_clip ViT; ``(0, None)``
    otherwise."""
    torchvision = sys.modules.get("torchvision")      # not imported: not a torchvision ViT
    if torchvision is not None and isinstance(net, torchvision.models.VisionTransformer):
        side = net.image_size // net.patch_size
        return 1, (side, side)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid is not None and hasattr(net, "num_prefix_tokens"):
        return int(net.num_prefix_tokens), (int(grid[0]), int(grid[1]))
    grid = getattr(net, "grid_size", None)
    if grid is not None and isinstance(getattr(net, "class_embedding", None), nn.Parameter):
        return 1, (int(grid[0]), int(grid[1]))  # open_clip VisionTransformer: one CLS token
    return 0, None


def vit_blocks(net: nn.Module) -> tuple[str, nn.Module] | None:
    """Name and container of a ViT's transformer blocks: timm ``blocks``, torchvision
    ``encoder.layers``, open_clip ``transformer.resblocks``; ``None`` if the net has none."""
    for name in ("blocks", "encoder.layers", "transformer.resblocks"):
        try:
            blocks = net.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(blocks, nn.Sequential | nn.ModuleList):
            return name, blocks
    return None


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x − mean) / std`` per channel of ``(…, C, H, W)`` (torchvision's ``normalize``)."""
    return (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]


def _guess_num_classes(net: nn.Module) -> int:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else 0


def image_to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL image or HWC/HW array → float (3, H, W) in [0, 1]."""
    if isinstance(image, Image.Image):
        return image_to_tensor(np.asarray(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise IerfError(f"image array must be HW or HWC with 1, 3 or 4 channels, got shape {a.shape}")
        a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
        t = torch.from_numpy(np.array(a)).permute(2, 0, 1)
        if a.dtype == np.uint8:
            return t.float() / 255.0
        t = t.float()
        if not torch.isfinite(t).all():
            raise IerfError("image array contains NaN or infinite values")
        if t.min() < 0 or t.max() > 1:
            raise IerfError("float image arrays must lie in [0, 1]; pass uint8 for 0..255 values")
        return t
    raise IerfError(f"expected a PIL image or numpy array, got {type(image).__name__}")


def check_input(x: torch.Tensor, input_size: tuple[int, int, int] | None = None,
                channels: int | None = None) -> torch.Tensor:
    """Validate a batch of images: (B, C, H, W), finite, of the given channels or exact size."""
    if not isinstance(x, torch.Tensor):
        raise IerfError(f"expected a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}; "
                        "use model.preprocess(image) to make one")
    if x.dim() == 3:
        raise IerfError(f"expected a batch (B, 3, H, W), got shape {tuple(x.shape)}; "
                        "add a batch dimension with x.unsqueeze(0)")
    if x.dim() != 4:
        raise IerfError(f"expected a batch of images (B, 3, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise IerfError(f"expected a float tensor, got {x.dtype}; for 0–255 pixels use "
                        "model.preprocess(image) on a PIL image, or x.float() / 255 then "
                        "model.normalize(x)")
    if channels is not None and x.shape[1] != channels:
        raise IerfError(f"expected {channels} input channels, got shape {tuple(x.shape)}; "
                        "use model.preprocess(image)")
    if input_size is not None and tuple(x.shape[1:]) != tuple(input_size):
        raise IerfError(f"this model takes inputs of shape (B, {', '.join(map(str, input_size))}), "
                        f"got {tuple(x.shape)}; use model.preprocess(image)")
    if not torch.isfinite(x).all():
        raise IerfError("input contains NaN or infinite values")
    return x
