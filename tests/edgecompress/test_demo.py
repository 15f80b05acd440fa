"""The demo end to end (quick mode), and that a second run resumes instead of redoing stages."""

import json
import subprocess
import sys


def test_quick_demo_writes_the_run_and_resumes(tmp_path):
    run = tmp_path / "run"
    # prune, vq and tvm have their own demo-stage tests; skipping them keeps this test at about a minute
    cmd = [sys.executable, "-m", "edgecompress", "demo", "--quick", "--threads", "2", "-o", str(run),
           "--skip", "prune", "--skip", "vq", "--skip", "tvm"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    for name in ("model.onnx", "report.json", "report.html", "train/weights.pt", "export/model.onnx"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert {"train", "export", "profile"} <= set(report["stages"])
    assert report["stages"]["export"]["max_rel_error"] <= 1e-4
    latency = report["stages"]["profile"]["latency"]
    assert latency["source"] == "measured" and latency["latency_ms"]["count"] > 0
    # the ONNX engine is as accurate as torch on the same validation set
    assert abs(report["summary"]["onnxruntime_val_accuracy"] - report["summary"]["fp32_val_accuracy"]) < 0.01
    assert "<table>" in (run / "report.html").read_text()

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "[train] already done" in second.stdout
    assert "[export] already done" in second.stdout
    assert "[prune] skipped" in first.stdout
