"""Bundles: compile -> load -> run gives the same outputs; tampered bundles and unsafe archives are refused."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.cli import main
from edgecompress.errors import BadInputError
from edgecompress.export.onnx import export_onnx
from edgecompress.runtime.bundle import SCHEMA_VERSION, compile_bundle, load_bundle, read_manifest, safe_extract
from edgecompress.runtime.engine import load_engine


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    path = tmp_path_factory.mktemp("bundle") / "m.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    return path


@pytest.fixture(scope="module")
def ort_bundle(onnx_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ortb") / "b"
    compile_bundle(onnx_file, "onnxruntime", "host", out, stage_reports={"export": {"opset": 17}}, archive=True,
                   preprocessing={"layout": "NCHW", "scale": 1.0})
    return out


def _x(batch=1):
    return np.random.default_rng(3).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def test_manifest_describes_the_bundle(ort_bundle, onnx_file):
    m = read_manifest(ort_bundle)
    assert m["schema_version"] == SCHEMA_VERSION and m["runtime"]["name"] == "onnxruntime"
    assert m["inputs"][0]["name"] == "input" and m["inputs"][0]["shape"][1:] == [3, 8, 8]
    assert m["inputs"][0]["dtype"] == "float32" and m["outputs"][0]["shape"][-1] == 3
    assert m["stage_reports"] == {"export": {"opset": 17}} and m["preprocessing"]["layout"] == "NCHW"
    assert set(m["files"]) == {"model.onnx"} and m["engine"]["file"] is None
    assert m["model"]["sha256"] == m["files"]["model.onnx"]


def test_onnxruntime_round_trip_dir_and_archive(ort_bundle, onnx_file):
    want = load_engine(onnx_file).run(_x(2))[0]
    for path in (ort_bundle, ort_bundle.with_name("b.tar.gz")):
        np.testing.assert_array_equal(load_bundle(path).run(_x(2))[0], want)


@pytest.mark.tvm
def test_tvm_round_trip_runs_without_torch(onnx_file, tmp_path, monkeypatch):
    pytest.importorskip("tvm", reason="apache-tvm is not installed")
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    out = compile_bundle(onnx_file, "tvm", "host", tmp_path / "tb", archive=True)
    m = read_manifest(tmp_path / "tb")
    assert m["engine"]["file"] == "engine.so" and m["compile"]["parity"]["max_rel_error"] <= 1e-4
    np.save(tmp_path / "x.npy", _x())
    # tvm_ffi itself imports torch eagerly whenever it is installed (a workaround in tvm_ffi/__init__.py),
    # so this simulates an install without torch: any `import torch` fails, and the bundle must still run
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, edgecompress as ec\n"
            f"e = ec.load_bundle({str(out)!r})\n"
            f"y = e.run(np.load({str(tmp_path / 'x.npy')!r}))[0]\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
            "assert sys.modules['torch'] is None, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                   capture_output=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), load_engine(onnx_file).run(_x())[0], rtol=1e-4, atol=1e-5)


@pytest.mark.tvm
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="aarch64-linux-gnu-g++ not installed "
                    "(`make setup` installs Debian's g++-aarch64-linux-gnu)")
def test_rpi4_bundle_holds_an_aarch64_engine_and_refuses_to_run_here(onnx_file, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    from edgecompress.runtime.backend_tvm import EM_AARCH64, elf_machine

    out = compile_bundle(onnx_file, "tvm", "rpi4", tmp_path / "pi", cross_parity=False)
    m = read_manifest(out)
    assert m["target"]["mcpu"] == "cortex-a72" and m["compile"]["engine_elf_machine"] == "aarch64"
    assert elf_machine(out / "engine.so") == (EM_AARCH64, 3)
    with pytest.raises(BadInputError, match="built for ELF machine 183"):
        load_bundle(out)


def test_onnxruntime_bundle_loads_without_torch(ort_bundle, tmp_path):
    code = ("import sys, numpy as np, edgecompress as ec\n"
            f"e = ec.load_bundle({str(ort_bundle)!r})\n"
            "e.run(np.zeros((1, 3, 8, 8), np.float32))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tampered_missing_and_wrong_version_are_refused(ort_bundle, tmp_path):
    b = _copy(ort_bundle, tmp_path / "t1")
    with open(b / "model.onnx", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(BadInputError, match="model.onnx does not match its sha256"):
        load_bundle(b)
    b = _copy(ort_bundle, tmp_path / "t2")
    (b / "manifest.json").unlink()
    with pytest.raises(BadInputError, match="no manifest.json"):
        load_bundle(b)
    b = _copy(ort_bundle, tmp_path / "t3")
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BadInputError, match="schema_version 99"):
        load_bundle(b)
    b = _copy(ort_bundle, tmp_path / "t4")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["../etc/passwd"] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BadInputError, match="not a plain file name"):
        load_bundle(b)


def _archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member, reason", [
    (_file("../evil.txt"), "'..'"),
    (_file("b/../../evil.txt"), "'..'"),
    (_file("/tmp/evil.txt"), "absolute path"),
    (_link("b/link", "/etc/passwd"), "links are refused"),
    (_link("b/hard", "../../outside", tarfile.LNKTYPE), "links are refused"),
])
def test_unsafe_archives_are_refused(tmp_path, member, reason):
    arc = _archive(tmp_path / "bad.tar.gz", [_file("b/manifest.json", b"{}"), member])
    dest = tmp_path / "dest"
    with pytest.raises(BadInputError, match=reason):
        safe_extract(arc, dest)
    assert not (tmp_path / "evil.txt").exists() and not any(dest.rglob("*"))
    with pytest.raises(BadInputError):
        load_bundle(arc)


def test_not_a_bundle_errors(tmp_path, onnx_file):
    with pytest.raises(BadInputError, match="no such bundle"):
        load_bundle(tmp_path / "nothing")
    with pytest.raises(BadInputError, match="not a bundle"):
        load_bundle(onnx_file)
    with pytest.raises(BadInputError, match="unknown bundle runtime 'tflite'"):
        compile_bundle(onnx_file, "tflite", "host", tmp_path / "x")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not a bundle; refusing to overwrite"):
        compile_bundle(onnx_file, "onnxruntime", "host", tmp_path / "occupied")


def test_cli_compile_and_run(onnx_file, tmp_path, capsys):
    out = tmp_path / "cb"
    assert main(["compile", str(onnx_file), "--runtime", "onnxruntime", "--device", "host", "--archive",
                 "-o", str(out)]) == 0
    assert (tmp_path / "cb.tar.gz").is_file()
    np.save(tmp_path / "x.npy", _x())
    assert main(["run", str(tmp_path / "cb.tar.gz"), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), load_engine(onnx_file).run(_x())[0])
    capsys.readouterr()
    (tmp_path / "r.yaml").write_text("stages: []\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--input", str(tmp_path / "x.npy")]) == 2
    assert "takes a bundle" in capsys.readouterr().err
    assert main(["run", str(out), "--input", str(tmp_path / "nope.npy")]) == 2
