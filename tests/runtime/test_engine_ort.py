import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.errors import BadInputError, MissingDependencyError
from edgecompress.export.onnx import export_onnx
from edgecompress.runtime.engine import EngineOptions, load_engine, runtimes


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    path = tmp_path_factory.mktemp("ort") / "m.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    return path, model


def test_onnxruntime_is_registered():
    assert "onnxruntime" in runtimes()


def test_engine_runs_and_matches_torch(onnx_file):
    path, model = onnx_file
    engine = load_engine(path, "onnxruntime", EngineOptions(threads=1))
    assert engine.inputs[0].name == "input" and engine.inputs[0].shape[1:] == (3, 8, 8)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    (y,) = engine.run({"input": x})
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert engine.settings()["threads"] == 1


def test_wrong_shape_dtype_and_name_are_named(onnx_file):
    engine = load_engine(onnx_file[0])
    with pytest.raises(BadInputError, match=r"input 'input': shape \(1, 3, 9, 8\)"):
        engine.run(np.zeros((1, 3, 9, 8), np.float32))
    with pytest.raises(BadInputError, match="dtype float64"):
        engine.run(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(BadInputError, match="input names"):
        engine.run({"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_missing_provider_is_an_error_not_a_fallback(onnx_file):
    with pytest.raises(MissingDependencyError, match="CUDAExecutionProvider"):
        load_engine(onnx_file[0], "onnxruntime", EngineOptions(providers=("CUDAExecutionProvider",)))


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(BadInputError, match="bad.onnx"):
        load_engine(bad)
    with pytest.raises(BadInputError, match="no such ONNX file"):
        load_engine(tmp_path / "none.onnx")


def test_unknown_runtime(onnx_file):
    with pytest.raises(BadInputError, match="unknown runtime 'onnxrt'; did you mean onnxruntime"):
        load_engine(onnx_file[0], "onnxrt")
