"""MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381), with IRB, E2GC or TVConv blocks.

Network table (methods.md section 5.2; torchvision ``mobilenetv2.py``), input 224 x 224:

    conv3x3 + BN + ReLU6, 32 channels, stride 2
    bottlenecks (t, c, n, s): (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)
    conv1x1 + BN + ReLU6, 1280 channels; global avg-pool, dropout 0.2, linear

Width multiplier alpha: every c, the 32-channel stem included, becomes make_divisible(c * alpha, 8);
the last conv has make_divisible(1280 * max(1, alpha), 8) channels. Within a stage the stride applies
to the first block only. With alpha = 1 and 1000 classes: 3,504,872 parameters (torchvision's).

``cifar_stem=True`` (for 32 x 32 inputs) sets the stem stride to 1 and, in the default table, the
stride of the second stage (c = 24) to 1, so the total stride is 8 and 32 x 32 ends at 4 x 4.
A custom ``stage_table`` is used exactly as given (only the stem stride changes).

``block`` picks the middle layer of every bottleneck: "irb" (3x3 depthwise, the paper), "e2gc"
(grouped 3x3 with constant group size ``group_size``, see ``e2gc.py``) or "tvconv" (TVConv, see
``tvconv.py``; each block's output size is computed from ``input_size``, which then becomes the
only resolution the model accepts).

>>> import torch
>>> model = MobileNetV2(num_classes=10, width_mult=0.5, cifar_stem=True, input_size=32)
>>> model(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgecompress.nas.blocks import ConvBNAct, InvertedResidual, conv_output_size, make_divisible
from edgecompress.nas.e2gc import E2GCInvertedResidual
from edgecompress.nas.tvconv import TVConvInvertedResidual

#: (t, c, n, s): expansion, output channels, repeats, stride of the first block.
StageTable = Sequence[tuple[float, int, int, int]]

PAPER_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
BLOCKS = ("irb", "e2gc", "tvconv")


def _size_pair(input_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    return h, w


def _check_table(table: StageTable) -> None:
    if len(table) == 0:
        raise ValueError("stage_table is empty")
    for row in table:
        if len(row) != 4:
            raise ValueError(f"stage_table rows are (t, c, n, s), got {row}")
        t, c, n, s = row
        if t < 1 or c < 1 or n < 1 or s not in (1, 2):
            raise ValueError(f"stage_table row {row}: need t >= 1, c >= 1, n >= 1, s in (1, 2)")


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier, CIFAR stem option and IRB / E2GC / TVConv blocks."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        cifar_stem: bool = False,
        block: str = "irb",
        input_size: int | tuple[int, int] = 224,
        dropout: float = 0.2,
        stage_table: StageTable | None = None,
        group_size: int = 8,
        last_channel: int = 1280,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if last_channel < 1:
            raise ValueError(f"last_channel must be >= 1, got {last_channel}")
        table = [tuple(row) for row in (PAPER_STAGES if stage_table is None else stage_table)]
        _check_table(table)
        if cifar_stem and stage_table is None:
            table[1] = (*table[1][:3], 1)
        h, w = _size_pair(input_size)
        self.input_size = (3, h, w)
        self.block = block

        stem_stride = 1 if cifar_stem else 2
        input_channel = make_divisible(32 * width_mult, 8)
        self.last_channel = make_divisible(last_channel * max(1.0, width_mult), 8)
        h, w = conv_output_size(h, 3, stem_stride), conv_output_size(w, 3, stem_stride)
        features: list[nn.Module] = [ConvBNAct(3, input_channel, kernel_size=3, stride=stem_stride)]
        for t, c, n, s in table:
            output_channel = make_divisible(c * width_mult, 8)
            for i in range(n):
                stride = s if i == 0 else 1
                h, w = conv_output_size(h, 3, stride), conv_output_size(w, 3, stride)
                features.append(self._block(input_channel, output_channel, stride, t, (h, w), group_size))
                input_channel = output_channel
        features.append(ConvBNAct(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        self._init_weights()

    def _block(
        self, inp: int, oup: int, stride: int, t: float, out_size: tuple[int, int], group_size: int
    ) -> InvertedResidual:
        if self.block == "e2gc":
            return E2GCInvertedResidual(inp, oup, stride, t, group_size=group_size)
        if self.block == "tvconv":
            return TVConvInvertedResidual(inp, oup, stride, t, out_size=out_size)
        return InvertedResidual(inp, oup, stride, t)

    def _init_weights(self) -> None:
        """torchvision's init: Kaiming-normal (fan_out) convs, BN (1, 0), linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 3, H, W) -> (B, last_channel, H/32, W/32); H/8 with cifar_stem
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, last_channel)
        return self.classifier(x)  # (B, num_classes)
