"""VGG with batch norm, CIFAR-style head (global average pool + one linear layer).

Source: Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv 1409.1556), configurations A (VGG-11) and D (VGG-16), with BN after
every conv as in torchvision's ``vgg11_bn``/``vgg16_bn``. The three-layer 4096-wide ImageNet head is
replaced by global average pooling and one linear layer, so the same network runs on 32 x 32
(5 max pools: 1 x 1 at the end) and 224 x 224 (7 x 7, pooled) inputs.

>>> import torch
>>> vgg("vgg11")(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Conv output channels, "M" for a 2x2 stride-2 max pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """``features`` (conv3x3 + BN + ReLU, max pools) -> global avg pool -> dropout -> linear."""

    def __init__(
        self, config: Sequence[int | str], num_classes: int = 10, input_size: int = 32, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not any(isinstance(v, int) for v in config):
            raise ValueError(f"config must hold at least one conv width, got {config}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size = (3, input_size, input_size)
        layers: list[nn.Module] = []
        channels = 3
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            elif isinstance(v, int) and v > 0:
                layers += [nn.Conv2d(channels, v, 3, 1, 1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
            else:
                raise ValueError(f"config entries are positive ints or 'M', got {v!r}")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C_last, H / 2^pools, W / 2^pools)
        x = self.avgpool(x).flatten(1)  # (B, C_last)
        return self.classifier(x)  # (B, num_classes)


def vgg(name: str, num_classes: int = 10, input_size: int = 32, dropout: float = 0.0) -> VGG:
    """VGG-11 ("vgg11") or VGG-16 ("vgg16") with batch norm and the pooled linear head."""
    if name not in VGG_CONFIGS:
        raise ValueError(f"name must be one of {sorted(VGG_CONFIGS)}, got {name!r}")
    return VGG(VGG_CONFIGS[name], num_classes, input_size, dropout)
