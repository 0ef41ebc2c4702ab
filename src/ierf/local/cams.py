"""The CAM family and FullGrad, wrapped from pytorch-grad-cam (``pytorch_grad_cam``).

The plain names explain at the encoder output (``model.encoder_layer()``: ``layer4`` of a
ResNet, 7×7 at 224²); the ``-high`` names at the stride-8 layer
(``model.layer_at_stride(8)``: ``layer2``, 28×28), the paper's high-resolution variants.
``layer=`` overrides either.

Maps are what pytorch-grad-cam returns: ReLU of the weighted activations, upsampled
bilinearly (OpenCV) to the input size and min–max scaled to [0, 1] per image; returned as
float tensors on the input's device. Each call builds the library object, runs it, and
releases its hooks; parameters are frozen during the call (gradients flow from the
input), and their gradients and the in-place flags are restored afterwards.
pytorch-grad-cam is imported on first use (it pulls in OpenCV and scikit-learn: ~2 s).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ierf.errors import IerfError
from ierf.local.base import Attributor
from ierf.local.patches import frozen_params, no_inplace
from ierf.models.model import Model
from ierf.models.pfv import to_pfvs

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class _PytorchGradCam(Attributor):
    """Runs one pytorch-grad-cam object per call on ``images_per_call`` images at a time."""

    images_per_call: ClassVar[int | None] = None  # None: the whole batch at once

    @abstractmethod
    def _make_cam(self) -> BaseCAM:
        """A fresh pytorch-grad-cam object for one call."""

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        # "auto" is left to the library, which takes each image's top class as we would.
        auto = target is None or (isinstance(target, str) and target == "auto")
        index = None if auto else self.class_indices(x, target).tolist()
        step = self.images_per_call or len(x)
        net = self.model.net
        maps = []
        with no_inplace(net), frozen_params(net):
            for start in range(0, len(x), step):
                targets = None if index is None else [
                    ClassifierOutputTarget(i) for i in index[start:start + step]]
                maps.append(self._run(x[start:start + step].detach().requires_grad_(), targets))
        return torch.cat(maps)

    def _run(self, x: torch.Tensor, targets: list[ClassifierOutputTarget] | None) -> torch.Tensor:
        cam = self._make_cam()
        try:
            # not `with cam:` -- its __exit__ swallows IndexError
            return torch.from_numpy(cam(input_tensor=x, targets=targets))
        finally:
            cam.activations_and_grads.release()


class _LayerCam(_PytorchGradCam):
    """A CAM computed at one layer: the encoder output, or the stride-``stride`` layer.

    Parameters
    ----------
    model : the model to explain.
    layer : module name or module object of the target layer (see ``model.layer_names()``);
        by default the encoder output, or the stride-8 layer for the ``-high`` variants —
        found on the first input for a plain ``nn.Module`` of unknown input size.
    """

    cam_class: ClassVar[str]  # class name in pytorch_grad_cam
    stride: ClassVar[int | None] = None  # None: the encoder output

    def __init__(self, model: Model | nn.Module, layer: str | nn.Module | None = None) -> None:
        super().__init__(model)
        self.layer = None if layer is None else self.model.layer_name(layer)
        if layer is None and self.model.input_size is not None:
            self.layer = self._default_layer(None)

    def _default_layer(self, x: torch.Tensor | None) -> str:
        return (self.model.encoder_layer(x) if self.stride is None
                else self.model.layer_at_stride(self.stride, x))

    @property
    def target_layer(self) -> nn.Module:
        if self.layer is None:
            raise IerfError(f"{self.name}'s layer is found on the first input of a plain "
                            "nn.Module: call attribute(x) first, or pass layer=")
        return self.model.module(self.layer)

    def _attribute(self, x: torch.Tensor, target: object) -> torch.Tensor:
        if self.layer is None:
            self.layer = self._default_layer(x)
        return super()._attribute(x, target)

    def _make_cam(self) -> BaseCAM:
        import pytorch_grad_cam

        cam_class = getattr(pytorch_grad_cam, self.cam_class)
        return cam_class(model=self.model.net, target_layers=[self.target_layer],
                         reshape_transform=self._reshape_transform())

    def _reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """For ViTs, the library's ``reshape_transform``: (B, T, C) tokens → (B, C, h, w)
        patch grid, prefix tokens dropped; ``None`` for CNN feature maps."""
        if not self.model.is_vit:
            return None
        prefix, grid = self.model.num_prefix_tokens, self.model.patch_grid

        def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
            pf = to_pfvs(t, prefix, grid)
            return pf.vectors.transpose(1, 2).unflatten(2, pf.grid)

        return tokens_to_grid


class GradCAM(_LayerCam):
    """Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017): activations weighted by spatially averaged
    gradients, via ``pytorch_grad_cam.GradCAM``."""

    name = "gradcam"
    cam_class = "GradCAM"


class GradCAMPlusPlus(_LayerCam):
    """Grad-CAM++ (Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks", WACV 2018), via
    ``pytorch_grad_cam.GradCAMPlusPlus``."""

    name = "gradcam++"
    cam_class = "GradCAMPlusPlus"


class XGradCAM(_LayerCam):
    """XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020), via ``pytorch_grad_cam.XGradCAM``."""

    name = "xgradcam"
    cam_class = "XGradCAM"


class LayerCAM(_LayerCam):
    """LayerCAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021): activations weighted by their positive gradients per
    position, via ``pytorch_grad_cam.LayerCAM``."""

    name = "layercam"
    cam_class = "LayerCAM"


class ScoreCAM(_LayerCam):
    """Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR-W 2020), via ``pytorch_grad_cam.ScoreCAM``.

    One forward pass per channel of the layer and image. Images go through the library one
    at a time (it holds every channel-masked copy of its batch in memory at once: C × 3 × H
    × W floats per image, 1.2 GB for ResNet50's ``layer4``).

    Parameters
    ----------
    model, layer : as for :class:`GradCAM`.
    batch_size : masked images per forward pass (the library's ``batch_size``).
    """

    name = "scorecam"
    cam_class = "ScoreCAM"
    images_per_call = 1

    def __init__(self, model: Model | nn.Module, layer: str | None = None,
                 batch_size: int = 32) -> None:
        super().__init__(model, layer)
        self.batch_size = batch_size

    def _make_cam(self) -> BaseCAM:
        cam = super()._make_cam()
        cam.batch_size = self.batch_size
        return cam


class AblationCAM(_LayerCam):
    """Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020), via
    ``pytorch_grad_cam.AblationCAM``: the relative drop of the score when each channel of
    the layer is ablated, one forward pass per channel and image.

    The library swaps the target layer for an ablation layer during the call; it is put
    back even when the call fails.

    Parameters
    ----------
    model, layer : as for :class:`GradCAM`.
    batch_size : ablated copies per forward pass (the library's ``batch_size``).
    """

    name = "ablationcam"
    cam_class = "AblationCAM"

    def __init__(self, model: Model | nn.Module, layer: str | None = None,
                 batch_size: int = 32) -> None:
        super().__init__(model, layer)
        self.batch_size = batch_size

    def _run(self, x: torch.Tensor, targets: list[ClassifierOutputTarget] | None) -> torch.Tensor:
        from pytorch_grad_cam import AblationCAM
        from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
        from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

        class AnyArgumentsVit(AblationLayerVit):
            """The library's ViT ablation layer where the block it stands in for takes more
            arguments (open_clip's ``attn_mask``): it returns the stored, ablated
            activations, whatever it is called with."""

            def __call__(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
                return super().__call__(x)

        # a fresh instance: the library's default one is shared by all
        ablation_layer = AnyArgumentsVit() if self.model.is_vit else AblationLayer()
        layer = self.target_layer  # the library swaps it out of the net during the call
        cam = AblationCAM(model=self.model.net, target_layers=[layer],
                          ablation_layer=ablation_layer, batch_size=self.batch_size,
                          reshape_transform=self._reshape_transform())
        try:
            return torch.from_numpy(cam(input_tensor=x, targets=targets))
        finally:
            cam.activations_and_grads.release()
            replace_layer_recursive(self.model.net, ablation_layer, layer)


class FullGrad(_PytorchGradCam):
    """FullGrad (Srinivas & Fleuret, "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS 2019), via ``pytorch_grad_cam.FullGrad``: |x ⊙ ∂y/∂x| plus
    |bias ⊙ ∂y/∂z| of every layer with a bias, each rescaled and upsampled, summed.

    The library picks bias layers by exact type (``nn.Conv2d`` with a bias, ``nn.BatchNorm2d``):
    on torchvision ResNets/VGGs that is every BatchNorm; timm's fused ``BatchNormAct2d`` and
    ``Conv2dSame`` are not found, so on timm EfficientNets the map reduces to the input term.
    Slow on CPU where it is complete: the library upsamples and rescales every channel of
    every bias layer on its own, with OpenCV (≈ 26,000 channels on ResNet50).
    """

    name = "fullgrad"

    def _make_cam(self) -> BaseCAM:
        from pytorch_grad_cam import FullGrad

        return FullGrad(model=self.model.net, target_layers=[])


class GradCAMHigh(GradCAM):
    """Grad-CAM at the stride-8 layer (28×28 at 224², the paper's high resolution)."""

    name = "gradcam-high"
    stride = 8


class GradCAMPlusPlusHigh(GradCAMPlusPlus):
    """Grad-CAM++ at the stride-8 layer."""

    name = "gradcam++-high"
    stride = 8


class XGradCAMHigh(XGradCAM):
    """XGrad-CAM at the stride-8 layer."""

    name = "xgradcam-high"
    stride = 8


class LayerCAMHigh(LayerCAM):
    """LayerCAM at the stride-8 layer (the paper's LayerCAM-high)."""

    name = "layercam-high"
    stride = 8


class ScoreCAMHigh(ScoreCAM):
    """Score-CAM at the stride-8 layer."""

    name = "scorecam-high"
    stride = 8


class AblationCAMHigh(AblationCAM):
    """Ablation-CAM at the stride-8 layer."""

    name = "ablationcam-high"
    stride = 8


CAMS = (GradCAM, GradCAMPlusPlus, ScoreCAM, AblationCAM, XGradCAM, LayerCAM,
        GradCAMHigh, GradCAMPlusPlusHigh, ScoreCAMHigh, AblationCAMHigh, XGradCAMHigh,
        LayerCAMHigh, FullGrad)
