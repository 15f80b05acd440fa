"""The device-aware profiler: energy (meter or labelled estimate), MLPerf-style figures, per-layer, predictions."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn as nn

from edgecompress.cli import main
from edgecompress.devices.energy import auto_meter
from edgecompress.devices.profiles import host_measurements, load_profile
from edgecompress.errors import BadInputError
from edgecompress.export.onnx import export_onnx
from edgecompress.profiler import ProfileConfig, format_report, profile


@pytest.fixture()
def onnx_model(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    host_measurements(cache=tmp_path / "cache", matmul_n=128, copy_mib=4)  # small, so the test is quick
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    return path


def test_energy_auto_here_says_no_meter_and_gives_a_labelled_estimate(onnx_model):
    meter, _ = auto_meter(load_profile("host", measure_host=False).energy_meters)
    if meter is not None:
        pytest.skip(f"this machine has a readable meter ({meter.name}); the estimate path is not taken")
    report = profile(onnx_model, config=ProfileConfig(threads=1, warmup=2, repeats=10, energy="auto"))
    e = report["energy"]
    assert e["source"] == "estimated" and e["joules_per_inference"] > 0
    assert [t["meter"] for t in e["meters_tried"]] == ["rapl", "nvml"]
    assert "no energy meter is readable here" in e["note"]
    assert report["source"] == "measured"  # the latency is measured; only the energy is estimated
    assert "energy (estimated, not measured)" in format_report(report)


def test_energy_from_a_meter_log(onnx_model, tmp_path):
    log = tmp_path / "meter.csv"
    now = time.time()
    log.write_text("timestamp,watts\n" + "".join(f"{now - 5 + 0.5 * i:.3f},5.0\n" for i in range(60)))
    report = profile(onnx_model, config=ProfileConfig(threads=1, warmup=1, repeats=5, energy=f"csv:{log}",
                                                      energy_seconds=0.3, idle_seconds=0.2))
    e = report["energy"]
    assert e["source"] == "measured" and e["meter"] == "csv"
    assert e["mean_power_w"] == pytest.approx(5.0) and e["idle_power_w"] == pytest.approx(5.0)
    assert e["joules_per_inference"] == pytest.approx(5.0 * e["window_s"] / e["inferences"])


def test_requested_meter_that_is_absent_is_an_error(onnx_model):
    from edgecompress.devices.energy import MeterUnavailableError

    with pytest.raises(MeterUnavailableError, match="jetson: no INA3221 rails"):
        profile(onnx_model, config=ProfileConfig(warmup=1, repeats=2, energy="jetson"))


def test_mlperf_per_layer_histogram_and_prediction(onnx_model, tmp_path):
    png = tmp_path / "hist.png"
    report = profile(onnx_model, config=ProfileConfig(threads=1, warmup=2, repeats=12, offline_batch=4,
                                                      per_layer=True, histogram=str(png)))
    assert report["mlperf"]["single_stream"]["p90_ms"] == report["latency_ms"]["p90_ms"]
    assert report["mlperf"]["offline"]["batch"] == 4 and report["mlperf"]["offline"]["throughput_per_s"] > 0
    ops = {r["op_type"] for r in report["per_layer"]["top"]}
    assert "Conv" in ops or "FusedConv" in ops
    assert abs(sum(report["per_layer"]["share_by_op_type"].values()) - 1) < 1e-6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pred = report["predicted"]
    assert pred["source"] == "predicted" and pred["latency_ms"] > 0 and pred["ratio_predicted_to_measured"] > 0


def test_device_not_attached_is_predicted(onnx_model):
    report = profile(onnx_model, config=ProfileConfig(device="rpi4"))
    assert report["source"] == "predicted" and "not attached" in report["note"]
    assert report["energy"]["source"] == "estimated"
    assert "latency (predicted" in format_report(report)
    with pytest.raises(BadInputError, match="unknown device 'rpi3'.*known: h200, host"):
        profile(onnx_model, config=ProfileConfig(device="rpi3"))
    with pytest.raises(BadInputError, match="not attached"):
        profile(nn.Linear(2, 2), torch.randn(1, 2), ProfileConfig(device="rpi5"))


def test_config_rejects_bad_energy_spec():
    with pytest.raises(ValueError, match="energy='watts'"):
        ProfileConfig(energy="watts")
    with pytest.raises(ValueError, match="key: required"):
        ProfileConfig(tracker="127.0.0.1:9190")


def test_cli_profile_and_devices(onnx_model, tmp_path, capsys):
    assert main(["profile", str(onnx_model), "--repeats", "5", "--warmup", "1", "--threads", "1",
                 "--energy-seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "MLPerf-style: single-stream p90" in out and "energy (" in out
    assert main(["--json", "devices"]) == 0
    data = json.loads(capsys.readouterr().out)
    attached = {p["name"]: p["attached"] for p in data["profiles"]}
    assert attached["host"] is True and attached["rpi4"] is False
    rpi4 = next(p for p in data["profiles"] if p["name"] == "rpi4")
    assert rpi4["figures"]["load_power_w"]["source"] == "published measurement"
    assert main(["profile", str(onnx_model), "--device", "nano"]) == 2
    assert "unknown device 'nano'" in capsys.readouterr().err
