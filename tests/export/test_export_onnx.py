import onnx
import pytest
import torch
import torch.nn as nn

from edgecompress.errors import BadInputError, CheckFailedError
from edgecompress.export.onnx import export_onnx, relative_error


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def test_export_checks_parity_and_dynamic_batch(tmp_path):
    path = tmp_path / "m.onnx"
    report = export_onnx(small_net(), torch.randn(1, 3, 16, 16), path)
    assert path.is_file() and report.size_bytes == path.stat().st_size
    assert report.opset == 17 and report.max_rel_error < 1e-5
    assert report.inputs[0]["shape"][0] == "batch"
    assert any("batch 2" in p["case"] for p in report.parity)
    assert onnx.load(str(path)).opset_import[0].version == 17
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary files left


class Drifts(nn.Module):
    """Differs between torch and the exported graph: a python-side counter is baked into the trace."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


def test_export_raises_on_mismatch_and_leaves_nothing(tmp_path):
    with pytest.raises(CheckFailedError, match="output 'output'"):
        export_onnx(Drifts(), torch.randn(1, 4), tmp_path / "d.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_non_tensor_inputs(tmp_path):
    with pytest.raises(BadInputError, match="tensor"):
        export_onnx(small_net(), [1, 2], tmp_path / "x.onnx")


def test_relative_error():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([1.0, 2.2], [1.0, 2.0]) == pytest.approx(0.1)
    assert relative_error([1.0], [1.0, 2.0]) == float("inf")


def test_exported_file_has_normal_permissions(tmp_path):
    import os

    path = tmp_path / "m.onnx"
    export_onnx(small_net(), torch.randn(1, 3, 8, 8), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
