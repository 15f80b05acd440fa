"""TVM backend: targets, ONNX import errors, parity vs onnxruntime, cross-compiled aarch64 libraries."""

import os
import shutil
import struct

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from edgecompress.errors import BadInputError, CheckFailedError
from edgecompress.export.onnx import export_onnx
from edgecompress.runtime.backend_tvm import (
    EM_AARCH64,
    TvmCompileConfig,
    _lower,
    build_engine,
    compile_tvm,
    elf_machine,
    import_onnx,
    tuning_dir,
)
from edgecompress.runtime.engine import EngineOptions, load_engine, relative_error
from edgecompress.runtime.tvm_targets import is_cross, target_spec

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm", reason="apache-tvm is not installed")
needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                                 reason="aarch64-linux-gnu-g++ not installed (`make setup` installs "
                                        "Debian's g++-aarch64-linux-gnu)")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    path = tmp_path_factory.mktemp("tvm") / "small.onnx"
    export_onnx(model, torch.randn(1, 3, 16, 16), path)
    return path


def test_target_table_and_unknown_target():
    rpi4, rpi5 = target_spec("rpi4"), target_spec("rpi5")
    assert (rpi4["mtriple"], rpi4["mcpu"]) == ("aarch64-linux-gnu", "cortex-a72")
    assert rpi5["mcpu"] == "cortex-a76" and is_cross(rpi5)
    host = target_spec("host")
    assert host["kind"] == "llvm" and host["mcpu"] and not is_cross(host)
    with pytest.raises(BadInputError, match="unknown TVM target 'rpi9'"):
        target_spec("rpi9")


def test_elf_header_reader(tmp_path):
    f = tmp_path / "fake.so"
    f.write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + struct.pack("<HH", 3, EM_AARCH64) + b"\x00" * 40)
    assert elf_machine(f) == (EM_AARCH64, 3)
    f.write_bytes(b"not an elf at all, long enough")
    with pytest.raises(BadInputError, match="not an ELF"):
        elf_machine(f)


def test_tuning_database_is_keyed_by_model_and_target(tmp_path):
    a = tuning_dir("ab" * 32, target_spec("rpi4"), 1, tmp_path)
    assert a == tuning_dir("ab" * 32, target_spec("rpi4"), 1, tmp_path)
    assert a != tuning_dir("ab" * 32, target_spec("rpi5"), 1, tmp_path)
    assert a != tuning_dir("cd" * 32, target_spec("rpi4"), 1, tmp_path)
    assert a != tuning_dir("ab" * 32, target_spec("rpi4"), 1, tmp_path, layout="NHWC")  # other workloads
    assert a != tuning_dir("ab" * 32, target_spec("rpi4"), 1, tmp_path, prepack=False)


def test_nhwc_layout_compiles_with_parity_and_bad_layout_is_refused(small_onnx):
    engine = load_engine(small_onnx, "tvm", EngineOptions(threads=1, extra={"layout": "nhwc"}))
    assert engine.info["layout"] == "NHWC" and engine.info["parity"]["max_rel_error"] <= 1e-4
    import tvm

    def transposes(layout):  # NHWC: the input is transposed to NHWC (and back before the pooled Flatten)
        mod = _lower(import_onnx(small_onnx, 1)[0], tvm.target.Target("llvm"), layout)
        return [g.name_hint for g in mod.get_global_vars() if "transpose" in g.name_hint]

    assert transposes("NCHW") == [] and transposes("NHWC")
    with pytest.raises(BadInputError, match="layout='NCHWc'"):
        TvmCompileConfig(layout="NCHWc")


def test_nhwc_sees_through_relu6(tmp_path):
    # the frontend's Clip is a call_tir that ConvertLayout cannot see through: a transpose pair per ReLU6
    # unless clip_as_relax_ops turns it back into Relax ops first
    import tvm

    from edgecompress.runtime.backend_tvm import clip_as_relax_ops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU6(), nn.Conv2d(8, 4, 1)).eval()
    path = tmp_path / "relu6.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), path)
    mod = import_onnx(path, 1)[0]
    names = lambda m: sorted(g.name_hint for g in m.get_global_vars())  # noqa: E731
    assert {"maximum", "minimum"} <= set(names(mod))
    assert not {"maximum", "minimum"} & set(names(clip_as_relax_ops(mod)))
    lowered = _lower(mod, tvm.target.Target("llvm"), "NHWC")
    assert len([n for n in names(lowered) if "transpose" in n]) == 2  # the input and the output only
    engine = load_engine(path, "tvm", EngineOptions(threads=1, extra={"layout": "NHWC"}))
    assert engine.info["parity"]["max_rel_error"] <= 1e-4


def test_engine_matches_onnxruntime_and_times_with_time_evaluator(small_onnx):
    engine = load_engine(small_onnx, "tvm", EngineOptions(threads=2))
    assert engine.info["parity"]["max_rel_error"] <= 1e-4
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ort = load_engine(small_onnx, "onnxruntime", EngineOptions(threads=1))
    np.testing.assert_allclose(engine.run(x)[0], ort.run(x)[0], rtol=1e-4, atol=1e-5)
    samples = engine.measure({"input": x}, warmup=1, repeats=3)
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert engine.settings()["threads"] == 2 and engine.settings()["timer"] == "tvm time_evaluator"
    with pytest.raises(BadInputError, match=r"shape \(2, 3, 16, 16\)"):
        engine.run(np.zeros((2, 3, 16, 16), np.float32))  # compiled for batch 1


def test_parity_failure_names_the_output(small_onnx):
    with pytest.raises(CheckFailedError, match="output 'output' differs from onnxruntime"):
        build_engine(small_onnx, TvmCompileConfig(rtol=1e-15))


def test_unsupported_operator_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu0"), helper.make_node("Celu", ["r"], ["y"], name="celu0")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(BadInputError, match=r"node 'celu0' \(op Celu\)"):
        compile_tvm(path)


def test_bad_options_are_refused(small_onnx):
    with pytest.raises(BadInputError, match="unknown TVM option"):
        load_engine(small_onnx, "tvm", EngineOptions(extra={"trials": 3}))
    with pytest.raises(ValueError, match="trials_per_task"):
        TvmCompileConfig(trials_per_task=-1)
    with pytest.raises(BadInputError, match="cannot run on this machine"):
        load_engine(small_onnx, "tvm", EngineOptions(target="rpi4"))


def test_qdq_int8_model_imports_and_matches_onnxruntime(small_onnx, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    qdq = tmp_path / "small_int8.onnx"
    quantize_static(str(small_onnx), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the reference runs Q/DQ as written; rounding may still differ by a quantization step: stated 1e-2
    engine, build = build_engine(qdq, TvmCompileConfig(rtol=1e-2))
    parity = build.report["parity"]
    assert parity["max_rel_error"] <= 1e-2 and "optimisations off" in parity["reference"]


@needs_cross
@pytest.mark.parametrize("device", ["rpi4", "rpi5"])
def test_cross_compiled_library_is_aarch64(small_onnx, tmp_path, device):
    build = compile_tvm(small_onnx, TvmCompileConfig(target=device))
    so = build.export(tmp_path / f"{device}.so")
    assert elf_machine(so) == (EM_AARCH64, 3)
    assert build.report["target"]["mcpu"] == target_spec(device)["mcpu"]


def test_cross_target_cannot_be_tuned_here(small_onnx):
    with pytest.raises(BadInputError, match="RPC"):
        compile_tvm(small_onnx, TvmCompileConfig(target="rpi4", trials_per_task=2))


def test_cached_budget_skips_the_search(small_onnx, tmp_path):
    from edgecompress.fileio import sha256_file, write_json_atomic

    work = tuning_dir(sha256_file(small_onnx), target_spec("host"), 1, tmp_path)
    write_json_atomic(work / "edgecompress.json", {"trials_per_task": 8, "tasks": 3, "seconds": 1.0,
                                                   "cost_model": "random"})
    build = compile_tvm(small_onnx, TvmCompileConfig(trials_per_task=4, cache_dir=tmp_path))
    assert build.report["tuning"]["searched"] is False and build.report["tuning"]["trials_per_task_cached"] == 8


def test_a_crashing_tuner_is_an_error_not_a_crash(small_onnx, tmp_path, monkeypatch):
    import subprocess

    from edgecompress.errors import EdgeCompressError

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, -11, "", "Segfault\n"))
    with pytest.raises(EdgeCompressError, match=r"exit status -11\): Segfault"):
        compile_tvm(small_onnx, TvmCompileConfig(trials_per_task=2, cache_dir=tmp_path))


def test_tensor_intrinsics_import_fast_and_leave_inspect_alone():
    import inspect

    from edgecompress.runtime.backend_tvm import import_tensor_intrinsics

    original = inspect.stack
    import_tensor_intrinsics()
    import tvm

    assert inspect.stack is original
    assert tvm.s_tir.TensorIntrin.get("dot_16x4_vnni") is not None  # an x86 intrinsic MetaSchedule may use


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")
def test_thread_pool_leaves_the_process_affinity_and_the_host_target_alone():
    from edgecompress.runtime.backend_tvm import configure_threads

    before, spec = os.sched_getaffinity(0), target_spec("host")
    configure_threads(1)  # TVM pins the calling thread while it configures its pool
    assert os.sched_getaffinity(0) == before  # threads started later keep every core
    assert target_spec("host") == spec  # num-cores, part of the tuning database key, did not move
    configure_threads(None)


def _threads_in_fresh_process(env_threads: str | None, ask: int) -> tuple[int, int, list[str]]:
    """configure_threads(ask) in a new Python (TVM's pool is sized once per process): what it returned,
    the threads TVM's pool really uses, the warnings."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "1"  # meant for torch/BLAS (the test suite sets it): not a TVM setting here
    if env_threads is not None:
        env["TVM_NUM_THREADS"] = env_threads
    code = ("import json, warnings\n"
            "from edgecompress.runtime.backend_tvm import configure_threads\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            f"    n = configure_threads({ask})\n"
            "import tvm\n"
            "used = tvm.get_global_func('runtime.NumThreads')()\n"
            "print(json.dumps([n, used, [str(x.message) for x in w]]))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    n, used, warned = json.loads(out.strip().splitlines()[-1])
    return n, used, warned


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="needs 2 usable cores")
def test_tvm_uses_every_usable_core_unless_told_otherwise():
    # TVM's own default on x86 is half the logical CPUs: one thread on a 2-vCPU VM, which halved the speed
    cores = len(os.sched_getaffinity(0))
    assert _threads_in_fresh_process(None, cores) == (cores, cores, [])
    n, used, warned = _threads_in_fresh_process("1", cores)  # the user's setting wins, and we say what it costs
    assert n == used == 1 and len(warned) == 1 and "TVM_NUM_THREADS='1'" in warned[0]


@pytest.mark.slow
def test_metaschedule_tunes_and_the_records_are_applied(small_onnx, tmp_path):
    build = compile_tvm(small_onnx, TvmCompileConfig(trials_per_task=2, cache_dir=tmp_path))
    assert build.report["tuning"]["searched"] is True and build.report["tuning"]["tasks"] >= 1
    assert build.report["schedules"]["metaschedule"] >= 1
    engine = load_engine(small_onnx, "tvm", EngineOptions(extra={"tune_trials": 2, "cache_dir": str(tmp_path)}))
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ort_out = load_engine(small_onnx, "onnxruntime").run([x])[0]
    assert relative_error(engine.run([x])[0], ort_out) < 1e-4
    # a larger budget extends the same database by the difference, warm-started from its records
    more = compile_tvm(small_onnx, TvmCompileConfig(trials_per_task=3, cache_dir=tmp_path))
    tuning = more.report["tuning"]
    assert tuning["searched"] is True and tuning["trials_per_task_cached"] == 3
    assert [s["trials_per_task"] for s in tuning["searches"]] == [2, 1]
    assert tuning["seconds"] == pytest.approx(sum(s["seconds"] for s in tuning["searches"]), abs=0.2)


@pytest.mark.slow
def test_prepacked_weights_are_tuned_and_folded_into_constants(small_onnx, tmp_path):
    """With ``prepack`` the tuned schedules choose the weight layout (MetaSchedule's RewriteLayout) and the
    rewrite of each weight is folded at compile time: the engine holds weights in a layout the ONNX file
    does not have, and still matches onnxruntime."""
    import tvm

    from edgecompress.runtime.backend_tvm import _apply_schedules

    build = compile_tvm(small_onnx, TvmCompileConfig(trials_per_task=2, cache_dir=tmp_path, prepack=True))
    assert build.report["prepack"] is True and build.report["tuning"]["database"].endswith("-pp")
    assert build.report["schedules"]["metaschedule"] >= 1
    target = tvm.target.Target(target_spec("host"))
    mod = _apply_schedules(_lower(import_onnx(small_onnx, 1)[0], target, "NCHW", True), target,
                           tuning_dir(build.report["onnx_sha256"], target_spec("host"), 1, tmp_path, prepack=True),
                           True)[0]
    onnx_shapes = {tuple(t.dims) for t in onnx.load(str(small_onnx)).graph.initializer}
    consts = []
    tvm.relax.analysis.post_order_visit(mod["main"], lambda e: consts.append(tuple(e.value.shape))
                                        if isinstance(e, tvm.ir.expr.Constant) and hasattr(e.value, "shape")
                                        else None)
    assert any(len(c) > 1 and c not in onnx_shapes for c in consts), consts  # a rewritten weight
    engine = load_engine(small_onnx, "tvm", EngineOptions(extra={"tune_trials": 2, "cache_dir": str(tmp_path),
                                                                 "prepack": True}))
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert relative_error(engine.run([x])[0], load_engine(small_onnx, "onnxruntime").run([x])[0]) < 1e-4
