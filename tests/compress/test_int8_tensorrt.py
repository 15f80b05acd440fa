"""The TensorRT placement's explicit Q/DQ file builds into a TensorRT engine (needs a GPU; CI skips it)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


def test_explicit_qdq_file_builds_a_tensorrt_engine(tmp_path):
    trt = pytest.importorskip("tensorrt")

    from edgecompress.compress.int8 import Int8Config
    from edgecompress.compress.int8.api import quantize
    from edgecompress.nas import zoo

    model = zoo.create("mobilenetv2_cifar_tiny", num_classes=10).eval()
    calib = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = quantize(model, calib, Int8Config(target_runtime="tensorrt", min_sqnr_db=None, max_accuracy_drop=None),
                   output=tmp_path / "trt_int8.onnx")
    assert res.report["placement"]["int8_layers"] == res.report["placement"]["layers"]

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(res.model)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "INT8"):  # TensorRT 10 still has the flag; 11 reads precision from Q/DQ only
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None and engine.nbytes > 0
    qdq = [network.get_layer(i).type for i in range(network.num_layers)]
    assert trt.LayerType.QUANTIZE in qdq and trt.LayerType.DEQUANTIZE in qdq
