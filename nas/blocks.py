"""Efficient building blocks shared by the zoo: ``ConvBNAct``, the MobileNetV2 inverted residual.

Source: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018
(arXiv 1801.04381), as implemented in torchvision ``torchvision/models/mobilenetv2.py``; see
shared/reference/methods.md section 5. Module names follow torchvision (``conv.0.0``, ``conv.1``,
...), so a torchvision state dict loads into the zoo's MobileNetV2.

The inverted residual takes the layer in its middle (the "spatial" layer, a 3x3 depthwise conv in
the paper) from a factory, so the E2GC and TVConv variants reuse the rest unchanged.

>>> import torch
>>> block = InvertedResidual(16, 16, stride=1, expand_ratio=6)
>>> block.use_res_connect, block.hidden_dim
(True, 96)
>>> block(torch.zeros(1, 16, 8, 8)).shape
torch.Size([1, 16, 8, 8])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Builds the middle (spatial) layer of an inverted residual: ``(hidden_channels, stride) -> module``.
#: The module maps (B, hidden, H, W) -> (B, hidden, H', W') and includes its own BN and activation.
SpatialFactory = Callable[[int, int], nn.Module]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, at least ``min_value``, never < 0.9 * v.

    Exactly torchvision's ``_make_divisible`` (from the TF-slim MobileNet code):
    ``new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)``, plus ``divisor`` if that
    went down by more than 10%. ``min_value`` defaults to ``divisor``.

    >>> make_divisible(32 * 0.5), make_divisible(3), make_divisible(91), make_divisible(32 * 0.35)
    (16, 8, 88, 16)
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Make sure that round down does not go down by more than 10%.
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a conv with 'same' padding (k-1)//2: floor((n + 2p - k) / s) + 1."""
    padding = (kernel - 1) // 2
    return (size + 2 * padding - kernel) // stride + 1


class ConvBNAct(nn.Sequential):
    """Conv2d (bias-free, 'same' padding (k-1)//2) + BatchNorm2d + activation, as one Sequential.

    Same layout and child names (0: conv, 1: bn, 2: act) as torchvision's ``Conv2dNormActivation``.
    ``activation=None`` leaves the activation out (a linear layer).

    >>> ConvBNAct(3, 32, kernel_size=3, stride=2)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 32, 16, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


def depthwise_spatial(hidden: int, stride: int) -> nn.Module:
    """The paper's middle layer: 3x3 depthwise conv (groups = hidden), stride s, BN, ReLU6."""
    return ConvBNAct(hidden, hidden, kernel_size=3, stride=stride, groups=hidden)


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual with linear bottleneck (methods.md section 5.1).

    hidden = round(inp * t); layers, all convs bias-free:

    1. expand: 1x1 conv inp -> hidden + BN + ReLU6 (omitted when t == 1);
    2. spatial: ``spatial(hidden, stride)``, by default 3x3 depthwise stride s + BN + ReLU6;
    3. project: 1x1 conv hidden -> oup + BN, no activation;
    4. residual ``x + F(x)`` only when s == 1 and inp == oup.
    """

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expand_ratio: float,
        spatial: SpatialFactory = depthwise_spatial,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if expand_ratio < 1:
            raise ValueError(f"expand_ratio must be >= 1, got {expand_ratio}")
        self.in_channels = inp
        self.out_channels = oup
        self.stride = stride
        self.expand_ratio = expand_ratio
        self.hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup

        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, self.hidden_dim, kernel_size=1))
        layers += [
            spatial(self.hidden_dim, stride),
            nn.Conv2d(self.hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, inp, H, W) -> (B, oup, H / s, W / s)
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)
