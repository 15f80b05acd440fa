"""onnxruntime's fixed costs on this host, measured with synthetic ONNX chains: per call, per node, per group.

    .venv/bin/python bench/profiler/overheads.py     # ~5 s; writes overheads.json here

Why: the roofline in ``devices.estimate`` fits one per-node term (``node_us``, ~4 us on this host) and one
per-call term to the zoo models. Are those what onnxruntime spends dispatching a node, or stand-ins for
something else? Here they are measured directly, on models made of nothing but the overhead:

- **data-movement node**: chains of ``K`` Mul/Add on a 16-element tensor;
- **MAC node**: chains of ``K`` 1x1 Convs, 8 -> 8 channels on 2x2 (256 MACs each);
- **extra group**: chains of grouped 1x1 Convs, 4 channels per group, at 2 and 8 groups (onnxruntime
  runs one GEMM per group): (slope at 8 groups - slope at 2) / 6;
- **call**: the Mul/Add chain's intercept less one node.

Every chain length is timed round-robin with the others (``devices.timing.interleaved``); the figure is the
10th percentile of all runs (the fast level of a shared machine); a per-node cost is the least-squares
slope over ``K``. Source: measured, this host, onnxruntime, 1 thread.

>>> sorted(chain_models((1, 2)))
['conv_1', 'conv_2', 'group2_1', 'group2_2', 'group8_1', 'group8_2', 'move_1', 'move_2']
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

CHAIN_LENGTHS = (1, 9, 17, 33)


def _graph(name: str, nodes: list, inits: list, shape: list[int]):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, shape)
    model = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def move_chain(k: int):
    """``k`` alternating Mul/Add by constants on a (1, 16) tensor."""
    from onnx import helper, numpy_helper

    c = numpy_helper.from_array(np.full((1, 16), 0.5, np.float32), "c")
    nodes, prev = [], "x"
    for i in range(k):
        nodes.append(helper.make_node("Mul" if i % 2 == 0 else "Add", [prev, "c"], [f"t{i}"]))
        prev = f"t{i}"
    return _graph(f"move_{k}", nodes, [c], [1, 16])


def conv_chain(k: int, groups: int = 1, per_group: int = 8):
    """``k`` 1x1 Convs with ``groups`` groups of ``per_group`` channels on a 2x2 map."""
    from onnx import helper, numpy_helper

    ch = groups * per_group
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (ch, per_group, 1, 1)).astype(np.float32), "w")
    nodes, prev = [], "x"
    for i in range(k):
        nodes.append(helper.make_node("Conv", [prev, "w"], [f"t{i}"], group=groups))
        prev = f"t{i}"
    return _graph(f"conv{groups}_{k}", nodes, [w], [1, ch, 2, 2])


def chain_models(lengths: tuple[int, ...] = CHAIN_LENGTHS) -> dict[str, object]:
    """Every synthetic model, by name ``<family>_<K>``, for each chain length ``K`` in ``lengths``."""
    out = {}
    for k in lengths:
        out[f"move_{k}"] = move_chain(k)
        out[f"conv_{k}"] = conv_chain(k)
        out[f"group2_{k}"] = conv_chain(k, groups=2, per_group=4)
        out[f"group8_{k}"] = conv_chain(k, groups=8, per_group=4)
    return out


def _slope(ks: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ``ms`` over ``ks``."""
    slope, intercept = np.polyfit(ks, ms, 1)
    return float(slope), float(intercept)


def measure_overheads(threads: int = 1, repeats: int = 200, rounds: int = 3, percentile: float = 10.0) -> dict:
    """Measured ``call_us``, ``node_us``, ``move_node_us``, ``group_us`` of onnxruntime on this host."""
    import onnxruntime as ort

    from edgecompress.devices.timing import interleaved

    models = chain_models()
    fns = {}
    for name, model in models.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        fns[name] = (lambda s=sess, f=feeds: s.run(None, f))
    t0 = time.time()
    samples = interleaved(fns, warmup=20, repeats=repeats, rounds=rounds)
    ms = {n: float(np.percentile(v, percentile)) for n, v in samples.items()}
    ks = np.array(CHAIN_LENGTHS, dtype=np.float64)
    fam = {f: np.array([ms[f"{f}_{k}"] for k in CHAIN_LENGTHS]) for f in ("move", "conv", "group2", "group8")}
    move, move_icpt = _slope(ks, fam["move"])
    conv, _ = _slope(ks, fam["conv"])
    g2, _ = _slope(ks, fam["group2"])
    g8, _ = _slope(ks, fam["group8"])
    group = (g8 - g2) / 6.0  # 6 more groups per node
    return {"source": "measured", "runtime": "onnxruntime", "version": ort.__version__, "threads": threads,
            "call_us": max(move_icpt - move, 0.0) * 1e3, "node_us": max(conv, 0.0) * 1e3,
            "move_node_us": max(move, 0.0) * 1e3, "group_us": max(group, 0.0) * 1e3,
            "method": (f"synthetic ONNX chains of K = {list(CHAIN_LENGTHS)} nodes, interleaved {rounds} x {repeats} "
                       f"runs, p{percentile:g}; per-node cost = least-squares slope over K, call = intercept of "
                       "the Mul/Add chain minus one node"),
            "chain_ms": ms, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    result = {"what": "onnxruntime fixed costs from synthetic chains (bench/profiler/overheads.py)",
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "load_average": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
              **measure_overheads(repeats=500, rounds=5)}
    out = Path(__file__).parent / "overheads.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print({k: round(result[k], 2) for k in ("call_us", "node_us", "move_node_us", "group_us")}, f"-> {out}")


if __name__ == "__main__":
    main()
