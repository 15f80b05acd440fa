"""Quantization friendliness per operator: measured INT8/FP32 latency ratio of each distinct layer config.

For every distinct Conv/Gemm configuration in a model (op type, kernel, in/out channels, stride, groups,
input size, fused activation) a one-layer ONNX model (layer + its Relu/Clip) is built with random
weights, quantized exactly as ``quantize`` would for the runtime, and timed FP32 vs INT8 in one
interleaved run (``devices.timing.interleaved``). The SpaceEvo search uses these ratios to prefer
operators that actually speed up in INT8 on the target.

>>> rows = op_quant_friendliness(model, torch.randn(1, 3, 32, 32))   # doctest: +SKIP
>>> write_op_report(rows, "op_report")                                # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecompress.compress.int8.calibrate import CalibrationSet
from edgecompress.compress.int8.config import Int8Config
from edgecompress.errors import BadInputError
from edgecompress.fileio import write_json_atomic, write_text_atomic

ENGINES = ("onnxruntime",)
_ACTIVATIONS = ("Relu", "Clip")


def layer_configs(model: onnx.ModelProto) -> list[dict]:
    """Distinct Conv/Gemm configurations of a shape-inferred FP32 graph, with how often each occurs."""
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: OrderedDict[tuple, dict] = OrderedDict()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = list(inits[node.input[1]].dims)
        nxt = consumers.get(node.output[0], [])
        act = nxt[0].op_type if len(nxt) == 1 and nxt[0].op_type in _ACTIVATIONS else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        in_shape = shapes.get(node.input[0])
        if node.op_type == "Conv":
            if not in_shape or len(in_shape) != 4 or not all(in_shape[1:]):
                raise BadInputError(f"layer {node.name!r}: input shape unknown after shape inference; export the "
                                    f"model with a static input size")
            group = int(attrs.get("group", 1))
            cfg = {"op_type": "Conv", "kernel": list(attrs.get("kernel_shape", w[2:])), "in_channels": in_shape[1],
                   "out_channels": w[0], "stride": list(attrs.get("strides", [1, 1])), "groups": group,
                   "pads": list(attrs.get("pads", [0, 0, 0, 0])), "input_hw": in_shape[2:], "activation": act}
        else:
            trans_b = int(attrs.get("transB", 0))
            cfg = {"op_type": "Gemm", "kernel": [], "in_channels": w[1] if trans_b else w[0],
                   "out_channels": w[0] if trans_b else w[1], "stride": [], "groups": 1, "pads": [],
                   "input_hw": [], "activation": act}
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in cfg.items())
        if key in found:
            found[key]["count"] += 1
            found[key]["layers"].append(node.name)
        else:
            found[key] = {**cfg, "count": 1, "layers": [node.name]}
    return list(found.values())


def one_layer_model(cfg: dict, seed: int = 0) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """A single Conv (+Relu/Clip) or Gemm ONNX model with random weights, batch 1."""
    rng = np.random.default_rng(seed)
    if cfg["op_type"] == "Conv":
        shape = (1, cfg["in_channels"], *cfg["input_hw"])
        w = rng.standard_normal((cfg["out_channels"], cfg["in_channels"] // cfg["groups"], *cfg["kernel"]))
        node = helper.make_node("Conv", ["input", "w", "b"], ["y"], kernel_shape=cfg["kernel"], strides=cfg["stride"],
                                pads=cfg["pads"], group=cfg["groups"], name="layer")
    else:
        shape = (1, cfg["in_channels"])
        w = rng.standard_normal((cfg["out_channels"], cfg["in_channels"]))
        node = helper.make_node("Gemm", ["input", "w", "b"], ["y"], transB=1, name="layer")
    w = (w / np.sqrt(w[0].size)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array((0.1 * rng.standard_normal(cfg["out_channels"])).astype(np.float32), "b")]
    nodes = [node]
    if cfg["activation"] == "Relu":
        node.output[0] = "pre"
        nodes.append(helper.make_node("Relu", ["pre"], ["y"], name="act"))
    elif cfg["activation"] == "Clip":
        node.output[0] = "pre"
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["pre", "lo", "hi"], ["y"], name="act"))
    graph = helper.make_graph(nodes, "one_layer", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_empty_tensor_value_info("y")], inits)
    graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model, shape


def _fp32_graph(model: Any, example: Any, workdir: Path) -> onnx.ModelProto:
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise BadInputError(f"{model}: no such ONNX file")
        return onnx.load(str(model))
    from edgecompress.export.onnx import export_onnx

    path = workdir / "model.onnx"
    export_onnx(model, example, path, dynamic_batch=False)
    return onnx.load(str(path))


def op_quant_friendliness(model: Any, example: Any = None, engine: str = "onnxruntime",
                          config: Int8Config = Int8Config(), threads: int = 2, repeats: int = 20,
                          rounds: int = 3) -> list[dict]:
    """Measure the INT8/FP32 speed of each distinct layer configuration of ``model`` on ``engine``.

    ``model`` is an nn.Module (with ``example`` input, batch 1) or an FP32 ``.onnx`` path. Returns one row per
    configuration: its attributes, ``count`` in the model, FP32 and INT8 min/median ms and
    ``speedup = median_fp32 / median_int8`` (>1: INT8 is faster), ``int8`` (whether the runtime fused it).
    """
    if engine not in ENGINES:
        raise BadInputError(f"engine={engine!r}: the operator report measures on {ENGINES} only so far")
    from edgecompress.compress.int8.api import _ort_session, quantize_onnx
    from edgecompress.devices.timing import interleaved

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        configs = layer_configs(_fp32_graph(model, example, workdir))
        if not configs:
            raise BadInputError("the model has no Conv/Gemm layer with constant weights to report on")
        rng = np.random.default_rng(0)
        for i, cfg in enumerate(configs):
            proto, shape = one_layer_model(cfg, seed=i)
            fp32 = workdir / f"layer{i}_fp32.onnx"
            int8 = workdir / f"layer{i}_int8.onnx"
            onnx.save(proto, str(fp32))
            calib = CalibrationSet(rng.standard_normal((8, *shape[1:])).astype(np.float32), None)
            placed = quantize_onnx(fp32, calib, config, int8)
            feed = {"input": calib.x[:1]}
            s32, s8 = _ort_session(fp32, threads), _ort_session(int8, threads)
            t = interleaved({"fp32": lambda s=s32, f=feed: s.run(None, f), "int8": lambda s=s8, f=feed: s.run(None, f)},
                            warmup=3, repeats=repeats, rounds=rounds)
            row = {k: v for k, v in cfg.items() if k != "layers"}
            row.update({"example_layer": cfg["layers"][0], "int8": placed["int8_layers"] == 1,
                        "fp32_ms": {"min": min(t["fp32"]), "median": statistics.median(t["fp32"])},
                        "int8_ms": {"min": min(t["int8"]), "median": statistics.median(t["int8"])}})
            row["speedup"] = row["fp32_ms"]["median"] / row["int8_ms"]["median"]
            row.update({"source": "measured", "engine": engine, "threads": threads,
                        "timing": f"interleaved, {rounds} rounds x {repeats} runs, batch 1"})
            rows.append(row)
    return rows


def _describe(row: dict) -> str:
    if row["op_type"] == "Gemm":
        return f"Gemm {row['in_channels']}->{row['out_channels']}"
    kind = "dw" if row["groups"] == row["in_channels"] and row["groups"] > 1 else f"g{row['groups']}"
    k = "x".join(map(str, row["kernel"]))
    return (f"Conv {k} {kind} {row['in_channels']}->{row['out_channels']} s{row['stride'][0]} "
            f"@{'x'.join(map(str, row['input_hw']))}" + (f" +{row['activation']}" if row["activation"] else ""))


def write_op_report(rows: list[dict], out_dir: str | Path, title: str = "INT8 friendliness per operator") -> Path:
    """Write ``op_report.json`` and ``op_report.md`` (one table row per configuration) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "op_report.json", {"rows": rows})
    head = rows[0] if rows else {}
    lines = [f"# {title} (measured)", "",
             f"Engine {head.get('engine', '?')}, {head.get('threads', '?')} threads, {head.get('timing', '')}; "
             "speedup = FP32 median / INT8 median (>1: INT8 faster). The INT8 time includes quantizing the layer's "
             "input and dequantizing its output (the one-layer model's boundary), which a fully INT8 chain "
             "does not pay, so small layers read pessimistic.", "",
             "| layer config | count | INT8 fused | FP32 ms (min/med) | INT8 ms (min/med) | speedup |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_describe(r)} | {r['count']} | {'yes' if r['int8'] else 'NO'} | "
                     f"{r['fp32_ms']['min']:.3f} / {r['fp32_ms']['median']:.3f} | "
                     f"{r['int8_ms']['min']:.3f} / {r['int8_ms']['median']:.3f} | {r['speedup']:.2f}x |")
    write_text_atomic(out / "op_report.md", "\n".join(lines) + "\n")
    return out / "op_report.json"
