"""The model zoo: names, options, forward on every model, parameter counts, TVConv export."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import BadInputError
from edgecompress.nas import zoo

REQUIRED = [
    "mobilenetv2", "mobilenetv2_cifar", "mobilenetv2_e2gc_cifar", "mobilenetv2_tvconv_cifar",
    "resnet20", "resnet56", "resnet18", "resnet18_cifar", "vgg11_bn", "vgg16_bn",
    "mobilenetv2_cifar_tiny", "mobilenetv2_e2gc_cifar_tiny", "mobilenetv2_tvconv_cifar_tiny",
    "resnet_cifar_tiny", "vgg_tiny",
]  # fmt: skip


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_required_models_are_registered_with_info() -> None:
    assert set(REQUIRED) <= set(zoo.names())
    assert zoo.names() == sorted(zoo.names())
    assert zoo.info("mobilenetv2").input_size == (3, 224, 224)
    assert zoo.info("resnet18").input_size == (3, 224, 224)
    assert zoo.info("vgg16_bn").input_size == (3, 32, 32)
    for name in zoo.names():
        info = zoo.info(name)
        assert info.name == name and info.description and info.family in {"mobilenetv2", "resnet", "vgg"}
        assert info.tiny == name.endswith("_tiny")
    assert {zoo.info(n).family for n in zoo.names() if zoo.info(n).tiny} == {"mobilenetv2", "resnet", "vgg"}


@pytest.mark.parametrize("name", zoo.names())
def test_every_model_runs_forward_on_its_input_size(name: str) -> None:
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=7).eval()
    info = zoo.info(name)
    assert model.input_size == info.input_size
    batch = 1 if info.input_size[1] > 64 else 2
    with torch.no_grad():
        y = model(torch.randn(batch, *info.input_size))
    assert y.shape == (batch, 7) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", [n for n in zoo.names() if zoo.info(n).tiny])
def test_tiny_models_are_tiny(name: str) -> None:
    model = zoo.create(name)
    # the TVConv one carries its weight-generating blocks (LayerNorm over [16, 32, 32]); 0 at inference
    assert n_params(model) < (300_000 if "tvconv" in name else 30_000)
    assert model.input_size == (3, 32, 32)


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [
        ("mobilenetv2", 1000, 3_504_872),  # torchvision mobilenet_v2
        # 3 * 16 * 9 stem + 9 BasicBlocks + 16*32 and 32*64 1x1 option-B shortcuts (+ their BN) + fc:
        # 272,474; the paper's 0.27M with parameter-free option-A shortcuts would be 269,722
        ("resnet20", 10, 272_474),
        ("resnet56", 10, 855_770),
        ("resnet18", 1000, 11_689_512),  # torchvision resnet18
        ("resnet18_cifar", 10, 11_173_962),
    ],
)
def test_parameter_counts(name: str, num_classes: int, expected: int) -> None:
    assert n_params(zoo.create(name, num_classes=num_classes)) == expected


def test_create_rejects_unknown_names_and_options() -> None:
    with pytest.raises(BadInputError, match="mobilenetv3"):
        zoo.create("mobilenetv3")
    with pytest.raises(BadInputError, match="width"):
        zoo.create("resnet20", width=2)
    with pytest.raises(ValueError, match="width_mult"):
        zoo.create("mobilenetv2_cifar", width_mult=-1.0)
    with pytest.raises(ValueError, match="group_size"):
        zoo.create("mobilenetv2_e2gc_cifar_tiny", group_size=3)
    assert zoo.options("mobilenetv2_e2gc_cifar")["group_size"] == 8


def test_create_passes_options() -> None:
    model = zoo.create("mobilenetv2", num_classes=10, width_mult=0.5, input_size=160)
    assert model.features[0][0].out_channels == 16 and model.input_size == (3, 160, 160)
    e2gc = zoo.create("mobilenetv2_e2gc_cifar_tiny", group_size=8)
    assert {m.group_size for m in e2gc.modules() if hasattr(m, "group_size") and isinstance(m, nn.Conv2d)} == {8}


def test_tvconv_tiny_exports_without_generating_block() -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = zoo.create("mobilenetv2_tvconv_cifar_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    torch.onnx.export(model, x, buffer, opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    ops = {node.op_type for node in graph.node}
    assert "LayerNormalization" not in ops and "ReduceMean" not in ops
    assert not any("weight_block" in init.name or "affinity" in init.name for init in graph.initializer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        y = model(x).numpy()
    assert np.abs(y_onnx - y).max() <= 1e-4 * np.abs(y).max()
