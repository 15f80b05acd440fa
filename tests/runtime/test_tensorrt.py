"""TensorRT backend. Tests marked ``tensorrt`` need TensorRT and an NVIDIA GPU (skipped on CI with the
reason); the missing-dependency behaviour is tested everywhere."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.errors import BadInputError, MissingDependencyError
from edgecompress.export.onnx import export_onnx
from edgecompress.runtime.backend_tensorrt import TrtBuildConfig, build_engine, load_plan
from edgecompress.runtime.bundle import compile_bundle, load_bundle
from edgecompress.runtime.engine import EngineOptions, load_engine, runtimes


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval()
    path = tmp_path_factory.mktemp("trt") / "m.onnx"
    export_onnx(model, torch.randn(1, 3, 16, 16), path)
    return path


def test_tensorrt_is_registered_and_config_is_validated():
    assert "tensorrt" in runtimes()
    with pytest.raises(ValueError, match="precision"):
        TrtBuildConfig(precision="int4")
    with pytest.raises(ValueError, match="max_batch"):
        TrtBuildConfig(batch=16, max_batch=8)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_error(onnx_file):
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        load_engine(onnx_file, "tensorrt")


@pytest.mark.tensorrt
def test_fp32_engine_matches_onnxruntime_with_dynamic_batch(onnx_file):
    engine = load_engine(onnx_file, "tensorrt", EngineOptions(extra={"max_batch": 4}))
    assert engine.info["parity"]["max_rel_error"] <= 1e-3
    ort = load_engine(onnx_file)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(engine.run(x)[0], ort.run(x)[0], rtol=1e-3, atol=1e-3)
    samples = engine.measure({"input": x}, warmup=2, repeats=5)
    assert len(samples) == 5 and all(s > 0 for s in samples)
    assert engine.settings()["timer"] == "CUDA events"


@pytest.mark.tensorrt
def test_plan_round_trip_and_bundle(onnx_file, tmp_path):
    plan = tmp_path / "m.plan"
    engine = build_engine(onnx_file, TrtBuildConfig(), plan_path=plan)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(load_plan(plan).run(x)[0], engine.run(x)[0])
    bundle = compile_bundle(onnx_file, "tensorrt", "host", tmp_path / "b")
    np.testing.assert_allclose(load_bundle(bundle).run(x)[0], engine.run(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.tensorrt
def test_fp16_engine(onnx_file):
    import tensorrt as trt

    if int(trt.__version__.split(".")[0]) >= 11:
        with pytest.raises(BadInputError, match="FP16 ONNX"):
            build_engine(onnx_file, TrtBuildConfig(precision="fp16"))
    else:
        engine = build_engine(onnx_file, TrtBuildConfig(precision="fp16"))
        assert engine.info["parity"]["max_rel_error"] <= 5e-2


@pytest.mark.tensorrt
def test_int8_needs_explicit_qdq(onnx_file):
    with pytest.raises(BadInputError, match="QuantizeLinear/DequantizeLinear"):
        build_engine(onnx_file, TrtBuildConfig(precision="int8"))
