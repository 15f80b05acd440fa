"""Q/DQ placement per target runtime, and verification of what the runtime really runs in INT8.

The Q/DQ insertion and calibration are onnxruntime.quantization's ``quantize_static`` (QDQ format);
what this module owns is the choice of arguments per runtime and the *check*: after the runtime's own
graph optimisation, which Conv/Gemm/MatMul layers of the FP32 graph compute in INT8 and which stayed
float. A layer left in float is listed by name, never counted as INT8.

Placements (one registered function per runtime, ``PLACEMENTS``):

- ``onnxruntime``: every supported op quantized (Conv, Gemm/MatMul, Add, pooling, ...), UINT8
  activations / INT8 symmetric per-channel weights, removable Relu/Clip folded into the preceding
  output's quantization range, so the CPU provider fuses QLinearConv/QLinearAdd/QGemm chains with no
  float islands. Verified by loading the file with ``ORT_ENABLE_ALL`` and reading the optimised graph
  (``optimized_model_filepath``).
- ``tensorrt``: explicit Q/DQ (TensorRT 10+/11 has no implicit INT8), symmetric INT8 activations
  (zero point 0, all TensorRT accepts) and per-channel weights on Conv/Gemm/MatMul inputs and on Add
  (so residual adds fuse). Verified statically: every Conv/Gemm/MatMul must read its activation and its
  weight through a DequantizeLinear with int8 zero point 0; no QLinear* ops.
- ``tvm``: the onnxruntime placement (standard QuantizeLinear/DequantizeLinear only, which TVM Relax's
  ONNX importer reads). Verified by importing into Relax and listing the ``conv2d``/``matmul`` input
  dtypes: a conv fed float32 is reported as float, whatever Q/DQ surround it.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgecompress.compress.int8.config import Int8Config
from edgecompress.errors import BadInputError
from edgecompress.registry import Registry

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ORT_INT8_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
                          "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
ORT_FLOAT_OPS = frozenset({"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})


@dataclass(frozen=True)
class Placement:
    """How to call ``quantize_static`` for a runtime, and how to verify the result."""

    name: str
    quantize_kwargs: Callable[[Int8Config], dict]
    verify: Callable[[Path, Path], dict]


PLACEMENTS: Registry[Placement] = Registry("INT8 placement")


def compute_layers(model: onnx.ModelProto) -> list[dict]:
    """The FP32 graph's Conv/ConvTranspose/Gemm/MatMul nodes: name, op type, and conv attributes."""
    inits = {i.name: i for i in model.graph.initializer}
    rows = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in COMPUTE_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        rows.append({"name": node.name or f"{node.op_type}_{i}", "op_type": node.op_type,
                     "weight_shape": list(w.dims) if w is not None else None,
                     "group": int(attrs.get("group", 1)), "kernel": list(attrs.get("kernel_shape", [])),
                     "stride": list(attrs.get("strides", []))})
    return rows


def require_quantizable(model: onnx.ModelProto, source: str) -> list[dict]:
    layers = compute_layers(model)
    if not layers:
        ops = sorted(Counter(n.op_type for n in model.graph.node))
        raise BadInputError(f"{source}: no quantizable layer (no {'/'.join(COMPUTE_OPS)} node; the graph has {ops})")
    return layers


def host_needs_reduce_range(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether 7-bit weights are needed on this host: x86 without VNNI saturates U8S8 pair sums.

    ``cpuinfo`` is the text of /proc/cpuinfo (read when None). Non-x86 hosts and hosts with
    ``avx512_vnni``/``avx_vnni``/``amx`` need no reduction.
    """
    import platform

    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
            return False, f"{platform.machine()} host: no U8S8 saturation"
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True, "x86 host whose CPU flags cannot be read: assuming no VNNI"
    flags = set(re.findall(r"[a-z0-9_]+", " ".join(
        line.split(":", 1)[1] for line in cpuinfo.splitlines() if line.startswith("flags") and ":" in line)))
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return False, "x86 host with VNNI: full-range INT8 weights"
    if flags:
        return True, "x86 host without VNNI (U8S8 vpmaddubsw saturates): 7-bit weights"
    return True, "x86 host whose CPU flags are unknown: assuming no VNNI, 7-bit weights"


def resolve_reduce_range(config: Int8Config) -> tuple[bool, str]:
    """``config.reduce_range`` if set, else the host rule for onnxruntime/TVM (TensorRT: never)."""
    if config.reduce_range is not None:
        return config.reduce_range, "set in Int8Config"
    if config.target_runtime == "tensorrt":
        return False, "TensorRT: full-range symmetric INT8"
    if config.target_runtime == "tvm":
        return False, "TVM: computes Q/DQ layers without int16 pair sums, full-range weights"
    return host_needs_reduce_range()


def _ort_kwargs(config: Int8Config) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType

    return {"quant_format": QuantFormat.QDQ, "per_channel": config.per_channel,
            "reduce_range": resolve_reduce_range(config)[0],
            "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "op_types_to_quantize": None,
            "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False,
                              "QDQKeepRemovableActivations": False, "ForceQuantizeNoInputCheck": True}}


def _trt_kwargs(config: Int8Config) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType

    return {"quant_format": QuantFormat.QDQ, "per_channel": config.per_channel, "reduce_range": False,
            "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
            "op_types_to_quantize": ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"],
            "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": True,
                              "QDQKeepRemovableActivations": True}}


def _base_name(name: str) -> str:
    return re.sub(r"(_token_\d+|_nchwc)+$", "", name)


def _layer_keys(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Names by which an optimised graph may refer to each compute layer: its node name, its output and
    the output of a directly following activation (onnxruntime names fused nodes after either)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    keys = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in COMPUTE_OPS:
            continue
        k = {node.name or f"{node.op_type}_{i}", node.output[0]}
        nxt = consumers.get(node.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type in ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid"):
            k.add(nxt[0].output[0])
        keys[node.name or f"{node.op_type}_{i}"] = k
    return keys


def verify_onnxruntime(int8_path: Path, fp32_path: Path, threads: int = 1) -> dict:
    """Load ``int8_path`` in onnxruntime (ORT_ENABLE_ALL) and classify each FP32 compute layer.

    A layer is ``int8`` when the optimised graph holds a QLinearConv/QGemm/... derived from it, ``float``
    when a float Conv/FusedConv/NCHWc Conv/Gemm/MatMul derived from it is left (onnxruntime names fused
    nodes ``<node or output name>_token_<n>`` / ``_nchwc``), ``unknown`` otherwise (counted as not INT8).
    """
    import onnxruntime as ort

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    layers = compute_layers(fp32)
    keys = _layer_keys(fp32)
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        so.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(int8_path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(optimized))
    runtime_ops = Counter(n.op_type for n in opt.graph.node)

    def names(ops: frozenset) -> set[str]:
        return {_base_name(x) for n in opt.graph.node if n.op_type in ops for x in (n.name, *n.output)}

    int8_names, float_names = names(ORT_INT8_OPS), names(ORT_FLOAT_OPS)
    per_layer = []
    for layer in layers:
        k = keys[layer["name"]]
        state = "int8" if k & int8_names else "float" if k & float_names else "unknown"
        per_layer.append({"name": layer["name"], "op_type": layer["op_type"], "runs_as": state})
    return _summary("onnxruntime ORT_ENABLE_ALL optimised graph (CPUExecutionProvider)", per_layer,
                    dict(runtime_ops.most_common()))


def verify_tensorrt(int8_path: Path, fp32_path: Path, threads: int = 1) -> dict:
    """Static check of the explicit-Q/DQ form TensorRT needs (no engine is built here).

    A Conv/Gemm/MatMul counts as ``int8`` when its activation and its weight both arrive through a
    DequantizeLinear whose zero point is int8 and 0; otherwise ``float``. QLinear* ops are rejected.
    """
    model = onnx.load(str(int8_path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    bad_ops = sorted({n.op_type for n in model.graph.node if n.op_type.startswith("QLinear")})
    if bad_ops:
        raise BadInputError(f"{int8_path}: TensorRT placement must not contain {bad_ops}")

    def symmetric_dq(tensor: str) -> bool:
        node = producers.get(tensor)
        if node is None or node.op_type != "DequantizeLinear":
            return False
        if len(node.input) < 3:
            return True  # zero point omitted = 0 (int8 when the input is int8)
        zp = inits.get(node.input[2])
        return zp is not None and zp.dtype.name == "int8" and not zp.any()

    per_layer = []
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            ok = len(node.input) > 1 and symmetric_dq(node.input[0]) and symmetric_dq(node.input[1])
            per_layer.append({"name": _base_name(node.name), "op_type": node.op_type,
                              "runs_as": "int8" if ok else "float"})
    ops = Counter(n.op_type for n in model.graph.node)
    return _summary("static check of explicit Q/DQ (symmetric int8 on activation and weight of each layer); "
                    "no TensorRT engine built here", per_layer, dict(ops.most_common()))


def verify_tvm(int8_path: Path, fp32_path: Path, threads: int = 1) -> dict:
    """Import into TVM Relax and report the dtype each conv2d/matmul computes in.

    A layer counts as ``int8`` only when the Relax op's data input is int8/uint8; TVM 0.27's importer
    turns DequantizeLinear into a float ``relax.dequantize`` feeding a float conv, which is reported as
    ``float`` (simulated quantization), as it runs.
    """
    try:
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError as exc:
        from edgecompress.errors import MissingDependencyError

        raise MissingDependencyError("the tvm placement check needs apache-tvm: pip install apache-tvm") from exc
    model = onnx.load(str(int8_path))
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    mod = from_onnx(model, shape_dict={model.graph.input[0].name: shape}, keep_params_in_input=False)
    # read dtypes from the printed Relax IR: "lvN: R.Tensor((...), dtype="float32") = R.nn.conv2d(lvA, lvB, ...)"
    text = mod.script()
    dtypes = dict(re.findall(r'(\w+): R\.Tensor\([^)]*\)?[^=]*dtype="(\w+)"\)\s*=', text))
    per_layer: list[dict] = []
    ops: Counter = Counter(re.findall(r"= (R\.[\w.]+)\(", text))
    for op, data in re.findall(r"= R\.(nn\.conv[123]d|nn\.conv2d_transpose|matmul)\((\w+),", text):
        dtype = dtypes.get(data, "unknown")
        per_layer.append({"name": f"relax.{op}#{len(per_layer)}", "op_type": f"relax.{op}",
                          "runs_as": "int8" if dtype in ("int8", "uint8") else "float", "input_dtype": dtype})
    return _summary("TVM Relax from_onnx import (before compilation)", per_layer, dict(ops.most_common()))


def _summary(how: str, per_layer: list[dict], runtime_ops: dict) -> dict:
    counts = Counter(row["runs_as"] for row in per_layer)
    return {"verified_by": how, "layers": len(per_layer), "int8_layers": counts.get("int8", 0),
            "float_layers": counts.get("float", 0), "unknown_layers": counts.get("unknown", 0),
            "float_layer_names": [r["name"] for r in per_layer if r["runs_as"] != "int8"],
            "per_layer": per_layer, "runtime_ops": runtime_ops}


PLACEMENTS.add("onnxruntime", Placement("onnxruntime", _ort_kwargs, verify_onnxruntime))
PLACEMENTS.add("tensorrt", Placement("tensorrt", _trt_kwargs, verify_tensorrt))
PLACEMENTS.add("tvm", Placement("tvm", _ort_kwargs, verify_tvm))
