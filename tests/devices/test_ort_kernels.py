"""The kernel model: what onnxruntime runs (from its profiler), priced per kernel class, fitted on
synthetic networks; and its use in predict_for_device and `edgecompress devices --calibrate`."""

from __future__ import annotations

import platform

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.devices import microbench
from edgecompress.devices.estimate import predict_for_device
from edgecompress.devices.ort_kernels import (
    Kernel,
    KernelModel,
    cached_kernel_model,
    fit_kernel_model,
    kernels_from_profile,
    runtime_kernels,
    save_kernel_model,
)
from edgecompress.errors import BadInputError

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _net(path) -> str:
    """conv 3x3 (4->16) + Relu, grouped conv 3x3 (16->16, 4 groups) + Relu, GAP, Flatten, Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (16, 4, 3, 3)), ("w2", (16, 4, 3, 3)), ("fc", (10, 16)), ("b", (10,)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=4, name="gconv"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "b"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.skipif(not X86, reason="onnxruntime's NCHWc layout transformer runs on x86 only")
def test_runtime_kernels_list_what_onnxruntime_runs(tmp_path):
    kernels = runtime_kernels(_net(tmp_path / "m.onnx"))
    kinds = [k.kind for k in kernels]
    assert all(k.measured_us is None for k in kernels)  # the listing run's times are discarded
    dense = next(k for k in kernels if k.kind == "conv")  # the NCHWc conv with its Relu fused in
    assert dense.macs == 16 * 8 * 8 * 4 * 3 * 3
    grouped = next(k for k in kernels if k.kind == "conv_nchw")  # outside NCHWc, with a reorder before it
    assert grouped.groups == 4 and grouped.macs == 16 * 8 * 8 * 4 * 3 * 3
    assert "reorder" in kinds and "gemm" in kinds and "view" in kinds
    assert "activation" not in kinds  # both Relus fused into their convs
    assert grouped.weight_bytes >= 16 * 4 * 3 * 3 * 4


def test_runtime_kernels_reject_a_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such ONNX file"):
        runtime_kernels(tmp_path / "absent.onnx")


def _event(name: str, op: str, dur: float, ins: list, outs: list, act: int, par: int, out: int) -> dict:
    """One onnxruntime profiler event, in its JSON format (``enable_profiling``)."""
    return {"cat": "Node", "pid": 1, "tid": 1, "dur": dur, "ts": 0, "ph": "X", "name": f"{name}_kernel_time",
            "args": {"op_name": op, "provider": "CPUExecutionProvider", "input_type_shape": ins,
                     "output_type_shape": outs, "activation_size": str(act), "parameter_size": str(par),
                     "output_size": str(out)}}


def test_kernels_from_profile_take_a_percentile_after_the_skipped_runs():
    conv_in = [{"float": [1, 8, 4, 4]}, {"float": [8, 1, 3, 3]}, {"float": [8]}]
    events = [{"cat": "Session", "name": "model_run", "dur": 100}]
    for dur in (50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10):  # the first run (50 us) is skipped
        events.append(_event("dw", "Conv", dur, conv_in, [{"float": [1, 8, 4, 4]}], 512, 320, 512))
        events.append(_event("add", "Add", 2 * dur, [{"float": [1, 8, 4, 4]}] * 2, [{"float": [1, 8, 4, 4]}],
                             1024, 0, 512))
    ks = kernels_from_profile(events, {"dw": "com.microsoft.nchwc"}, skip=1, percentile=50)
    assert [k.name for k in ks] == ["dw", "add"]
    dw, add = ks
    assert (dw.kind, dw.groups, dw.op_type) == ("dwconv", 8, "Conv")
    assert dw.macs == 8 * 4 * 4 * 9 and dw.bytes_moved == 512 + 320 + 512 and dw.weight_bytes == 320
    assert dw.measured_us == pytest.approx(5.5) and add.measured_us == pytest.approx(11.0)
    assert add.kind == "eltwise" and add.macs == 0
    plain = kernels_from_profile(events, {}, skip=1)  # not in the NCHWc domain: a plain conv
    assert plain[0].kind == "conv_nchw"
    assert kernels_from_profile(events, {}, percentile=None)[0].measured_us is None


def test_kernel_model_prices_compute_memory_cold_weights_groups_and_overheads():
    m = KernelModel({"conv": (0.5, 2.0, 3.0), "conv_nchw": (0.25, 1.0, 4.0), "eltwise": (1.0, 4.0, 1.0)},
                    peak_gflops=100.0, bandwidth_gbs=10.0, eta_d=0.5, cache_mb=1.0, eta_w=0.8, llc_mb=10.0,
                    group_us=0.5, profiler_us=1.0, call_us=6.0)
    conv = Kernel("c", "Conv", "conv", macs=10**6, bytes_moved=10**5, weight_bytes=4 * 10**4)
    # 2e6 / (0.5 * 100e9) = 40 us vs 1e5 / (2 * 10e9) = 5 us: compute-bound, + t0
    assert m.kernel_us([conv])[0] == pytest.approx(43.0)
    big = Kernel("e", "Add", "eltwise", macs=0, bytes_moved=4 * 10**6)  # beyond the 1 MB cache: eta_d
    assert m.kernel_us([big])[0] == pytest.approx(4e6 / (0.5 * 10e9) * 1e6 + 1.0)
    grouped = Kernel("g", "FusedConv", "conv_nchw", macs=10**5, bytes_moved=10**4, groups=5)
    assert m.kernel_us([grouped])[0] == pytest.approx(2e5 / (0.25 * 100e9) * 1e6 + 4.0 + 0.5 * 4)
    # weights of 20 MB in all exceed llc_mb = 10: each kernel's weights stream from DRAM, after its compute
    cold = Kernel("w", "Conv", "conv", macs=10**6, bytes_moved=2 * 10**7 + 10**5, weight_bytes=2 * 10**7)
    t_cold = 2e7 / (0.8 * 10e9) * 1e6
    assert m.kernel_us([cold])[0] == pytest.approx(max(40.0, 1e5 / (2 * 10e9) * 1e6) + t_cold + 3.0)
    # one run: kernel times less the profiler's share each, plus the call
    assert m.latency_ms([conv, grouped]) == pytest.approx((43.0 - 1 + 14.0 - 1 + 6.0) / 1e3)
    # an unfitted class borrows: a MAC kernel the conv's terms, the rest the element-wise kernel's
    assert m.terms("gemm") == m.terms("conv") and m.terms("pad") == m.terms("eltwise")
    with pytest.raises(BadInputError, match="no terms for kernel class 'pad'"):
        KernelModel({"conv": (0.5, 2.0, 3.0)}, 100.0, 10.0).terms("pad")
    with pytest.raises(ValueError, match="eta_c"):
        KernelModel({"conv": (0.0, 2.0, 3.0)}, 100.0, 10.0)
    assert KernelModel.from_dict(m.as_dict()) == m


def _generated(truth: KernelModel, rng: np.random.Generator, n_models: int = 24):
    """Models of random kernels timed by ``truth`` itself (2% noise): what a fit must recover."""
    models, measured = [], []
    for i in range(n_models):
        ks = []
        for j in range(int(rng.integers(4, 12))):
            kind = str(rng.choice(["conv", "conv", "dwconv", "eltwise", "reorder"]))
            macs = int(10 ** rng.uniform(4, 8)) if kind in ("conv", "dwconv") else 0
            ks.append(Kernel(f"m{i}k{j}", "Op", kind, macs, int(10 ** rng.uniform(3, 6.5)),
                             weight_bytes=int(10 ** rng.uniform(2, 5)) if macs else 0))
        t = truth.kernel_us(ks) * np.exp(rng.normal(0, 0.02, len(ks)))
        models.append([Kernel(**{**k.as_dict(), "measured_us": float(x)}) for k, x in zip(ks, t, strict=True)])
        measured.append(float(np.sum(t - truth.profiler_us) + truth.call_us) / 1e3)
    return models, measured


def test_fit_kernel_model_recovers_the_model_that_timed_its_data():
    truth = KernelModel({"conv": (0.8, 3.0, 3.0), "dwconv": (0.25, 1.5, 2.5), "eltwise": (1.0, 2.0, 2.0),
                         "reorder": (1.0, 1.8, 2.2)}, 200.0, 30.0, eta_d=0.6, cache_mb=1.0,
                        profiler_us=1.5, call_us=5.0)
    rng = np.random.default_rng(0)
    train, measured = _generated(truth, rng)
    fitted = fit_kernel_model(train, measured, 200.0, 30.0, ref="generated")
    assert fitted.source == "measured" and fitted.ref == "generated" and fitted.borrowed == {}
    test, test_measured = _generated(truth, np.random.default_rng(1), 10)
    for ks, m in zip(test, test_measured, strict=True):
        assert fitted.latency_ms(ks) == pytest.approx(m, rel=0.08)
        np.testing.assert_allclose(fitted.kernel_us(ks), truth.kernel_us(ks), rtol=0.1)


def test_fit_kernel_model_refuses_unmeasured_kernels_and_borrows_for_rare_classes():
    k = Kernel("a", "Add", "eltwise", 0, 1000, measured_us=None)
    with pytest.raises(ValueError, match="no measured time"):
        fit_kernel_model([[k], [k]], [0.01, 0.01], 100.0, 10.0)
    with pytest.raises(ValueError, match="two or more models"):
        fit_kernel_model([[k]], [0.01], 100.0, 10.0)
    rng = np.random.default_rng(2)
    truth = KernelModel({"conv": (0.8, 3.0, 3.0), "eltwise": (1.0, 2.0, 2.0)}, 200.0, 30.0)
    train, measured = _generated(truth, rng, 8)
    train = [[k for k in ks if k.kind in ("conv", "eltwise")] for ks in train]
    train[0].append(Kernel("p", "Pad", "pad", 0, 4000, measured_us=9.0))  # one Pad: too few to fit
    fitted = fit_kernel_model(train, [truth.latency_ms(ks) for ks in train], 200.0, 30.0)
    assert fitted.borrowed == {"pad": "eltwise"} and "pad" not in fitted.classes


def test_synthetic_models_are_valid_onnx_and_cover_every_block():
    models = microbench.synthetic_models(28, seed=3)
    assert [n for n, _ in models] == [n for n, _ in microbench.synthetic_models(28, seed=3)]  # seeded
    assert {n.split("_", 1)[1] for n, _ in models} == set(microbench.BLOCKS)
    for _, m in models:
        onnx.checker.check_model(m, full_check=True)  # shapes consistent: our own shape bookkeeping is right
    with pytest.raises(ValueError, match="count=0"):
        microbench.synthetic_models(0)


def test_calibrate_fits_a_model_that_predict_for_device_uses(tmp_path):
    from edgecompress.devices.profiles import load_profile

    calls = []
    model, data = microbench.calibrate(tmp_path / "syn", count=14, rounds=2, runs=4,
                                       between_rounds=lambda: calls.append(1))
    assert calls == [1]  # between the two rounds, not after the last
    assert model.source == "measured" and "14 synthetic networks" in model.ref
    assert len(data["networks"]) == 14 and all(v["measured_ms"] > 0 for v in data["networks"].values())
    v = next(iter(data["networks"].values()))  # the in-sample error is the model's on that network's kernels
    assert v["error"] == pytest.approx(model.latency_ms([Kernel(**k) for k in v["kernels"]]) / v["measured_ms"] - 1)
    assert "conv" in model.classes
    onnx_path = _net(tmp_path / "m.onnx")
    host = load_profile("host", measure_host=True)
    before = predict_for_device(onnx_path, host)
    assert before["method"] == "roofline"  # no kernel model cached yet
    path = save_kernel_model("host", model)
    try:  # the session's cache: other tests expect the roofline for the host
        assert cached_kernel_model("host") == model
        after = predict_for_device(onnx_path, host)
        assert after["method"] == "kernels" and after["source"] == "predicted"
        assert after["roofline_ms"] == pytest.approx(before["latency_ms"])
        assert after["latency_ms"] == pytest.approx(model.latency_ms(runtime_kernels(onnx_path)))
        assert after["energy"]["source"] == "estimated"
        assert predict_for_device(onnx_path, host, precision="int8")["method"] == "roofline"
        assert predict_for_device(onnx_path, host, use_kernels=False)["method"] == "roofline"
    finally:
        path.unlink()


def test_a_corrupt_kernel_model_file_is_named(tmp_path):
    (tmp_path / "kernel-model-host.json").write_text('{"classes": 3}')
    with pytest.raises(BadInputError, match="not a kernel model file"):
        cached_kernel_model("host", cache=tmp_path)


def test_devices_calibrate_refuses_a_board_and_too_few_networks():
    from edgecompress.cli import main

    assert main(["devices", "rpi4", "--calibrate"]) == 2
    assert main(["devices", "--calibrate", "--networks", "3"]) == 2


def test_devices_calibrate_stores_the_host_kernel_model(tmp_path, monkeypatch, capsys):
    import json

    from edgecompress.cli import main

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))  # its own cache: the host is re-measured there
    assert main(["--json", "devices", "--calibrate", "--networks", "12"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["networks"] == 12 and out["path"] == str(tmp_path / "kernel-model-host.json")
    model = cached_kernel_model("host")
    assert model is not None and model.source == "measured" and model.as_dict() == out["kernel_model"]
