"""INT8 PTQ/QAT through the API: placement verified per runtime, checks reported, bad input rejected."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.compress.int8 import Int8Config
from edgecompress.compress.int8.api import quantize, run_onnx
from edgecompress.compress.int8.placement import verify_onnxruntime
from edgecompress.errors import BadInputError, CheckFailedError
from edgecompress.nas import zoo

NO_FLOORS = {"min_sqnr_db": None, "max_accuracy_drop": None}


def _loader(n: int = 96, shape=(3, 32, 32), seed: int = 0, batch: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zoo.create("mobilenetv2_cifar_tiny", num_classes=10).eval()


@pytest.fixture(scope="module")
def ptq(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptq") / "tiny_int8.onnx"
    return quantize(tiny, _loader(), Int8Config(calibration_samples=64, max_accuracy_drop=None), output=out,
                    eval_data=_loader(64, seed=1))


def test_ptq_onnxruntime_runs_every_layer_in_int8(ptq, tiny):
    rep = ptq.report
    assert ptq.model.is_file() and ptq.model.suffix == ".onnx"
    pl = rep["placement"]
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in tiny.modules())
    assert pl["layers"] == n_layers and pl["int8_layers"] == n_layers and pl["float_layer_names"] == []
    assert pl["runtime_ops"].get("QLinearConv", 0) == n_layers - 1 and "Conv" not in pl["runtime_ops"]
    assert pl["runtime_ops"].get("QLinearAdd", 0) >= 1  # residual adds stay INT8
    ch = rep["checks"]
    assert ch["samples"] == 64 and ch["data"] == "eval_data"
    assert ch["sqnr_db"] > 15.0 and ch["top1_agreement"] > 0.8
    assert "fused INT8 kernels" in ch["engine"]
    assert rep["calibration"] == {"method": "minmax", "samples": 64}


def test_int8_file_matches_report_and_fp32_reference(ptq):
    x = _loader(64, seed=1).dataset.tensors[0].numpy()
    ref = run_onnx(ptq.report["fp32"]["path"], x)
    out = run_onnx(ptq.model, x)
    from edgecompress.compress.int8.checks import sqnr_db

    assert sqnr_db(ref, out) == pytest.approx(ptq.report["checks"]["sqnr_db"], rel=1e-6)


def test_verifier_reports_float_layers_by_name(ptq):
    # the FP32 file through the same verifier: nothing runs in INT8, and every layer is named
    fp32 = ptq.report["fp32"]["path"]
    rep = verify_onnxruntime(fp32, fp32)
    assert rep["int8_layers"] == 0 and rep["float_layers"] == rep["layers"] > 0
    names = {n.name for n in onnx.load(fp32).graph.node if n.op_type in ("Conv", "Gemm")}
    assert set(rep["float_layer_names"]) == names


def test_tensorrt_placement_is_explicit_symmetric_qdq(tiny, tmp_path):
    res = quantize(tiny, _loader(), Int8Config(target_runtime="tensorrt", calibration_samples=32, **NO_FLOORS),
                   output=tmp_path / "trt.onnx")
    model = onnx.load(str(res.model))
    ops = {n.op_type for n in model.graph.node}
    assert not any(o.startswith("QLinear") for o in ops) and "Conv" in ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    pl = res.report["placement"]
    assert pl["int8_layers"] == pl["layers"] and pl["reduce_range"] is False
    assert "reference semantics" in res.report["checks"]["engine"]


def test_sqnr_floor_raises_and_leaves_no_file(tiny, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(CheckFailedError, match="below the floor"):
        quantize(tiny, _loader(32), Int8Config(calibration_samples=32, min_sqnr_db=200.0, max_accuracy_drop=None),
                 output=out)
    assert list(tmp_path.iterdir()) == []


def test_no_quantizable_layer(tmp_path):
    model = nn.Sequential(nn.ReLU(), nn.Flatten())
    with pytest.raises(BadInputError, match="no quantizable layer"):
        quantize(model, _loader(8, batch=8), Int8Config(**NO_FLOORS), output=tmp_path / "m.onnx")


def test_calibration_shape_mismatch_names_the_input(ptq, tmp_path):
    with pytest.raises(BadInputError, match=r"\(1, 28, 28\).*'input'"):
        quantize(ptq.report["fp32"]["path"], _loader(8, shape=(1, 28, 28)), Int8Config(**NO_FLOORS),
                 output=tmp_path / "m.onnx")


def test_eval_data_shape_mismatch(tiny, tmp_path):
    with pytest.raises(BadInputError, match="model input 'input'"):
        quantize(tiny, _loader(8), Int8Config(**NO_FLOORS), output=tmp_path / "m.onnx",
                 eval_data=_loader(8, shape=(3, 16, 16)))


def test_calibration_shape_mismatch_for_torch_model(tiny, tmp_path):
    with pytest.raises(BadInputError, match="do not fit the model"):
        quantize(tiny, _loader(8, shape=(5, 32, 32)), Int8Config(**NO_FLOORS), output=tmp_path / "m.onnx")


def test_calibration_dtype_mismatch(tiny, tmp_path):
    x = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(BadInputError, match="uint8.*float32"):
        quantize(tiny, x, Int8Config(**NO_FLOORS), output=tmp_path / "m.onnx")


def test_empty_loader(tiny, tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(BadInputError, match="empty"):
        quantize(tiny, empty, Int8Config(**NO_FLOORS), output=tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="empty"):
        quantize(tiny, empty, Int8Config(method="qat", **NO_FLOORS), output=tmp_path / "m.onnx")


def test_qat_needs_a_torch_model_and_labels(ptq, tiny, tmp_path):
    with pytest.raises(BadInputError, match="nn.Module"):
        quantize(ptq.report["fp32"]["path"], _loader(8), Int8Config(method="qat"), output=tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="labelled"):
        quantize(tiny, [torch.randn(4, 3, 32, 32)], Int8Config(method="qat"), output=tmp_path / "m.onnx")


def test_qat_fine_tunes_and_exports_the_same_int8_form(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    res = quantize(tiny, _loader(64), Int8Config(method="qat", qat_epochs=1, calibration_samples=64, **NO_FLOORS),
                   output=tmp_path / "qat.onnx")
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # input model untouched
    q = res.report["qat"]
    assert q["fake_quant_layers"] == res.report["placement"]["layers"] and len(q["train_loss"]) == 1
    assert "folded" in q["batch_norm"]
    assert res.report["placement"]["int8_layers"] == res.report["placement"]["layers"]
    assert res.report["checks"]["reference"].startswith("the original FP32")
    assert np.isfinite(res.report["checks"]["sqnr_db"])


def test_layer_onnxruntime_cannot_run_in_int8_is_named_not_counted(tmp_path):
    # onnxruntime's CPU provider has no INT8 ConvTranspose: it must show up as a float layer and a warning
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, stride=2),
                          nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with pytest.warns(UserWarning, match="1 of 3 layers do not run in INT8 on onnxruntime.*ConvTranspose"):
        res = quantize(model, torch.randn(16, 3, 16, 16), Int8Config(**NO_FLOORS), output=tmp_path / "ct.onnx")
    pl = res.report["placement"]
    assert (pl["layers"], pl["int8_layers"], pl["float_layers"]) == (3, 2, 1)
    assert pl["float_layer_names"] == ["/2/ConvTranspose"]
    assert pl["runtime_ops"]["ConvTranspose"] == 1


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_with_a_short_last_batch(tiny, tmp_path, method):
    # 45 samples in batches of 32: onnxruntime's histogram collectors cannot stack a short last batch
    res = quantize(tiny, _loader(45), Int8Config(calibration=method, **NO_FLOORS), output=tmp_path / "m_int8.onnx")
    assert res.report["calibration"] == {"method": method, "samples": 45}
    assert res.report["placement"]["float_layers"] == 0
