import torch
import torch.nn as nn

from edgecompress.export.onnx import export_onnx
from edgecompress.profiler import ProfileConfig, format_report, profile


def test_profile_onnx_reports_measured_stats_and_settings(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    report = profile(path, config=ProfileConfig(threads=1, batch=4, warmup=2, repeats=7))
    assert report["source"] == "measured" and report["device"] == "host"
    s = report["latency_ms"]
    assert s["count"] == 7 and s["batch"] == 4 and len(report["samples_ms"]) == 7
    assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert report["settings"]["threads"] == 1 and report["settings"]["runtime"] == "onnxruntime"
    assert report["settings"]["warmup"] == 2 and report["host"]["cpu"]
    assert "median" in format_report(report)


def test_profile_torch_module():
    model = nn.Linear(4, 2)
    report = profile(model, torch.randn(3, 4), ProfileConfig(warmup=1, repeats=3, threads=1))
    assert report["runtime"] == "torch-eager" and report["latency_ms"]["batch"] == 3
