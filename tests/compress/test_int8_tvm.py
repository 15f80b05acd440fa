"""The same Q/DQ file loads in TVM Relax (0.27 ``from_onnx``) and matches onnxruntime's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.tvm


def test_qdq_file_loads_in_tvm_relax_and_matches_onnxruntime(tmp_path):
    tvm = pytest.importorskip("tvm")
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgecompress.compress.int8 import Int8Config
    from edgecompress.compress.int8.api import quantize, run_onnx
    from edgecompress.compress.int8.checks import sqnr_db
    from edgecompress.nas import zoo

    model = zoo.create("mobilenetv2_cifar_tiny", num_classes=10).eval()
    calib = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = quantize(model, calib, Int8Config(target_runtime="tvm", min_sqnr_db=None, max_accuracy_drop=None),
                   output=tmp_path / "tvm_int8.onnx")
    pl = res.report["placement"]
    # TVM 0.27 imports Q/DQ as quantize/dequantize around float conv2d: reported as float, never as INT8
    assert pl["layers"] == 14 and pl["int8_layers"] == 0 and pl["warning"]
    assert pl["runtime_ops"]["R.dequantize"] > 0 and pl["runtime_ops"]["R.quantize"] > 0

    x = calib[:1].numpy()
    mod = from_onnx(onnx.load(str(res.model)), shape_dict={"input": [1, 3, 32, 32]})
    mod = relax.transform.DecomposeOpsForInference()(mod)
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()  # one output: a tvm Tensor
    ref = run_onnx(res.model, x, optimize=False)  # ONNX Q/DQ reference semantics
    assert got.shape == ref.shape
    assert sqnr_db(ref, got) > 30.0
    assert np.argmax(got, 1).tolist() == np.argmax(ref, 1).tolist()
