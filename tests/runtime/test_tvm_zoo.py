"""Every zoo model compiles with TVM for the host and matches onnxruntime within 1e-4 (relative)."""

import pytest
import torch

from edgecompress.export.onnx import export_onnx
from edgecompress.nas import zoo
from edgecompress.runtime.backend_tvm import TvmCompileConfig, build_engine

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm", reason="apache-tvm is not installed")
TINY = [n for n in zoo.names() if n.endswith("_tiny")]
FULL = [n for n in zoo.names() if not n.endswith("_tiny")]


def _check(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, torch.randn(1, *model.input_size), path)
    engine, build = build_engine(path, TvmCompileConfig(rtol=1e-4), threads=2)
    assert build.report["parity"]["max_rel_error"] <= 1e-4
    assert engine.outputs[0].shape == (1, 10)


def test_zoo_has_tiny_models():
    assert len(TINY) >= 5


@pytest.mark.parametrize("name", TINY)
def test_tiny_zoo_model_compiles_and_matches(name, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    _check(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_zoo_model_compiles_and_matches(name, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    _check(name, tmp_path)
