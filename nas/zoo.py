"""The model zoo: one registry of named model builders, with their default input size.

Every builder takes ``num_classes`` plus keyword-only options; ``create`` rejects options a builder
does not have, naming them, and the model constructors reject bad values with a ``ValueError``
naming the option. Every model carries ``model.input_size`` = (C, H, W), the size it is built for.
The ``*_tiny`` models (``ModelInfo.tiny``) run a (2, 3, 32, 32) forward in milliseconds; they exist
for tests, like timm's ``test_*`` models.

>>> import torch
>>> model = create("resnet_cifar_tiny", num_classes=10)
>>> model(torch.zeros(2, *info("resnet_cifar_tiny").input_size)).shape
torch.Size([2, 10])
>>> "mobilenetv2" in names()
True

Other modules add models with ``@register_model(name, family=..., input_size=(3, H, W))`` on a
builder ``(num_classes: int, *, option=default, ...) -> nn.Module``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from edgecompress.errors import BadInputError
from edgecompress.nas.mobilenetv2 import MobileNetV2
from edgecompress.nas.resnet import resnet18 as _resnet18
from edgecompress.nas.resnet import resnet_cifar
from edgecompress.nas.vgg import VGG, vgg
from edgecompress.registry import Registry

#: ``builder(num_classes, *, option=default, ...) -> nn.Module``
ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about a model without building it."""

    name: str
    family: str
    input_size: tuple[int, int, int]  # (C, H, W) the model is built for
    description: str
    tiny: bool = False


@dataclass(frozen=True)
class ModelEntry:
    info: ModelInfo
    builder: ModelBuilder


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str, *, family: str, input_size: tuple[int, int, int], description: str = "", tiny: bool = False
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes, *, options...) -> nn.Module`` under ``name``.

    ``description`` defaults to the first line of the builder's docstring.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        text = description or (inspect.getdoc(builder) or "").split("\n")[0]
        MODELS.add(name, ModelEntry(ModelInfo(name, family, tuple(input_size), text, tiny), builder))
        return builder

    return decorator


def names() -> list[str]:
    """All registered model names, sorted."""
    return MODELS.names()


def info(name: str) -> ModelInfo:
    """The ``ModelInfo`` of ``name``; ``BadInputError`` for an unknown name."""
    return MODELS.get(name).info


def options(name: str) -> dict[str, object]:
    """The options ``create(name, ...)`` accepts besides ``num_classes``, with their defaults."""
    params = inspect.signature(MODELS.get(name).builder).parameters
    return {p.name: p.default for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def create(name: str, num_classes: int = 10, **options_: object) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs and the given options.

    Raises ``BadInputError`` (a ``ValueError``) for an unknown name or option, ``ValueError``
    naming the option for a bad value.
    """
    entry = MODELS.get(name)
    known = options(name)
    for key in options_:
        if key not in known:
            raise BadInputError(f"model {name!r} has no option {key!r} (options: {', '.join(known) or 'none'})")
    model = entry.builder(num_classes, **options_)
    if not hasattr(model, "input_size"):
        model.input_size = entry.info.input_size
    return model


# ---- MobileNetV2 ---------------------------------------------------------------------------------

#: A short table for the tiny variants: with width 0.25 it gives stem 8, stages 8, 8 (x2), 16.
TINY_STAGES = ((1, 16, 1, 1), (4, 32, 2, 2), (4, 64, 1, 2))
CIFAR = (3, 32, 32)


@register_model("mobilenetv2", family="mobilenetv2", input_size=(3, 224, 224))
def mobilenetv2(num_classes: int, *, width_mult: float = 1.0, input_size: int = 224, dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 as in the paper (ImageNet, 224 x 224, stem stride 2), width multiplier."""
    return MobileNetV2(num_classes, width_mult, False, "irb", input_size, dropout)


@register_model("mobilenetv2_cifar", family="mobilenetv2", input_size=CIFAR)
def mobilenetv2_cifar(num_classes: int, *, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 for 32 x 32: stem stride 1 and second stage stride 1 (4 x 4 at the end)."""
    return MobileNetV2(num_classes, width_mult, True, "irb", 32, dropout)


@register_model("mobilenetv2_e2gc_cifar", family="mobilenetv2", input_size=CIFAR)
def mobilenetv2_e2gc_cifar(
    num_classes: int, *, width_mult: float = 1.0, group_size: int = 8, dropout: float = 0.2
) -> nn.Module:
    """CIFAR MobileNetV2 whose depthwise convs are E2GC grouped convs of constant group size."""
    return MobileNetV2(num_classes, width_mult, True, "e2gc", 32, dropout, group_size=group_size)


@register_model("mobilenetv2_tvconv_cifar", family="mobilenetv2", input_size=CIFAR)
def mobilenetv2_tvconv_cifar(num_classes: int, *, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """CIFAR MobileNetV2 whose depthwise convs are TVConv (fixed 32 x 32 input)."""
    return MobileNetV2(num_classes, width_mult, True, "tvconv", 32, dropout)


@register_model("mobilenetv2_cifar_tiny", family="mobilenetv2", input_size=CIFAR, tiny=True)
def mobilenetv2_cifar_tiny(num_classes: int) -> nn.Module:
    """Tiny CIFAR MobileNetV2 for tests: width 0.25, three short stages, last conv 64."""
    return MobileNetV2(num_classes, 0.25, True, "irb", 32, 0.2, TINY_STAGES, last_channel=64)


@register_model("mobilenetv2_e2gc_cifar_tiny", family="mobilenetv2", input_size=CIFAR, tiny=True)
def mobilenetv2_e2gc_cifar_tiny(num_classes: int, *, group_size: int = 4) -> nn.Module:
    """Tiny CIFAR MobileNetV2 with E2GC blocks (group size 4) for tests."""
    return MobileNetV2(num_classes, 0.25, True, "e2gc", 32, 0.2, TINY_STAGES, group_size, 64)


@register_model("mobilenetv2_tvconv_cifar_tiny", family="mobilenetv2", input_size=CIFAR, tiny=True)
def mobilenetv2_tvconv_cifar_tiny(num_classes: int) -> nn.Module:
    """Tiny CIFAR MobileNetV2 with TVConv blocks (fixed 32 x 32 input) for tests."""
    return MobileNetV2(num_classes, 0.25, True, "tvconv", 32, 0.2, TINY_STAGES, last_channel=64)


# ---- ResNet --------------------------------------------------------------------------------------


@register_model("resnet20", family="resnet", input_size=CIFAR)
def resnet20(num_classes: int, *, base_width: int = 16) -> nn.Module:
    """CIFAR ResNet-20 (3 x 3 BasicBlocks, 16/32/64, option-B shortcuts), 0.27M parameters."""
    return resnet_cifar(20, num_classes, base_width)


@register_model("resnet56", family="resnet", input_size=CIFAR)
def resnet56(num_classes: int, *, base_width: int = 16) -> nn.Module:
    """CIFAR ResNet-56 (3 x 9 BasicBlocks, 16/32/64, option-B shortcuts), 0.86M parameters."""
    return resnet_cifar(56, num_classes, base_width)


@register_model("resnet18", family="resnet", input_size=(3, 224, 224))
def resnet18(num_classes: int) -> nn.Module:
    """ResNet-18, ImageNet style (7x7 stride-2 stem, max pool), 64/128/256/512."""
    return _resnet18(num_classes, cifar_stem=False)


@register_model("resnet18_cifar", family="resnet", input_size=CIFAR)
def resnet18_cifar(num_classes: int) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no max pool, for 32 x 32 inputs."""
    return _resnet18(num_classes, cifar_stem=True)


@register_model("resnet_cifar_tiny", family="resnet", input_size=CIFAR, tiny=True)
def resnet_cifar_tiny(num_classes: int) -> nn.Module:
    """Tiny CIFAR ResNet-8 for tests: one BasicBlock per stage, widths 8/16/32."""
    return resnet_cifar(8, num_classes, base_width=8)


# ---- VGG -----------------------------------------------------------------------------------------


@register_model("vgg11_bn", family="vgg", input_size=CIFAR)
def vgg11_bn(num_classes: int, *, dropout: float = 0.0) -> nn.Module:
    """VGG-11 with batch norm and a global-average-pool + linear head (32 x 32 or 224 x 224)."""
    return vgg("vgg11", num_classes, 32, dropout)


@register_model("vgg16_bn", family="vgg", input_size=CIFAR)
def vgg16_bn(num_classes: int, *, dropout: float = 0.0) -> nn.Module:
    """VGG-16 with batch norm and a global-average-pool + linear head (32 x 32 or 224 x 224)."""
    return vgg("vgg16", num_classes, 32, dropout)


@register_model("vgg_tiny", family="vgg", input_size=CIFAR, tiny=True)
def vgg_tiny(num_classes: int) -> nn.Module:
    """Tiny VGG for tests: conv widths 8, 16, 32, 32 with three max pools."""
    return VGG((8, "M", 16, "M", 32, 32, "M"), num_classes, 32)
