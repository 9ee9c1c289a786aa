"""SmallCNN and the CIFAR ResNet-20 (see :mod:`sdecor.models` for the contract)."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_int

__all__ = ["MODEL_NAMES", "ResNet20", "SmallCNN", "build_model", "resnet20"]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Pool(nn.Sequential):
    """Global average pooling to an (N, C) vector: ``AdaptiveAvgPool2d(1)`` + ``Flatten``."""

    def __init__(self):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class SmallCNN(nn.Module):
    """conv(w/2) -> pool -> conv(w) -> pool -> conv(2w) -> conv(2w) -> GAP -> linear.

    Each ``blockK`` is Conv3x3 (no bias) + BatchNorm + ReLU. ``feature_layer = "pool"`` gives
    (N, 2w) features, ``conv_feature_layer = "block4"`` the (N, 2w, H/4, W/4) feature map.
    """

    feature_layer = "pool"
    conv_feature_layer = "block4"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_int(in_channels, "in_channels", low=1)
        check_int(width, "width", low=2)
        self.config = {
            "name": "small_cnn",
            "kwargs": dict(num_classes=num_classes, in_channels=in_channels, width=width),
        }
        w = width
        self.block1 = _conv_bn_relu(in_channels, w // 2)
        self.down1 = nn.MaxPool2d(2)
        self.block2 = _conv_bn_relu(w // 2, w)
        self.down2 = nn.MaxPool2d(2)
        self.block3 = _conv_bn_relu(w, 2 * w)
        self.block4 = _conv_bn_relu(2 * w, 2 * w)
        self.pool = _Pool()
        self.fc = nn.Linear(2 * w, num_classes)
        self.num_features = 2 * w
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down1(self.block1(x))
        x = self.down2(self.block2(x))
        x = self.block4(self.block3(x))
        return self.fc(self.pool(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; identity or 1x1-conv + BN projection shortcut; ReLU after the sum.
    Every ReLU is its own module (``relu1``, ``relu2``) used once per forward."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet (He et al. 2016, section 4.2) with ``depth = 6 n + 2`` (n = 3: ResNet-20).

    ``stem`` (conv-BN-ReLU, ``width`` channels) -> ``layer1..3`` (n blocks each, widths w, 2w, 4w,
    stride 2 at the start of layers 2 and 3) -> ``pool`` -> ``fc``.
    """

    feature_layer = "pool"
    conv_feature_layer = "layer3"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, depth: int = 20):
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_int(in_channels, "in_channels", low=1)
        check_int(width, "width", low=1)
        check_int(depth, "depth", low=8)
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.config = {
            "name": "resnet20",
            "kwargs": dict(num_classes=num_classes, in_channels=in_channels, width=width, depth=depth),
        }
        w = width
        self.stem = _conv_bn_relu(in_channels, w)
        self.layer1 = self._stage(w, w, n, 1)
        self.layer2 = self._stage(w, 2 * w, n, 2)
        self.layer3 = self._stage(2 * w, 4 * w, n, 2)
        self.pool = _Pool()
        self.fc = nn.Linear(4 * w, num_classes)
        self.num_features = 4 * w
        _init(self)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x))


def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> ResNet20:
    """The CIFAR ResNet-20 (~0.27M parameters at width 16)."""
    return ResNet20(num_classes=num_classes, in_channels=in_channels, width=width, depth=20)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_BUILDERS = {"small_cnn": SmallCNN, "resnet20": ResNet20}
_ALIASES = {"smallcnn": "small_cnn", "small-cnn": "small_cnn", "resnet-20": "resnet20", "resnet_20": "resnet20"}
#: Names accepted by :func:`build_model` (aliases: smallcnn, small-cnn, resnet-20).
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a reference model by name (``MODEL_NAMES``); kwargs go to its constructor."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    return _BUILDERS[key](num_classes=num_classes, in_channels=in_channels, **kwargs)
