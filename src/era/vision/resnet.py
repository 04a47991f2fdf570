"""ResNet-20, the CIFAR-style residual network of He et al. (2016, section 4.2), as a timm model.

Three stages of three basic blocks (16, 32, 64 channels, stride 2 between stages), a 3x3 stem,
global average pooling and one linear layer: about 0.27 M parameters. Small images (28x28
Fashion-MNIST, 32x32 CIFAR) keep their resolution in the first stage, where ImageNet-style
networks (``resnet10t``...) would shrink them 4x in the stem. Registered with timm, so
``timm.create_model("resnet20")`` and ``era vision train --model resnet20`` build it. Shortcuts
between stages are 1x1 strided convolutions with BatchNorm (He et al.'s option B).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``depth = 6 n + 2`` layers: stem, three stages of ``n`` blocks, pooled linear classifier."""

    def __init__(
        self,
        depth: int = 20,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth!r}")
        blocks = (depth - 2) // 6
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x)).mean((2, 3))
        return self.fc(self.drop(features))


def _build(depth: int, kwargs: dict) -> CifarResNet:
    # timm passes its pretrained-config arguments to every model function; there are no weights.
    if kwargs.pop("pretrained", False):
        raise ValueError(f"resnet{depth} has no pretrained weights (pretrained must be False)")
    for unused in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(unused, None)
    return CifarResNet(depth, **kwargs)


@register_model
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 for 28-32 px images (0.27 M parameters with 10 classes)."""
    return _build(20, kwargs)
