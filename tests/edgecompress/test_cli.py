"""The CLI run as a user runs it: a subprocess, exit codes, one-line errors, --json."""

import json
import subprocess
import sys

import pytest


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_lists_the_commands():
    r = cli("--help")
    assert r.returncode == 0
    for command in ("zoo", "export", "profile", "demo"):
        assert command in r.stdout


def test_zoo_json():
    r = cli("--json", "zoo")
    assert r.returncode == 0
    names = {row["name"] for row in json.loads(r.stdout)}
    assert {"mobilenetv2_cifar", "resnet20", "vgg16_bn", "mobilenetv2_cifar_tiny"} <= names


def test_export_then_profile(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    r = cli("export", "--model", "zoo:resnet_cifar_tiny", "-o", str(onnx_path))
    assert r.returncode == 0, r.stderr
    assert "max relative error" in r.stdout and onnx_path.is_file()
    r = cli("--json", "profile", str(onnx_path), "--threads", "1", "--warmup", "1", "--repeats", "5",
            "-o", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["source"] == "measured" and report["latency_ms"]["count"] == 5
    assert json.loads((tmp_path / "p.json").read_text())["latency_ms"]["count"] == 5


@pytest.mark.parametrize(("args", "needle"), [
    (["export", "--model", "zoo:no_such_model", "-o", "x.onnx"], "unknown model 'no_such_model'"),
    (["export", "--model", "resnet20", "-o", "x.onnx"], "expected zoo:NAME"),
    (["export", "--model", "zoo:resnet20", "--weights", "missing.pt", "-o", "x.onnx"], "missing.pt: no such"),
    (["profile", "missing.onnx"], "missing.onnx: no such ONNX file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_corrupt_files_are_named(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    r = cli("profile", "bad.onnx", cwd=tmp_path)
    assert r.returncode == 2 and "bad.onnx" in r.stderr
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    r = cli("export", "--model", "zoo:resnet_cifar_tiny", "--weights", "w.pt", "-o", "x.onnx", cwd=tmp_path)
    assert r.returncode == 2 and "w.pt: not a readable weights file" in r.stderr


def test_bad_usage_exits_2():
    r = cli("export")
    assert r.returncode == 2 and "required" in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = cli("--debug", "profile", "missing.onnx", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_report_renders_a_run(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"stages": {"train": {"val_accuracy": 0.97}},
                                                      "summary": {"fp32_val_accuracy": 0.97}}))
    r = cli("report", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "fp32_val_accuracy: 0.97" in r.stdout
    assert "val_accuracy" in (tmp_path / "report.html").read_text()
    r = cli("report", str(tmp_path / "nope"))
    assert r.returncode == 2 and "report.json: no such file" in r.stderr
