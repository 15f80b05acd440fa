"""Every registered zoo model exports to ONNX and matches torch in onnxruntime within 1e-4."""

import pytest
import torch

from edgecompress.export.onnx import export_onnx
from edgecompress.nas import zoo

FULL_SIZE = {"mobilenetv2", "resnet18", "vgg16_bn", "vgg11_bn", "resnet56"}


@pytest.mark.parametrize("name", zoo.names())
def test_every_zoo_model_exports_with_parity(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10).eval()
    x = torch.randn(1, *model.input_size)
    report = export_onnx(model, x, tmp_path / f"{name}.onnx", random_checks=1 if name in FULL_SIZE else 2)
    assert report.max_rel_error <= 1e-4
    assert all(p["max_rel_error"] <= 1e-4 for p in report.parity)
