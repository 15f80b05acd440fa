"""The per-layer roofline: MACs and bytes from ONNX, max of compute and memory, calibration, labels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.devices.estimate import (
    Calibration,
    LayerCost,
    calibration_for,
    estimate_energy,
    fit_calibration,
    layer_costs,
    layer_times_s,
    predict_for_device,
    predict_latency,
)
from edgecompress.devices.profiles import load_profile


def _conv_model(groups: int = 1) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros((8, 4 // groups, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.zeros((8 * 6 * 6, 10), np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=groups),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], [w, fc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layer_costs_count_macs_and_bytes_and_fuse_the_activation():
    costs = layer_costs(_conv_model(), batch=2)
    assert [c.op_type for c in costs] == ["Conv", "Flatten", "MatMul"]  # Relu fused into the Conv
    conv, _, mm = costs
    assert conv.macs == 2 * 8 * 6 * 6 * 4 * 3 * 3
    assert conv.weight_bytes == 8 * 4 * 9 * 4 and conv.params == 8 * 4 * 9
    assert conv.bytes_moved == 4 * (2 * 4 * 8 * 8 + 8 * 4 * 9 + 2 * 8 * 6 * 6)
    assert mm.macs == 2 * 10 * 288
    grouped = layer_costs(_conv_model(groups=2))[0]
    assert grouped.macs == 8 * 6 * 6 * 2 * 9


def test_roofline_takes_the_slower_term_per_layer_and_sums_layers():
    costs = [LayerCost("a", "Conv", macs=10**9, bytes_moved=10**6),  # compute: 2e9 / 100e9 = 20 ms
             LayerCost("b", "Add", macs=0, bytes_moved=10**8)]  # memory: 1e8 / 10e9 = 10 ms
    t = layer_times_s(costs, 100.0, 10.0)
    assert t[0, 2] == pytest.approx(0.02) and t[1, 2] == pytest.approx(0.01)
    pred = predict_latency(costs, 100.0, 10.0, Calibration(node_us=5.0))
    assert pred["source"] == "predicted" and pred["latency_ms"] == pytest.approx(30.01)
    assert [layer["bound"] for layer in pred["layers"]] == ["compute", "memory"]


def test_fit_recovers_known_efficiencies():
    rng = np.random.default_rng(0)
    models = [[LayerCost(f"l{j}", "Conv", int(rng.integers(1e5, 1e8)), int(rng.integers(1e4, 1e7)))
               for j in range(int(rng.integers(3, 30)))] for _ in range(8)]
    models += [[LayerCost("small", "Conv", 10**4, 10**3)], [LayerCost("s", "Conv", 10**4, 10**3)] * 3]
    truth = Calibration(eta_c=0.3, eta_m=2.0, eta_d=1.0, node_us=4.0, call_us=30.0)
    measured = [predict_latency(m, 50.0, 10.0, truth)["latency_ms"] for m in models]
    cal = fit_calibration(models, measured, 50.0, 10.0)
    predicted = [predict_latency(m, 50.0, 10.0, cal)["latency_ms"] for m in models]
    assert np.max(np.abs(np.array(predicted) / measured - 1)) < 0.08
    assert cal.source == "measured" and cal.eta_c == pytest.approx(0.3, rel=0.2)
    # the two tiny models (1 and 3 nodes) separate the per-inference call from the per-node overhead
    assert cal.call_us == pytest.approx(30.0, rel=0.2) and cal.node_us == pytest.approx(4.0, rel=0.3)
    assert cal.eta_m >= 1.0  # in cache, never slower than the DRAM copy bandwidth


def test_call_overhead_is_paid_once_per_inference():
    costs = [LayerCost("a", "Conv", macs=0, bytes_moved=0)] * 3
    pred = predict_latency(costs, 100.0, 10.0, Calibration(node_us=5.0, call_us=20.0))
    assert pred["latency_ms"] == pytest.approx(0.035) and pred["call_ms"] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="call_us"):
        Calibration(call_us=-1.0)


def test_energy_is_labelled_estimated():
    e = estimate_energy(0.010, 7.2, 2.7)
    assert e["source"] == "estimated" and e["joules_per_inference"] == pytest.approx(0.072)
    assert "7.2 W" in e["formula"]


def test_prediction_for_a_board_transfers_the_host_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    host = load_profile("host", measure_host=False)
    rpi4 = load_profile("rpi4")
    assert calibration_for(rpi4, host).source in ("uncalibrated", "transferred")
    from edgecompress.devices.estimate import save_calibration

    save_calibration("host", Calibration(0.5, 2.0, 1.0, 3.0, 0.0, "measured", "test fit"))
    cal = calibration_for(rpi4, host)
    assert cal.source == "transferred" and "rpi4" in cal.ref and cal.eta_c == 0.5
    out = predict_for_device(_conv_model(), rpi4, host=host)
    assert out["source"] == "predicted" and out["device"] == "rpi4" and out["latency_ms"] > 0
    assert out["energy"]["source"] == "estimated"
    assert out["figure_sources"]["memory_bandwidth_gbs"] == "published measurement"


def test_residual_add_and_relu_fuse_and_grouped_conv_counts_one_call_per_group():
    w = numpy_helper.from_array(np.zeros((4, 4, 1, 1), np.float32), "w")
    wg = numpy_helper.from_array(np.zeros((4, 2, 1, 1), np.float32), "wg")
    wd = numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "wd")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Add", ["c", "x"], ["s"]),  # residual: fused into the Conv
             helper.make_node("Relu", ["s"], ["r"]),  # after the fused Add: fused too
             helper.make_node("Conv", ["r", "wg"], ["g"], group=2),  # grouped: one GEMM per group
             helper.make_node("Conv", ["g", "wd"], ["y"], group=4, pads=[1, 1, 1, 1])]  # depthwise: one call
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, wg, wd])
    costs = layer_costs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(c.op_type, c.dispatches) for c in costs] == [("Conv", 1), ("Conv", 2), ("Conv", 1)]


def test_measured_ratios_scale_a_transferred_prediction(tmp_path, monkeypatch):
    from edgecompress.devices.estimate import measured_ratio, record_ratio

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    rpi4 = load_profile("rpi4")
    before = predict_for_device(_conv_model(), rpi4)
    assert before["calibration"]["source"] == "uncalibrated"
    record_ratio("rpi4", "model-a", measured_ms=4.0, predicted_ms=1.0)
    record_ratio("rpi4", "model-b", measured_ms=1.0, predicted_ms=1.0)
    assert measured_ratio("rpi4") == (pytest.approx(2.0), 2)  # geometric mean of 4 and 1
    after = predict_for_device(_conv_model(), rpi4)
    assert after["calibration"]["source"] == "ratio-calibrated"
    assert "2 measured/predicted" in after["calibration"]["ref"]
    assert after["latency_ms"] == pytest.approx(2.0 * before["latency_ms"])
    assert calibration_for(rpi4, use_ratios=False).source == "uncalibrated"
