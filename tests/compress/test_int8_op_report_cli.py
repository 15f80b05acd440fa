"""Operator friendliness report and the ``edgecompress quantize`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.compress.int8.op_report import layer_configs, op_quant_friendliness, write_op_report
from edgecompress.errors import BadInputError


class _TwoBlocks(nn.Module):
    """Two identical conv-relu blocks (one config, count 2), a depthwise conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.dw(self.b(self.a(x)))
        return self.fc(x.mean((2, 3)))


def test_layer_configs_deduplicate_and_count(tmp_path):
    import onnx

    from edgecompress.export.onnx import export_onnx

    export_onnx(_TwoBlocks().eval(), torch.randn(1, 8, 16, 16), tmp_path / "m.onnx", dynamic_batch=False)
    rows = layer_configs(onnx.load(str(tmp_path / "m.onnx")))
    conv = [r for r in rows if r["op_type"] == "Conv"]
    assert len(conv) == 2 and len(rows) == 3
    dense = next(r for r in conv if r["groups"] == 1)
    assert dense["count"] == 2 and dense["activation"] == "Relu" and dense["input_hw"] == [16, 16]
    dw = next(r for r in conv if r["groups"] == 8)
    assert dw["count"] == 1 and dw["stride"] == [2, 2] and dw["activation"] is None
    gemm = next(r for r in rows if r["op_type"] == "Gemm")
    assert (gemm["in_channels"], gemm["out_channels"]) == (8, 4)


def test_op_report_measures_each_config_and_writes_tables(tmp_path):
    rows = op_quant_friendliness(_TwoBlocks().eval(), torch.randn(1, 8, 16, 16), repeats=3, rounds=1)
    assert len(rows) == 3
    for r in rows:
        assert r["source"] == "measured" and r["engine"] == "onnxruntime" and r["int8"] is True
        assert r["fp32_ms"]["min"] > 0 and r["int8_ms"]["min"] > 0
        assert r["speedup"] == pytest.approx(r["fp32_ms"]["median"] / r["int8_ms"]["median"])
    path = write_op_report(rows, tmp_path / "rep")
    assert json.loads(path.read_text())["rows"][0]["count"] == rows[0]["count"]
    md = (tmp_path / "rep" / "op_report.md").read_text()
    assert "Conv 3x3 g1 8->8 s1 @16x16 +Relu | 2 | yes" in md and "Gemm 8->4" in md


def test_op_report_rejects_unsupported_engine_and_empty_model():
    with pytest.raises(BadInputError, match="engine='tvm'"):
        op_quant_friendliness(_TwoBlocks(), torch.randn(1, 8, 16, 16), engine="tvm")
    with pytest.raises(BadInputError, match="no Conv/Gemm"):
        op_quant_friendliness(nn.Sequential(nn.ReLU()), torch.randn(1, 8, 4, 4))


def test_cli_quantize_writes_int8_model_and_report(tmp_path, capsys):
    from edgecompress.cli import main

    rng = np.random.default_rng(0)
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=rng.standard_normal((80, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 80))
    out = tmp_path / "out"
    code = main(["quantize", "--model", "zoo:mobilenetv2_cifar_tiny", "--calib", str(npz), "--calibration-samples",
                 "32", "--max-accuracy-drop", "none", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert (out / "model_int8.onnx").is_file() and (out / "model_fp32.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["placement"]["int8_layers"] == report["placement"]["layers"]
    assert "Conv/Gemm layers run in INT8" in text and "SQNR" in text


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from edgecompress.cli import main

    npz = tmp_path / "calib.npz"
    np.savez(npz, x=np.zeros((8, 1, 28, 28), np.float32), y=np.zeros(8, np.int64))
    code = main(["quantize", "--model", "zoo:mobilenetv2_cifar_tiny", "--calib", str(npz), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "do not fit the model" in err and len(err.strip().splitlines()) == 1
