"""ResNets with BasicBlocks: CIFAR ResNet-20/56 and ImageNet ResNet-18.

Source: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv 1512.03385):
section 4.2 for the CIFAR nets (depth 6n + 2: a 3x3 conv with 16 channels, three stages of n
BasicBlocks with 16, 32, 64 channels and strides 1, 2, 2, global average pool, linear), table 1 for
ResNet-18 (7x7 stride-2 stem, 3x3 stride-2 max pool, stages [2, 2, 2, 2] of 64, 128, 256, 512).

Shortcuts use the paper's option B everywhere: identity when the shape is kept, else a 1x1 conv
(stride s) + BN. With option B, ResNet-20 for 10 classes has 272,474 parameters (the paper's
"0.27M" counts option A, parameter-free shortcuts: 269,722). Module names follow torchvision
(``conv1``, ``bn1``, ``layer1.0.downsample.0``, ``fc``), so ResNet-18 loads torchvision weights.

>>> import torch
>>> resnet_cifar(20)(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU between and after the add; option-B shortcut when the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, inplanes, H, W) -> (B, planes, H / s, W / s)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """BasicBlock ResNet: a stem, one stage per entry of ``layers`` (stride 1, then 2), pool, linear.

    Args:
        layers: blocks per stage, e.g. [3, 3, 3] (ResNet-20) or [2, 2, 2, 2] (ResNet-18).
        widths: channels per stage, e.g. [16, 32, 64] or [64, 128, 256, 512].
        num_classes: outputs of the final linear layer.
        imagenet_stem: 7x7 stride-2 conv + 3x3 stride-2 max pool (True) or one 3x3 stride-1 conv
            (False, CIFAR style; 32 x 32 inputs keep 32 x 32 in the first stage).
        input_size: the nominal input resolution, recorded as ``model.input_size = (3, H, W)``;
            the network itself accepts any size (global average pooling).
    """

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        imagenet_stem: bool = False,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if len(layers) == 0 or len(layers) != len(widths):
            raise ValueError(f"layers and widths must be non-empty and of equal length, got {layers}, {widths}")
        if min(layers) < 1 or min(widths) < 1:
            raise ValueError(f"layers and widths must be >= 1, got {layers}, {widths}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        self.input_size = (3, input_size, input_size)
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = [
                BasicBlock(inplanes if j == 0 else planes, planes, 2 if i > 0 and j == 0 else 1) for j in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, widths[0], H, W) or H/4 for ImageNet
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)  # halves H, W from the second stage on
        x = self.avgpool(x).flatten(1)  # (B, widths[-1])
        return self.fc(x)  # (B, num_classes)


def resnet_cifar(depth: int, num_classes: int = 10, base_width: int = 16, input_size: int = 32) -> ResNet:
    """CIFAR ResNet of depth 6n + 2 (20, 32, 44, 56, 110): n blocks per stage, widths w, 2w, 4w."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
    if base_width < 1:
        raise ValueError(f"base_width must be >= 1, got {base_width}")
    n = (depth - 2) // 6
    return ResNet([n] * 3, [base_width, 2 * base_width, 4 * base_width], num_classes, False, input_size)


def resnet18(num_classes: int = 1000, cifar_stem: bool = False, input_size: int | None = None) -> ResNet:
    """ResNet-18; ``cifar_stem=True`` swaps the 7x7 stem and max pool for a 3x3 stride-1 conv.

    ``input_size`` defaults to 224, or 32 with ``cifar_stem``. 11,689,512 parameters at 1000 classes.
    """
    if input_size is None:
        input_size = 32 if cifar_stem else 224
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, not cifar_stem, input_size)
