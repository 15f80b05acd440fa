"""TensorRT backend: ONNX -> serialized plan -> an engine run with device buffers (cuda-python).

Written against the TensorRT 10 and 11 Python APIs (not run on this project's machines, which have
no GPU; tests are marked ``tensorrt``). The differences handled:

* Network creation: ``EXPLICIT_BATCH`` is the only mode since TensorRT 10 (the flag is deprecated and
  not passed); ``STRONGLY_TYPED`` is requested when the ONNX file carries explicit Q/DQ (INT8) or is
  already FP16. TensorRT 11 makes every network strongly typed.
* Precision: TensorRT 10 builds FP16 from an FP32 file with ``BuilderFlag.FP16`` (weak typing).
  TensorRT 11 removed ``BuilderFlag.FP16/INT8`` and calibrators: an FP16 engine needs an FP16 ONNX file
  (e.g. ModelOpt AutoCast) and INT8 needs explicit Q/DQ nodes; asking otherwise is a ``BadInputError``
  that says so. Implicit (calibrator) INT8 is not offered on either version.
* Build: ``build_serialized_network`` (``build_engine`` was removed in 10); the plan is written as is
  and read back with ``Runtime.deserialize_cuda_engine``.
* Run: named I/O tensors (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``),
  ``set_input_shape`` for the dynamic batch, ``set_tensor_address`` + ``execute_async_v3`` on a CUDA
  stream (``execute_v2``/bindings are gone in 10).
* An optimisation profile covers the dynamic batch: min 1, opt ``batch``, max ``max_batch``.

Device memory, copies, streams and CUDA events come from cuda-python (``cuda.bindings.runtime``, or
``cuda.cudart`` in older releases), so no torch is needed. ``MissingDependencyError`` when TensorRT or
cuda-python is missing or no GPU is visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import BadInputError, CheckFailedError, EdgeCompressError, MissingDependencyError
from edgecompress.runtime.engine import RUNTIMES, Engine, EngineOptions, TensorSpec

PLAN_FILE = "engine.plan"


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError("TensorRT is not installed: pip install 'edgecompress[tensorrt]' "
                                     "(needs an NVIDIA GPU and driver)") from exc
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise MissingDependencyError("cuda-python is not installed: pip install cuda-python") from exc
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise MissingDependencyError(f"TensorRT sees no NVIDIA GPU (cudaGetDeviceCount: {err}, {count} devices)")
    return cudart


def _check(result, what: str):
    """cuda-python returns ``(err, *values)``; raise on a non-zero error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EdgeCompressError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


@dataclass(frozen=True)
class TrtBuildConfig:
    """``precision`` fp32|fp16|int8, the profile's ``batch`` (opt) and ``max_batch``, workspace MiB."""

    precision: str = "fp32"
    batch: int = 1
    max_batch: int = 8
    workspace_mib: int = 1024

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision={self.precision!r}: choose fp32, fp16 or int8")
        if not 1 <= self.batch <= self.max_batch:
            raise ValueError(f"batch={self.batch}, max_batch={self.max_batch}: need 1 <= batch <= max_batch")
        if self.workspace_mib < 16:
            raise ValueError(f"workspace_mib={self.workspace_mib}: must be >= 16")


def onnx_precision(path: Path) -> dict[str, bool]:
    """Whether an ONNX file holds explicit Q/DQ nodes and FP16 tensors (decides strong typing)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    return {"qdq": bool(ops & {"QuantizeLinear", "DequantizeLinear"}), "fp16": fp16}


def build_plan(onnx_path: str | Path, config: TrtBuildConfig = TrtBuildConfig()) -> tuple[bytes, dict]:
    """Parse the ONNX file and build a serialized engine; returns ``(plan bytes, report)``."""
    trt = _import_trt()
    _cudart()
    path = Path(onnx_path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such ONNX file")
    major = trt_major(trt)
    kind = onnx_precision(path)
    if config.precision == "int8" and not kind["qdq"]:
        raise BadInputError(f"{path}: INT8 needs explicit QuantizeLinear/DequantizeLinear nodes (quantize the "
                            "model first); calibrator-based implicit INT8 is not supported (removed in TensorRT 11)")
    if config.precision == "fp16" and major >= 11 and not kind["fp16"]:
        raise BadInputError(f"{path}: TensorRT {trt.__version__} builds strongly typed networks only; FP16 needs "
                            "an FP16 ONNX file (e.g. ModelOpt AutoCast), BuilderFlag.FP16 no longer exists")
    strongly_typed = major >= 11 or kind["qdq"] or kind["fp16"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and major < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        raise BadInputError(f"{path}: TensorRT {trt.__version__} cannot parse it: {_parser_errors(parser)}")
    bconfig = builder.create_builder_config()
    bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    if config.precision == "fp16" and not strongly_typed:
        bconfig.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10 only (weak typing)
    profile = builder.create_optimization_profile()
    inputs = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = tuple(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise BadInputError(f"{path}: input {t.name!r} has dynamic dimensions {shape} beyond the batch")
        rest = shape[1:]
        if shape[0] < 0:
            profile.set_shape(t.name, (1, *rest), (config.batch, *rest), (config.max_batch, *rest))
        inputs.append({"name": t.name, "shape": list(shape)})
    bconfig.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, bconfig)
    if plan is None:
        raise CheckFailedError(f"{path}: TensorRT {trt.__version__} failed to build an engine (see its log above)")
    report = {"tensorrt_version": trt.__version__, "precision": config.precision, "strongly_typed": strongly_typed,
              "profile": {"min": 1, "opt": config.batch, "max": config.max_batch}, "inputs": inputs,
              "gpu": _gpu_name()}
    return bytes(plan), report


def _parser_errors(parser) -> str:
    msgs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = ""
        if hasattr(e, "node_name"):  # TensorRT >= 10
            where = f"node {e.node_name()!r} (op {e.node_operator()}): "
        elif e.node() >= 0:
            where = f"node #{e.node()}: "
        msgs.append(where + e.desc())
    return "; ".join(msgs) or "no parser error recorded"


def _gpu_name() -> str:
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


class TrtEngine(Engine):
    """A deserialized TensorRT engine with device buffers sized for ``max_batch``."""

    runtime = "tensorrt"

    def __init__(self, plan: bytes, info: Mapping[str, Any] | None = None) -> None:
        trt = _import_trt()
        self.cudart = _cudart()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.trt_runtime = trt.Runtime(self.logger)
        self.engine = self.trt_runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BadInputError("TensorRT could not deserialize the plan (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.info = dict(info or {})
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins, outs = [], []
        for n in names:
            spec = TensorSpec(n, tuple(d if d >= 0 else "batch" for d in self.engine.get_tensor_shape(n)),
                              np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))).name)
            (ins if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else outs).append(spec)
        super().__init__(ins, outs)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _enqueue(self, feeds: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray, int]]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for spec in self.inputs:
            a = feeds[spec.name]
            self.context.set_input_shape(spec.name, a.shape)
            ptr = self._device(spec.name, a.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, h2d, self.stream), "cudaMemcpyAsync")
            self.context.set_tensor_address(spec.name, ptr)
        outs = []
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            host = np.empty(shape, dtype=spec.dtype)
            ptr = self._device(spec.name, host.nbytes)
            self.context.set_tensor_address(spec.name, ptr)
            outs.append((spec.name, host, ptr))
        if not self.context.execute_async_v3(self.stream):
            raise EdgeCompressError("TensorRT execute_async_v3 failed")
        return outs

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = self.cudart
        outs = self._enqueue(feeds)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for _, host, ptr in outs:
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream), "cudaMemcpyAsync")
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return [host for _, host, _ in outs]

    def measure(self, feeds: Mapping[str, np.ndarray], warmup: int, repeats: int) -> list[float]:
        """GPU milliseconds per ``execute_async_v3`` between two CUDA events (inputs already on the device)."""
        if warmup < 0 or repeats < 1:
            raise ValueError(f"warmup={warmup}, repeats={repeats}: need warmup >= 0 and repeats >= 1")
        cudart = self.cudart
        checked = self.check_feeds(feeds)
        self._run(checked)  # buffers allocated, shapes set, inputs copied
        for _ in range(warmup):
            self.context.execute_async_v3(self.stream)
        start = _check(cudart.cudaEventCreate(), "cudaEventCreate")
        stop = _check(cudart.cudaEventCreate(), "cudaEventCreate")
        samples = []
        try:
            for _ in range(repeats):
                _check(cudart.cudaEventRecord(start, self.stream), "cudaEventRecord")
                self.context.execute_async_v3(self.stream)
                _check(cudart.cudaEventRecord(stop, self.stream), "cudaEventRecord")
                _check(cudart.cudaEventSynchronize(stop), "cudaEventSynchronize")
                samples.append(float(_check(cudart.cudaEventElapsedTime(start, stop), "cudaEventElapsedTime")))
        finally:
            cudart.cudaEventDestroy(start)
            cudart.cudaEventDestroy(stop)
        return samples

    def settings(self) -> dict:
        return {"runtime": self.runtime, "version": self.trt.__version__, "timer": "CUDA events",
                **{k: self.info[k] for k in ("precision", "gpu", "strongly_typed", "profile") if k in self.info}}

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)


def check_parity(engine: Engine, onnx_path: Path, precision: str) -> dict[str, Any]:
    """Relative error vs onnxruntime; tolerance 1e-3 (fp32: TF32 may be used), 5e-2 (fp16), 0.25 (int8)."""
    from edgecompress.runtime.backend_tvm import check_against_onnxruntime

    rtol = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.25}[precision]
    return check_against_onnxruntime(engine, onnx_path, rtol)


def build_engine(onnx_path: str | Path, config: TrtBuildConfig, plan_path: str | Path | None = None,
                 check: bool = True) -> TrtEngine:
    """Build, optionally save the plan, deserialize, and check parity against onnxruntime."""
    plan, report = build_plan(onnx_path, config)
    if plan_path is not None:
        tmp = Path(str(plan_path) + ".tmp")
        tmp.write_bytes(plan)
        tmp.replace(plan_path)
    engine = TrtEngine(plan, info=report)
    if check:
        engine.info["parity"] = check_parity(engine, Path(onnx_path), config.precision)
    return engine


def load_plan(path: str | Path, info: Mapping[str, Any] | None = None) -> TrtEngine:
    return TrtEngine(Path(path).read_bytes(), info=info)


def _factory(path: Path, options: EngineOptions) -> Engine:
    extra = options.extra
    unknown = sorted(set(extra) - {"batch", "max_batch", "workspace_mib"})
    if unknown:
        raise BadInputError(f"unknown TensorRT option(s) {unknown} (known: batch, max_batch, workspace_mib)")
    config = TrtBuildConfig(options.precision, int(extra.get("batch", 1)), int(extra.get("max_batch", 8)),
                            int(extra.get("workspace_mib", 1024)))
    return build_engine(path, config)


RUNTIMES.add("tensorrt", _factory)


# -- bundles: engine.plan next to model.onnx ---------------------------------------------------------------

def _bundle_build(req):
    from edgecompress.runtime.bundle import BuiltPart

    config = TrtBuildConfig(precision=req.precision)
    engine = build_engine(req.onnx_path, config, plan_path=req.out_dir / PLAN_FILE)
    trt = _import_trt()
    return BuiltPart(PLAN_FILE, engine.inputs, engine.outputs, {"gpu": engine.info.get("gpu"),
                     "precision": req.precision}, trt.__version__, engine.info)


def _bundle_load(bundle_dir: Path, manifest: Mapping[str, Any], threads: int | None) -> Engine:
    engine_file = (manifest.get("engine") or {}).get("file") or PLAN_FILE
    return load_plan(bundle_dir / engine_file, info=manifest.get("compile"))


def _register_bundle_format() -> None:
    from edgecompress.runtime.bundle import BUNDLE_FORMATS, BundleFormat

    BUNDLE_FORMATS.add("tensorrt", BundleFormat(_bundle_build, _bundle_load))


_register_bundle_format()
__all__: Sequence[str] = ("TrtEngine", "TrtBuildConfig", "build_plan", "build_engine", "load_plan")
