"""Toy architectures for the synthetic benchmark (64x64 inputs, 8 classes).

Models take inputs normalised with ``(x - TOY_MEAN) / TOY_STD`` for ``x`` in [0, 1].
"""

from __future__ import annotations

from torch import Tensor, nn

TOY_MEAN = (0.5, 0.5, 0.5)
TOY_STD = (0.5, 0.5, 0.5)
TOY_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leakyrelu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}
TOY_MODELS: list[str] = [
    "toy-resnet",
    "toy-vgg",
    "toy-vit",
    "toy-resnet-elu",
    "toy-resnet-leakyrelu",
    "toy-resnet-silu",
    "toy-resnet-gelu",
    "toy-resnet-tanh",
]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision-style residual block: conv-BN-act-conv-BN, add shortcut, act."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = act()
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.act2 = act()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + identity)


class ToyResNet(nn.Module):
    """Small ResNet: stem, max-pool, three stages of two blocks (16/32/64 channels), linear head.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    act : type of nn.Module
        Activation class; a fresh instance is created for every use.
    """

    def __init__(self, num_classes: int = 8, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = act()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1, act), BasicBlock(16, 16, 1, act))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2, act), BasicBlock(32, 32, 1, act))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2, act), BasicBlock(64, 64, 1, act))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class ToyVGG(nn.Module):
    """Small VGG without BatchNorm: three blocks of two 3x3 convs (16/32/64 channels) + max-pool."""

    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (16, 32, 64):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, num_classes)
        )
        # torchvision's VGG initialisation; PyTorch's default trains this BN-free net slowly.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _toy_vit(num_classes: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer  # timm only when used

    return VisionTransformer(
        img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=4, mlp_ratio=2,
        num_classes=num_classes, class_token=True, global_pool="token",
    )


def build_toy(name: str, num_classes: int = 8) -> nn.Module:
    """Build a randomly initialised toy model.

    Parameters
    ----------
    name : str
        One of :data:`TOY_MODELS`; ``toy-resnet-<act>`` selects an activation
        from :data:`TOY_ACTIVATIONS` (plain ``toy-resnet`` uses ReLU).
    num_classes : int
        Number of output logits.

    Returns
    -------
    nn.Module
        The model, expecting ``(N, 3, 64, 64)`` inputs normalised with
        :data:`TOY_MEAN` / :data:`TOY_STD`.

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`TOY_MODELS`.
    """
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; expected one of {TOY_MODELS}")
    if name == "toy-vgg":
        return ToyVGG(num_classes)
    if name == "toy-vit":
        return _toy_vit(num_classes)
    act = name.removeprefix("toy-resnet").removeprefix("-") or "relu"
    return ToyResNet(num_classes, TOY_ACTIVATIONS[act])
