"""B-cos ResNets (B-cos v2 layout): no ReLUs, bias-free uncentred norms, a B-cos 1×1 classifier
applied before global average pooling. Input: the 6-channel ``[x, 1 − x]`` encoding.

:func:`bcos_toy_resnet` is the compact net of the synthetic benchmark (``fact-toy``);
:func:`bcos_resnet50` is the ImageNet architecture the FaCT paper uses (random weights here).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ierf.fact.layers import BcosConv2d, UncenteredBatchNorm2d


class BasicBlock(nn.Module):
    """Two 3×3 B-cos convs with norms, plus the (B-cos 1×1 projected) shortcut."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = BcosConv2d(c_in, width, 3, stride, 1)
        self.bn1 = UncenteredBatchNorm2d(width)
        self.conv2 = BcosConv2d(width, c_out, 3, 1, 1)
        self.bn2 = UncenteredBatchNorm2d(c_out)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.bn2(self.conv2(self.bn1(self.conv1(x)))) + identity


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 B-cos convs with norms, plus the shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = BcosConv2d(c_in, width, 1)
        self.bn1 = UncenteredBatchNorm2d(width)
        self.conv2 = BcosConv2d(width, width, 3, stride, 1)
        self.bn2 = UncenteredBatchNorm2d(width)
        self.conv3 = BcosConv2d(width, c_out, 1)
        self.bn3 = UncenteredBatchNorm2d(c_out)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.bn3(self.conv3(out)) + identity


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(BcosConv2d(c_in, c_out, 1, stride), UncenteredBatchNorm2d(c_out))


class BcosResNet(nn.Module):
    """A B-cos ResNet on 6-channel inputs; every stage is ``layer{i}`` as in torchvision.

    Parameters
    ----------
    block : :class:`BasicBlock` or :class:`Bottleneck`.
    depths : blocks per stage.
    widths : block width per stage (output channels are ``width · block.expansion``).
    num_classes : output logits.
    stem : ``(kernel, stride)`` of a single-conv stem for small images (``(4, 4)``: 4×4
        patches; ``(3, 2)``: a padded 3×3 stride-2 conv); ``None``: the ImageNet 7×7
        stride-2 stem + 3×3 stride-2 average pool.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: Sequence[int],
                 widths: Sequence[int], num_classes: int, *, in_channels: int = 6,
                 stem: tuple[int, int] | None = None) -> None:
        super().__init__()
        c = widths[0]
        if stem is not None:
            k, stride = stem
            self.conv1 = BcosConv2d(in_channels, c, k, stride, (k - 1) // 2 if stride < k else 0)
            self.pool: nn.Module = nn.Identity()
        else:
            self.conv1 = BcosConv2d(in_channels, c, 7, 2, 3)
            self.pool = nn.AvgPool2d(3, 2, 1)
        self.bn1 = UncenteredBatchNorm2d(c)
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(c, width, 2 if (j == 0 and i > 0) else 1))
                c = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(depths)
        self.num_features = c
        self.fc = BcosConv2d(c, num_classes, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map after the last stage."""
        x = self.pool(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.avgpool(self.fc(self.forward_features(x))).flatten(1)


def bcos_toy_resnet(num_classes: int = 8, widths: Sequence[int] = (32, 64, 128),
                    depths: Sequence[int] = (1, 1, 1),
                    stem: tuple[int, int] = (4, 4)) -> BcosResNet:
    """Compact B-cos ResNet for 64×64 images: a 4×4-patch stem, then stages of basic blocks
    (grids 16, 8, 4 by default)."""
    return BcosResNet(BasicBlock, depths, widths, num_classes, stem=stem)


def bcos_resnet50(num_classes: int = 1000) -> BcosResNet:
    """B-cos ResNet-50 (torchvision ResNet-50 v1.5 layout, random weights)."""
    return BcosResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes)
