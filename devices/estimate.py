"""Predicted latency and estimated energy from an ONNX graph and a device profile: a per-layer roofline.

Hand-written (no library predicts latency from an ONNX graph and our profiles); pure functions over
``LayerCost`` records, no torch.

Per layer ``l`` (an ONNX node, shapes from ``onnx.shape_inference`` with the batch fixed):

- ``MACs_l``: Conv ``N*C_out*H_out*W_out*(C_in/groups)*k_h*k_w``; ConvTranspose the same over the
  input; Gemm/MatMul ``(output elements) * K``; every other op 0.
- ``bytes_l``: every input (activations and weights) plus every output, at its dtype's size: the
  data a layer moves if nothing stays in cache (the data-movement term E2GC argues about).
- ``t_node`` is paid once per kernel call: once per node, and once per group for a grouped, not
  depthwise, convolution (onnxruntime's CPU Conv runs one GEMM per group; E2GC layers have many).
- An activation (``FUSED_ACTIVATIONS``) or a residual ``Add`` that consumes the only use of a
  Conv/Gemm/MatMul output (or of one already fused into it) is not a layer: onnxruntime (Conv+Add+
  activation fusion), TVM and TensorRT fuse it into the producer.
- ``t_call`` is paid once per inference: the runtime's fixed cost of one run call (binding the inputs,
  allocating the outputs, crossing from Python into the runtime); it is most of a tiny model's time.
- ``t_compute = 2*MACs_l / (eta_c * peak)``, ``t_memory = bytes_l / (eta * bandwidth)`` and
  ``t_l = max(t_compute, t_memory) + t_node``, where ``eta = eta_m`` when the layer's working set
  ``bytes_l`` fits in ``cache_mb`` (it is served from cache, faster than the DRAM copy bandwidth) and
  ``eta = eta_d`` when it does not (streamed from DRAM). In cache, layers without MACs (Slice, Mul, Pad,
  pooling: pure data movement, each element touched once by a generic kernel) take ``eta_e`` instead.

**max, not sum.** Within a layer the cores compute while the prefetchers stream the next tiles, so a
layer is bound by the slower of the two (the roofline model, Williams et al. 2009); layers run one
after another, so the model's latency is the sum over layers, plus ``t_call``. A sum of the two terms would count the
overlapped time twice and over-predict compute-heavy layers.

**Calibration.** ``eta_c`` (fraction of peak the runtime reaches), ``eta_m`` and ``eta_d`` (effective
bandwidth in and beyond the cache over the copy bandwidth), ``eta_e`` (the same for data-movement
layers), ``cache_mb``, ``t_node`` (per-node dispatch overhead) and ``t_call`` are fitted to measured latencies
(``fit_calibration``, least squares on the log of predicted / measured, so over- and under-prediction
weigh alike).
Without a fit the figures are the raw roofline (``eta=1``, ``t_node=0``), a lower bound. A device that
is not attached takes the calibration of the host of the same kind, with ``t_node`` and ``t_call``
scaled by the clock ratio; the result says so. Every figure is labelled ``predicted`` (latency) or
``estimated`` (energy) and never ``measured``.

Energy: ``E = P_load * t`` per layer, with the profile's load power; idle power is reported beside it.

>>> costs = [LayerCost("conv", "Conv", macs=10**6, bytes_moved=10**5)]
>>> round(predict_latency(costs, 10.0, 5.0)["latency_ms"], 3)   # 2e6/10e9 = 0.2 ms vs 1e5/5e9 = 0.02 ms
0.2
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgecompress.errors import BadInputError

FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh")
_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# in cache a layer's data streams at least as fast as the DRAM copy bandwidth (the large copy the host
# profile measures): a lower bound on eta_m in the fit. Unbounded, the fit traded a slow in-cache memory
# term against the node overhead on the tiny models (bench/profiler: mobilenetv2_cifar_tiny left out
# was predicted +69%; with the bound, +14%).
ETA_M_MIN = 1.0
CACHE_MB_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass(frozen=True)
class LayerCost:
    """One node's work: multiply-accumulates and bytes read + written."""

    name: str
    op_type: str
    macs: int
    bytes_moved: int
    params: int = 0
    weight_bytes: int = 0
    dispatches: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """Fitted efficiencies: ``eta_c`` of peak compute, ``eta_m``/``eta_d`` of copy bandwidth for layers
    whose working set fits in ``cache_mb`` / does not, ``node_us`` per node, ``call_us`` per inference."""

    eta_c: float = 1.0
    eta_m: float = 1.0
    eta_d: float = 1.0
    node_us: float = 0.0
    cache_mb: float = 0.0
    source: str = "uncalibrated"
    ref: str = "raw roofline: peak compute and copy bandwidth, no overhead (a lower bound)"
    # the peak and bandwidth the efficiencies were fitted against (used instead of a fresh measurement
    # of the same device, so a noisy re-measurement does not shift the prediction)
    fitted_peak_gflops: float | None = None
    fitted_bandwidth_gbs: float | None = None
    eta_e: float = 1.0
    call_us: float = 0.0

    def __post_init__(self) -> None:
        if not (self.eta_c > 0 and math.isfinite(self.eta_c)):
            raise ValueError(f"eta_c={self.eta_c}: must be > 0")
        if not (self.eta_m > 0 and math.isfinite(self.eta_m)):
            raise ValueError(f"eta_m={self.eta_m}: must be > 0")
        if not (self.eta_d > 0 and math.isfinite(self.eta_d)):
            raise ValueError(f"eta_d={self.eta_d}: must be > 0")
        if not (self.eta_e > 0 and math.isfinite(self.eta_e)):
            raise ValueError(f"eta_e={self.eta_e}: must be > 0")
        if self.node_us < 0:
            raise ValueError(f"node_us={self.node_us}: must be >= 0")
        if self.call_us < 0:
            raise ValueError(f"call_us={self.call_us}: must be >= 0")

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- ONNX graph -> costs

def _static_model(model, batch: int):
    """A copy of ``model`` with every symbolic input dim set to ``batch``, shapes inferred."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError / ValidationError
        raise BadInputError(f"ONNX shape inference failed: {str(exc).splitlines()[0]}") from None


def layer_costs(model_or_path, batch: int = 1) -> list[LayerCost]:
    """Per-node MACs and bytes of an ONNX model (a path or a ``ModelProto``) at ``batch``."""
    import onnx

    if batch < 1:
        raise ValueError(f"batch={batch}: must be >= 1")
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise BadInputError(f"{path}: no such ONNX file")
        model = onnx.load(str(path))
    else:
        model = model_or_path
    m = _static_model(model, batch)
    g = m.graph
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            shapes[vi.name] = (dims, t.elem_type)
    inits = {i.name: (tuple(i.dims), i.data_type) for i in g.initializer}
    shapes.update(inits)
    fusable = set()  # outputs of a Conv/Gemm/MatMul or of a node fused into one
    consumers: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            consumers[x] = consumers.get(x, 0) + 1
    costs = []
    for i, node in enumerate(g.node):
        if node.op_type == "Constant":
            continue
        if node.op_type in _MAC_OPS:
            fusable.update(node.output)
        elif ((node.op_type in FUSED_ACTIVATIONS and node.input and node.input[0] in fusable
               and consumers.get(node.input[0]) == 1)
              or (node.op_type == "Add" and any(x in fusable and consumers.get(x) == 1 for x in node.input))):
            fusable.update(node.output)
            continue  # fused into the Conv/Gemm before it (onnxruntime's Conv+Add+activation fusion)
        name = node.name or f"{node.op_type}_{i}"
        ins = [shapes.get(x) for x in node.input if x]
        outs = [shapes.get(x) for x in node.output if x]
        if any(s is None or min(s[0], default=0) < 0 for s in outs):
            raise BadInputError(f"node {name!r} ({node.op_type}): output shape unknown after shape inference")
        nbytes = sum(_nbytes(s) for s in ins if s is not None and min(s[0], default=0) >= 0)
        nbytes += sum(_nbytes(s) for s in outs)
        params = sum(int(np.prod(inits[x][0])) for x in node.input if x in inits)
        wbytes = sum(_nbytes(inits[x]) for x in node.input if x in inits)
        costs.append(LayerCost(name, node.op_type, _macs(node, ins, outs), nbytes, params, wbytes,
                               _dispatches(node, ins)))
    return costs


def _nbytes(shape_type: tuple[tuple[int, ...], int]) -> int:
    dims, elem = shape_type
    return int(np.prod(dims, dtype=np.int64)) * _DTYPE_BYTES.get(elem, 4)


def _dispatches(node, ins) -> int:
    """Kernel calls a node costs: ``groups`` for a grouped, not depthwise, Conv (one GEMM per group), else 1."""
    if node.op_type != "Conv":
        return 1
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    w = ins[1][0] if len(ins) > 1 and ins[1] is not None else ()
    depthwise = len(w) > 1 and w[1] == 1
    return int(groups) if groups > 1 and not depthwise else 1


def _macs(node, ins, outs) -> int:
    out = outs[0][0] if outs else ()
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        w = ins[3 if node.op_type == "QLinearConv" else 1][0]
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type == "ConvTranspose":
        x, w = ins[0][0], ins[1][0]
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a = ins[0][0]
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[-2] if trans_a else a[-1]
        return int(np.prod(out, dtype=np.int64)) * int(k)
    return 0


# ----------------------------------------------------------------------------- costs -> time, energy

def layer_times_s(costs: Sequence[LayerCost], peak_gflops: float, bandwidth_gbs: float,
                  calibration: Calibration = Calibration()) -> np.ndarray:
    """(L, 3) array of ``t_compute``, ``t_memory``, ``t_layer`` in seconds (roofline max + node overhead)."""
    if peak_gflops <= 0 or bandwidth_gbs <= 0:
        raise ValueError(f"peak_gflops={peak_gflops}, bandwidth_gbs={bandwidth_gbs}: both must be > 0")
    a = _arrays(costs, peak_gflops, bandwidth_gbs)
    c = calibration
    t_c, t_m, t = _layer_times(a, c.eta_c, c.eta_m, c.eta_d, c.eta_e, c.node_us * 1e-3, c.cache_mb)
    return np.stack([t_c, t_m, t], axis=1) * 1e-3 if len(costs) else np.zeros((0, 3))


def _arrays(costs: Sequence[LayerCost], peak_gflops: float, bandwidth_gbs: float) -> dict[str, np.ndarray]:
    """Per-layer raw times in ms at efficiency 1, bytes, MAC/no-MAC flag and kernel calls, each (L,)."""
    macs = np.array([c.macs for c in costs], dtype=np.float64)
    nbytes = np.array([c.bytes_moved for c in costs], dtype=np.float64)
    return {"t_c": 2e3 * macs / (peak_gflops * 1e9), "t_m": 1e3 * nbytes / (bandwidth_gbs * 1e9), "bytes": nbytes,
            "mac": macs > 0, "calls": np.array([c.dispatches for c in costs], dtype=np.float64)}


def _layer_times(a: dict[str, np.ndarray], eta_c: float, eta_m: float, eta_d: float, eta_e: float,
                 node_ms: float, cache_mb: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_compute, t_memory, t_layer) in ms, each (L,): the formula in the module docstring."""
    eta = np.where(a["bytes"] <= cache_mb * 1e6, np.where(a["mac"], eta_m, eta_e), eta_d)  # (L,)
    t_c = a["t_c"] / eta_c
    t_m = a["t_m"] / eta
    return t_c, t_m, np.maximum(t_c, t_m) + node_ms * a["calls"]


def predict_latency(costs: Sequence[LayerCost], peak_gflops: float, bandwidth_gbs: float,
                    calibration: Calibration = Calibration(), top: int = 10) -> dict:
    """``{"source": "predicted", "latency_ms", "call_ms", "compute_bound_layers", "layers": [...top slowest]}``.

    ``latency_ms`` is the sum of the layer times plus the per-inference call overhead ``call_ms``.
    """
    times = layer_times_s(costs, peak_gflops, bandwidth_gbs, calibration)
    total = float(times[:, 2].sum()) + calibration.call_us * 1e-6
    order = np.argsort(-times[:, 2])[:top]
    layers = [{"name": costs[i].name, "op_type": costs[i].op_type, "macs": costs[i].macs,
               "bytes": costs[i].bytes_moved, "ms": float(times[i, 2] * 1e3),
               "bound": "compute" if times[i, 0] >= times[i, 1] else "memory"} for i in order]
    return {"source": "predicted", "latency_ms": total * 1e3, "call_ms": calibration.call_us * 1e-3,
            "macs": int(sum(c.macs for c in costs)), "bytes_moved": int(sum(c.bytes_moved for c in costs)),
            "nodes": len(costs), "compute_bound_layers": int(np.sum(times[:, 0] >= times[:, 1])),
            "peak_gflops": peak_gflops, "bandwidth_gbs": bandwidth_gbs, "calibration": calibration.as_dict(),
            "layers": layers}


def estimate_energy(latency_s: float, load_power_w: float | None, idle_power_w: float | None = None,
                    latency_source: str = "predicted") -> dict:
    """``E = P_load * t`` per inference, labelled ``estimated``; idle power beside it."""
    if load_power_w is None:
        raise BadInputError("no load power figure for this device: cannot estimate energy")
    if latency_s < 0:
        raise ValueError(f"latency_s={latency_s}: must be >= 0")
    return {"source": "estimated", "joules_per_inference": load_power_w * latency_s,
            "formula": f"load power {load_power_w:g} W x {latency_source} latency {latency_s * 1e3:.4g} ms",
            "load_power_w": load_power_w, "idle_power_w": idle_power_w, "latency_source": latency_source}


# ----------------------------------------------------------------------------- calibration

def _rel_errors(pred_ms: np.ndarray, measured_ms: np.ndarray) -> np.ndarray:
    return (pred_ms - measured_ms) / measured_ms


def fit_calibration(costs_per_model: Sequence[Sequence[LayerCost]], measured_ms: Sequence[float],
                    peak_gflops: float, bandwidth_gbs: float, ref: str = "") -> Calibration:
    """Fit ``eta_c, eta_m, eta_d, eta_e, node_us, call_us, cache_mb`` to measured latencies: least squares
    on ``log(predicted / measured)``.

    ``eta_m`` is bounded below by ``ETA_M_MIN`` (in cache, at least the DRAM copy bandwidth).
    First an exhaustive log-scale grid (``eta_c``, ``eta_m``, ``eta_d`` over 1e-2..1e2 with
    ``eta_e = eta_m``, ``node_us`` 0..50 us, ``call_us`` 0..200 us, ``cache_mb`` in ``CACHE_MB_GRID``),
    then, from the best grid point of each of the three best ``cache_mb`` values, Nelder-Mead (scipy)
    over the logs of the six continuous parameters.
    """
    m = np.asarray(measured_ms, dtype=np.float64)
    if len(costs_per_model) != m.size or m.size < 2:
        raise ValueError("fit_calibration needs two or more models with one measurement each")
    if np.any(m <= 0):
        raise ValueError("measured latencies must be > 0")
    arrays = [_arrays(c, peak_gflops, bandwidth_gbs) for c in costs_per_model]
    n = np.array([a["calls"].sum() for a in arrays])  # (M,)
    etas = np.logspace(-2, 2, 25)  # (E,) shared grid for eta_c, eta_m, eta_d
    nodes_ms = np.concatenate([[0.0], np.logspace(-1, np.log10(50), 20)]) * 1e-3  # (N,)
    calls_ms = np.concatenate([[0.0], np.logspace(0, np.log10(200), 8)]) * 1e-3  # (C,)
    log_m = np.log(m)[:, None, None, None, None]  # (M, 1, 1, 1, 1)
    per_cache = []
    for cache_mb in CACHE_MB_GRID:
        best = (math.inf, None)
        t_mem = []  # per model (L, A, D) in ms: eta_m in cache (eta_e tied to it here), eta_d beyond
        for a in arrays:
            fast = (a["bytes"] <= cache_mb * 1e6)[:, None, None]
            t_mem.append(np.where(fast, a["t_m"][:, None, None] / np.maximum(etas, ETA_M_MIN)[None, :, None],
                                  a["t_m"][:, None, None] / etas[None, None, :]))
        for eta_c in etas:
            r = np.stack([np.maximum(a["t_c"][:, None, None] / eta_c, tm).sum(axis=0)
                          for a, tm in zip(arrays, t_mem, strict=True)])  # (M, A, D)
            pred = (r[..., None, None] + n[:, None, None, None, None] * nodes_ms[:, None]
                    + calls_ms)  # (M, A, D, N, C)
            loss = ((np.log(np.maximum(pred, 1e-12)) - log_m) ** 2).sum(axis=0)  # (A, D, N, C)
            ai, di, ni, ci = np.unravel_index(np.argmin(loss), loss.shape)
            if loss[ai, di, ni, ci] < best[0]:
                start = (eta_c, max(etas[ai], ETA_M_MIN), etas[di], etas[ai], max(nodes_ms[ni], 1e-6),
                         max(calls_ms[ci], 1e-5))
                best = (float(loss[ai, di, ni, ci]), start)
        per_cache.append((best[0], cache_mb, best[1]))
    from scipy.optimize import minimize

    def loss_fn(theta: np.ndarray, cache_mb: float) -> float:
        ec, em, ed, ee, nd, call = np.exp(np.clip(theta, -12.0, 8.0))  # unbounded, exp overflowed to inf
        em = max(em, ETA_M_MIN)
        pred = np.array([_layer_times(a, ec, em, ed, ee, nd, cache_mb)[2].sum() + call for a in arrays])
        return float(np.sum((np.log(np.maximum(pred, 1e-12)) - np.log(m)) ** 2))

    final = (math.inf, None, None)
    for _, cache_mb, start in sorted(per_cache, key=lambda t: t[0])[:3]:
        res = minimize(loss_fn, np.log(np.array(start, dtype=np.float64)), args=(cache_mb,), method="Nelder-Mead",
                       options={"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-8})
        if res.fun < final[0]:
            final = (float(res.fun), cache_mb, np.exp(np.clip(res.x, -12.0, 8.0)))
    _, cache_mb, (eta_c, eta_m, eta_d, eta_e, node_ms, call_ms) = final
    eta_m = max(eta_m, ETA_M_MIN)
    return Calibration(float(eta_c), float(eta_m), float(eta_d), float(node_ms) * 1e3, float(cache_mb), "measured",
                       ref or f"fitted to {m.size} measured models", peak_gflops, bandwidth_gbs, float(eta_e),
                       float(call_ms) * 1e3)


def cached_calibration(device: str, cache: Path | None = None) -> Calibration | None:
    """A calibration saved by ``save_calibration`` for ``device``, or ``None``."""
    from edgecompress.devices.profiles import cache_dir

    path = (cache or cache_dir()) / f"calibration-{device}.json"
    if not path.is_file():
        return None
    try:
        return Calibration(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BadInputError(f"{path}: not a calibration file ({exc}); delete it to refit") from None


def save_calibration(device: str, calibration: Calibration, cache: Path | None = None) -> Path:
    from edgecompress.devices.profiles import cache_dir
    from edgecompress.fileio import write_json_atomic

    path = (cache or cache_dir()) / f"calibration-{device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, calibration.as_dict())
    return path


def _base_calibration(profile, host=None, cache: Path | None = None) -> Calibration:
    own = cached_calibration(profile.name, cache)
    if own is not None:
        return own
    if profile.calibration:
        return Calibration(**profile.calibration)
    if host is not None and host.name != profile.name and host.kind == profile.kind:
        base = _base_calibration(host, None, cache)
        if base.source != "uncalibrated":
            host_clock, clock = host.value("clock_ghz"), profile.value("clock_ghz")
            scale = host_clock / clock if host_clock and clock else 1.0
            return replace(base, node_us=base.node_us * scale, call_us=base.call_us * scale, source="transferred",
                           fitted_peak_gflops=None, fitted_bandwidth_gbs=None,
                           ref=f"host calibration ({base.source}: {base.ref}) applied to {profile.name}, "
                               f"node and call overheads scaled by clock ratio {scale:.2f}; "
                               "an assumption until measured")
    return Calibration()


def calibration_for(profile, host=None, cache: Path | None = None, use_ratios: bool = True) -> Calibration:
    """The best calibration for ``profile``.

    Its own fit (cache, then YAML); else the host's (same kind), ``transferred``; else none. Then, for
    a calibration that is not the device's own fit, measured/predicted ratios recorded for this device
    (``record_ratio``, e.g. by profiling over RPC) scale every term by their geometric mean.
    """
    base = _base_calibration(profile, host, cache)
    if not use_ratios or base.source == "measured":
        return base
    ratio = measured_ratio(profile.name, cache)
    if ratio is None:
        return base
    k, count = ratio
    return scale_calibration(base, k, f"{base.source} calibration ({base.ref}) scaled by {k:.3f}, the geometric mean "
                                      f"of {count} measured/predicted ratio(s) on {profile.name}")


def scale_calibration(cal: Calibration, k: float, ref: str) -> Calibration:
    """Every predicted time multiplied by ``k``: efficiencies divided by it, node and call overheads multiplied."""
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"k={k}: must be > 0")
    return replace(cal, eta_c=cal.eta_c / k, eta_m=cal.eta_m / k, eta_d=cal.eta_d / k, eta_e=cal.eta_e / k,
                   node_us=cal.node_us * k, call_us=cal.call_us * k, source="ratio-calibrated", ref=ref)


def record_ratio(device: str, model_key: str, measured_ms: float, predicted_ms: float,
                 cache: Path | None = None) -> Path:
    """Remember a measured/predicted latency ratio for ``device`` (one per model key, the last wins)."""
    from edgecompress.devices.profiles import cache_dir
    from edgecompress.fileio import write_json_atomic

    if measured_ms <= 0 or predicted_ms <= 0:
        raise ValueError(f"measured_ms={measured_ms}, predicted_ms={predicted_ms}: both must be > 0")
    path = (cache or cache_dir()) / f"ratios-{device}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[model_key] = {"measured_ms": measured_ms, "predicted_ms": predicted_ms, "ratio": measured_ms / predicted_ms}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
    return path


def measured_ratio(device: str, cache: Path | None = None) -> tuple[float, int] | None:
    """(geometric mean of the recorded measured/predicted ratios, their count) or ``None``."""
    from edgecompress.devices.profiles import cache_dir

    path = (cache or cache_dir()) / f"ratios-{device}.json"
    if not path.is_file():
        return None
    try:
        ratios = [float(v["ratio"]) for v in json.loads(path.read_text()).values()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"{path}: not a ratio file ({exc}); delete it") from None
    ratios = [r for r in ratios if r > 0 and math.isfinite(r)]
    return (float(np.exp(np.mean(np.log(ratios)))), len(ratios)) if ratios else None


def predict_for_device(model_or_path, profile, batch: int = 1, precision: str = "fp32",
                       calibration: Calibration | None = None, host=None, kernel_model=None,
                       use_kernels: bool = True) -> dict:
    """Predicted latency and estimated energy of an ONNX model on a device profile.

    ``method`` says how: ``kernels`` when a kernel model (``devices.ort_kernels``: the kernels
    onnxruntime runs here, priced per class, calibrated on micro-benchmarks by ``edgecompress devices
    --calibrate``) is given or cached for this device and the precision is fp32, else ``roofline`` (this
    module, over ONNX nodes); with ``kernels`` the roofline figure stays beside it as ``roofline_ms``.
    ``use_kernels=False`` always gives the roofline (measured/predicted ratios are kept against it).
    """
    costs = layer_costs(model_or_path, batch)
    peak_name = "peak_int8_gops" if precision == "int8" else "peak_fp32_gflops"
    peak = profile.require(peak_name)
    bandwidth = profile.require("memory_bandwidth_gbs")
    cal = calibration or calibration_for(profile, host)
    if cal.source == "measured" and cal.fitted_peak_gflops and cal.fitted_bandwidth_gbs and precision == "fp32":
        peak, bandwidth = cal.fitted_peak_gflops, cal.fitted_bandwidth_gbs
    out = predict_latency(costs, peak, bandwidth, cal)
    out.update({"device": profile.name, "batch": batch, "precision": precision, "method": "roofline",
                "figure_sources": {k: profile.figure(k).source for k in (peak_name, "memory_bandwidth_gbs")}})
    if precision == "fp32" and use_kernels:
        from edgecompress.devices.ort_kernels import cached_kernel_model

        km = kernel_model or cached_kernel_model(profile.name)
        if km is not None:
            out.update(_kernel_prediction(model_or_path, km, batch, out["latency_ms"]))
    load = profile.figures.get("load_power_w")
    idle = profile.figures.get("idle_power_w")
    if load is not None and load.value is not None:
        out["energy"] = estimate_energy(out["latency_ms"] / 1e3, load.value, idle.value if idle else None)
        out["energy"]["power_source"] = load.source
    return out


def _kernel_prediction(model_or_path, km, batch: int, roofline_ms: float) -> dict:
    """The kernel model's latency for an ONNX file or ``ModelProto`` (onnxruntime on this machine lists the
    kernels: one profiled run, its times discarded)."""
    import tempfile

    from edgecompress.devices.ort_kernels import runtime_kernels

    if isinstance(model_or_path, (str, Path)):
        kernels = runtime_kernels(model_or_path, batch)
    else:
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model_or_path, str(path))
            kernels = runtime_kernels(path, batch)
    return {"latency_ms": km.latency_ms(kernels), "roofline_ms": roofline_ms, "method": "kernels",
            "kernels": len(kernels), "kernel_model": {"source": km.source, "ref": km.ref}}
