"""TVM RPC: a real tracker and server on 127.0.0.1, a tiny model timed through them, and clear errors."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.devices.remote import RemoteError, RemoteTarget, connect, serve_board, serve_tracker, time_library
from edgecompress.errors import BadInputError

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")
pytest.importorskip("tornado", reason="the TVM tracker needs tornado")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    from edgecompress.export.onnx import export_onnx
    from edgecompress.runtime.backend_tvm import TvmCompileConfig, compile_tvm

    folder = tmp_path_factory.mktemp("rpc")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU()).eval()
    onnx_path = folder / "tiny.onnx"
    export_onnx(model, torch.randn(1, 3, 16, 16), onnx_path)
    build = compile_tvm(onnx_path, TvmCompileConfig(target="host", check_parity=False))
    return onnx_path, build, build.export(folder / "tiny.so")


@pytest.fixture(scope="module")
def farm():
    tracker = serve_tracker(port=_free_port(), port_end=65000)
    board = serve_board(key="loopboard", tracker=("127.0.0.1", tracker.port), port=_free_port(), port_end=65000)
    yield tracker, board
    board.close()
    tracker.close()


def test_services_bind_to_loopback(farm):
    tracker, board = farm
    assert tracker.host == "127.0.0.1" and board.host == "127.0.0.1"


def test_profile_through_tracker_matches_local_tvm(tiny_library, farm):
    from edgecompress.runtime.backend_tvm import TvmEngine

    onnx_path, build, lib = tiny_library
    tracker, _ = farm
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    target = RemoteTarget.parse(tracker=f"127.0.0.1:{tracker.port}", key="loopboard", timeout_s=60)
    remote = time_library(target, lib, [x], repeats=30, number=5, warmup=3)
    local = TvmEngine(build.executable, build.inputs, build.outputs, threads=None)
    local_ms = local.measure({"input": x} if build.inputs[0].name == "input" else {build.inputs[0].name: x}, 3, 30)
    np.testing.assert_allclose(remote["outputs"][0], local.run([x])[0], rtol=1e-5, atol=1e-6)
    ratio = float(np.min(remote["samples_ms"]) / np.min(local_ms))
    print(f"remote/local TVM latency ratio (min over 30 repeats, loopback): {ratio:.2f}")
    # same machine, same library: only noise separates them (2 shared cores: allow a wide band)
    assert 0.33 < ratio < 3.0
    assert remote["remote"] == f"tracker 127.0.0.1:{tracker.port} key loopboard"


@pytest.mark.slow  # compiles the model again inside the command (~20 s on 2 cores)
def test_profile_command_over_the_tracker(tiny_library, farm, tmp_path, monkeypatch):
    from edgecompress.cli import main

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))

    onnx_path, _, _ = tiny_library
    tracker, _ = farm
    out = tmp_path / "r.json"
    rc = main(["profile", str(onnx_path), "--runtime", "tvm", "--tracker", f"127.0.0.1:{tracker.port}",
               "--key", "loopboard", "--repeats", "10", "--warmup", "2", "--energy", "auto", "-o", str(out)])
    assert rc == 0
    import json

    report = json.loads(out.read_text())
    assert report["source"] == "measured" and report["runtime"] == "tvm-rpc"
    assert report["settings"]["timer"] == "tvm time_evaluator on the board"
    assert report["energy"]["source"] == "estimated"
    # the board's measured/predicted ratio is kept for later predictions of this device
    assert report["predicted"]["ratio_measured_to_predicted"] > 0
    assert (tmp_path / "cache" / "ratios-host.json").is_file()


def test_wrong_key_is_a_clear_error_quickly(farm, tiny_library):
    tracker, _ = farm
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=r"no board is registered under key 'rpi9'.*loopboard"):
        connect(RemoteTarget.parse(tracker=f"127.0.0.1:{tracker.port}", key="rpi9", timeout_s=5))
    assert time.monotonic() - t0 < 5


def test_unreachable_server_errors_within_the_timeout():
    port = _free_port()  # nothing listens here
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=f"cannot connect to server 127.0.0.1:{port}"):
        connect(RemoteTarget.parse(remote=f"127.0.0.1:{port}", timeout_s=3))
    assert time.monotonic() - t0 < 3.5


def test_silent_server_times_out(tmp_path):
    with socket.socket() as s:  # accepts connections, never answers the RPC handshake
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="no answer within 2 s"):
            connect(RemoteTarget.parse(remote=f"127.0.0.1:{port}", timeout_s=2))
        assert time.monotonic() - t0 < 3


def test_bad_addresses():
    with pytest.raises(BadInputError, match="HOST:PORT"):
        RemoteTarget.parse(remote="board")
    with pytest.raises(BadInputError, match="needs --key"):
        RemoteTarget.parse(tracker="127.0.0.1:9190")
    with pytest.raises(BadInputError, match="either --remote"):
        RemoteTarget.parse()


def test_tvm_per_layer_breakdown_from_the_vm_instrument(tiny_library):
    from edgecompress.profiler import ProfileConfig, profile_engine
    from edgecompress.runtime.backend_tvm import TvmEngine

    _, build, _ = tiny_library
    engine = TvmEngine(build.executable, build.inputs, build.outputs, threads=1)
    report = profile_engine(engine, None, ProfileConfig(warmup=1, repeats=5, per_layer=True, predict=False))
    layers = report["per_layer"]
    kernels = [r for r in layers["top"] if r["op_type"] == "tvm-kernel"]
    assert layers["runs"] == 5 and kernels and all(r["calls"] == 5 for r in kernels)
    assert any(r["node"].startswith("fused_conv2d") for r in kernels)
    assert abs(sum(layers["share_by_op_type"].values()) - 1) < 1e-6
