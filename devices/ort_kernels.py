"""Predicted host latency from the kernels onnxruntime actually runs, fitted per kernel class.

The roofline in ``devices.estimate`` sees the ONNX graph. onnxruntime's CPU provider runs another
one: its NCHWc transformer (x86) turns dense and depthwise convolutions into blocked-layout kernels
with the activation and the residual Add fused in, inserts ``ReorderInput``/``ReorderOutput`` wherever
a layer leaves that layout, and runs the rest (grouped convolutions, Gemm, element-wise ops) in plain
NCHW. bench/profiler measured what that costs: a grouped 3x3 convolution runs at ~5 GFLOP/s outside
NCHWc with a reorder pair around it, where a depthwise one inside takes a few microseconds; one
efficiency over ONNX nodes cannot hold both (E2GC's tiny model was -33% out of sample).

This module predicts from the runtime's own kernel list:

- ``runtime_kernels(path)``: the kernels onnxruntime runs for a model on this machine and their
  shapes, read from its profiler (``SessionOptions.enable_profiling``) over one run and the optimised
  graph it writes (the kernel domain tells NCHWc from plain); that run's times are discarded.
  ``ProfiledSession`` keeps them, for training data (``devices.microbench``).
- ``KernelModel``: per kernel class ``k`` (``KERNEL_CLASSES``: the convolution kinds, Gemm, reorders,
  views and one class per data-movement op family, whose speed per byte differs 10x) a roofline with
  the class's own efficiencies and fixed cost::

      t = max(2 MACs / (eta_c[k] peak), hot bytes / (eta bandwidth)) + cold bytes / (eta_w bandwidth)
          + t0[k] + cold_us [weights cold] + row_us rows [Slice, Pad, Concat] + group_us (groups - 1)

  with ``eta = eta_m[k]`` while the hot bytes fit in ``cache_mb`` and the shared ``eta_d`` beyond.
  A model's weights are *cold* when together they exceed the last-level cache (``llc_mb``): the other
  layers evict them between runs, so each kernel streams its weights from DRAM, after its compute
  (measured additive on VGG-16: 103 us of compute + 252 us of streaming against 370 us). A plain
  (grouped) convolution's hot bytes include its im2col buffer. A model's latency is
  ``sum_k (t_k - profiler_us) + call_us``: the profiler's own per-kernel cost (the timed region of a
  profiled kernel includes its bookkeeping: a no-op ``Flatten`` reads 3-5 us) taken off, the run
  call's fixed cost added.
- ``fit_kernel_model``: every term by least squares on ``log(predicted / measured)`` over every kernel
  of the training networks (thousands of points where a whole-model fit has 15), ``cache_mb`` over a
  grid, ``llc_mb`` as given (the machine's L3) or over a grid; then ``profiler_us`` and ``call_us`` on
  the networks' unprofiled latencies.

Figures from it are ``predicted``, never ``measured``; a class with fewer than ``MIN_KERNELS`` training
kernels borrows the terms of ``eltwise`` (no MACs) or ``conv`` and the model records that it did.

>>> k = Kernel("c", "Conv", "conv", macs=10**6, bytes_moved=10**5)
>>> m = KernelModel({"conv": (0.5, 1.0, 2.0)}, peak_gflops=10.0, bandwidth_gbs=5.0)
>>> round(float(m.kernel_us([k])[0]), 1)   # max(2e6 / (0.5 * 10e9), 1e5 / 5e9) s = 400 us, + 2 us
402.0
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgecompress.errors import BadInputError

KERNEL_CLASSES = ("conv", "dwconv", "conv_nchw", "gemm", "reorder", "view", "pad", "slice", "eltwise", "activation",
                  "norm", "pool", "concat", "other")
MAC_CLASSES = ("conv", "dwconv", "conv_nchw", "gemm")
# data-movement ops by kernel: their speed per byte differs 10x (measured: Pad ~10 GB/s, Add ~40 GB/s)
_OP_CLASSES = {"Pad": "pad", "Slice": "slice", "Concat": "concat", "BatchNormalization": "norm",
               **dict.fromkeys(("Add", "Mul", "Sub", "Div", "Sum", "Max", "Min"), "eltwise"),
               **dict.fromkeys(("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Erf"),
                               "activation"),
               **dict.fromkeys(("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"), "pool")}
# ops that only relabel a buffer (onnxruntime reuses the input's memory): a fixed cost, no data term
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
MIN_KERNELS = 3
# kernels that copy their output row by row (the innermost dimension): a cost per row on top of the bytes
# (measured: a Slice of 8-wide rows moves 2x fewer bytes per us than one of 32-wide rows)
ROW_CLASSES = ("slice", "pad", "concat")
_GEMM_OPS = ("Gemm", "MatMul", "FusedGemm", "FusedMatMul")
_CONV_OPS = ("Conv", "FusedConv")
_DTYPE_BYTES = {"float": 4, "double": 8, "float16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8, "bool": 1}


@dataclass(frozen=True)
class Kernel:
    """One kernel onnxruntime runs: its class, MACs, bytes read + written, groups, and (training data)
    its mean measured time in microseconds under the profiler."""

    name: str
    op_type: str
    kind: str
    macs: int
    bytes_moved: int
    groups: int = 1
    measured_us: float | None = None
    weight_bytes: int = 0
    out_channels: int = 0
    rows: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _shapes(arg: list) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for entry in arg or []:
        for dtype, dims in entry.items():
            out.append((dtype, tuple(int(d) for d in dims)))
    return out


def classify(op_type: str, domain: str, inputs: list[tuple[str, tuple[int, ...]]]) -> tuple[str, int]:
    """(kernel class, groups) of a kernel from its op, domain and input shapes."""
    if op_type in ("ReorderInput", "ReorderOutput"):
        return "reorder", 1
    if op_type in _GEMM_OPS:
        return "gemm", 1
    if op_type in VIEW_OPS:
        return "view", 1
    if op_type in _CONV_OPS and len(inputs) >= 2 and len(inputs[0][1]) >= 3 and len(inputs[1][1]) >= 2:
        c_in, w = inputs[0][1][1], inputs[1][1]
        groups = max(1, c_in // max(w[1], 1))
        if domain == "com.microsoft.nchwc":
            return ("dwconv" if groups > 1 and w[1] == 1 else "conv"), groups
        return "conv_nchw", groups
    return _OP_CLASSES.get(op_type, "other"), 1


def _macs(kind: str, inputs: list, outputs: list) -> int:
    if kind in ("conv", "dwconv", "conv_nchw"):
        return int(np.prod(outputs[0][1], dtype=np.int64)) * int(np.prod(inputs[1][1][1:], dtype=np.int64))
    if kind == "gemm" and outputs and inputs:
        return int(np.prod(outputs[0][1], dtype=np.int64)) * int(inputs[0][1][-1])
    return 0


def _kernel_events(events: list[dict]):
    return (e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"))


def kernel_durations(events: list[dict], skip: int = 0) -> dict[str, list[float]]:
    """Each kernel's ``dur`` (us) in onnxruntime profiler events, over its runs after the first ``skip``."""
    durs: dict[str, list[float]] = {}
    seen: dict[str, int] = {}
    for e in _kernel_events(events):
        name = e["name"][: -len("_kernel_time")]
        seen[name] = seen.get(name, 0) + 1
        xs = durs.setdefault(name, [])
        if seen[name] > skip:
            xs.append(float(e.get("dur", 0)))
    return durs


def kernels_from_profile(events: list[dict], domains: dict[str, str], skip: int = 0,
                         percentile: float | None = 10.0) -> list[Kernel]:
    """Kernels (in run order) from onnxruntime profiler events.

    ``measured_us`` is the ``percentile`` of each kernel's ``dur`` over its runs after the first
    ``skip`` (the first runs after loading allocate buffers and page weights in), or ``None`` when
    ``percentile`` is ``None`` or no run is left. The 10th percentile, as for whole-model latency in
    bench/profiler: on a shared machine a kernel's time has a long upper tail. Profiler durations are
    whole microseconds (truncated): that bias is per kernel and constant, and ``profiler_us`` absorbs it.
    """
    first: dict[str, dict] = {}
    for e in _kernel_events(events):
        first.setdefault(e["name"][: -len("_kernel_time")], e)
    durs = kernel_durations(events, skip) if percentile is not None else {}
    kernels = []
    for name in first:
        a = first[name].get("args", {})
        op = a.get("op_name", "?")
        ins, outs = _shapes(a.get("input_type_shape")), _shapes(a.get("output_type_shape"))
        kind, groups = classify(op, domains.get(name, ""), ins)
        if "activation_size" in a:
            nbytes = sum(int(a.get(k, 0)) for k in ("activation_size", "parameter_size", "output_size"))
            wbytes = int(a.get("parameter_size", 0))
        else:
            nbytes = sum(int(np.prod(d, dtype=np.int64)) * _DTYPE_BYTES.get(t, 4) for t, d in ins + outs)
            wbytes = 0
        measured = _percentile(durs.get(name), percentile)
        c_out = int(outs[0][1][1]) if kind in MAC_CLASSES and outs and len(outs[0][1]) > 1 else 0
        rows = 0
        if kind in ROW_CLASSES and outs and outs[0][1]:
            rows = int(np.prod(outs[0][1][:-1], dtype=np.int64))
        kernels.append(Kernel(name, op, kind, _macs(kind, ins, outs), nbytes, groups, measured, wbytes, c_out, rows))
    return kernels


class ProfiledSession:
    """An onnxruntime CPU session with its profiler on: ``run`` it (interleaved with others if you
    like), then ``kernels`` ends the profile and reads the kernels it ran, with their times."""

    def __init__(self, onnx_path: str | Path, batch: int = 1, threads: int | None = 1, seed: int = 0) -> None:
        import onnxruntime as ort

        from edgecompress.runtime.backend_onnxruntime import session_options
        from edgecompress.runtime.engine import EngineOptions

        path = Path(onnx_path)
        if not path.is_file():
            raise BadInputError(f"{path}: no such ONNX file")
        self._tmp = tempfile.TemporaryDirectory()
        so = session_options(EngineOptions(threads=threads))
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(self._tmp.name, "ort")
        so.optimized_model_filepath = os.path.join(self._tmp.name, "optimized.onnx")
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            self._tmp.cleanup()
            raise BadInputError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        self._optimized = so.optimized_model_filepath
        rng = np.random.default_rng(seed)
        self._feeds = {}
        for i in self._sess.get_inputs():
            dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64}.get(i.type)
            if dtype is None:
                self._tmp.cleanup()
                raise BadInputError(f"{path}: input {i.name!r} is {i.type}; only float inputs are fed here")
            shape = [d if isinstance(d, int) else batch for d in i.shape]
            self._feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        self.runs = 0

    def run(self, n: int = 1) -> None:
        for _ in range(n):
            self._sess.run(None, self._feeds)
        self.runs += n

    def finish(self, skip: int = 0) -> tuple[list[Kernel], dict[str, list[float]]]:
        """End the profile: the kernels (``measured_us`` unset) and each one's durations in us over the
        runs after the first ``skip``."""
        import onnx

        if self.runs <= skip:
            raise ValueError(f"{self.runs} run(s) profiled: run more than skip={skip} first")
        try:
            events = json.loads(Path(self._sess.end_profiling()).read_text())
            optimized = onnx.load(self._optimized, load_external_data=False)
        finally:
            self._tmp.cleanup()
        domains = {n.name: n.domain for n in optimized.graph.node}
        return kernels_from_profile(events, domains, 0, None), kernel_durations(events, skip)

    def kernels(self, skip: int = 0, percentile: float | None = 10.0) -> list[Kernel]:
        """End the profile; the kernels of the runs after the first ``skip`` (see ``kernels_from_profile``)."""
        kernels, durs = self.finish(skip)
        return [replace(k, measured_us=_percentile(durs.get(k.name), percentile)) for k in kernels]


def _percentile(xs: list[float] | None, q: float | None) -> float | None:
    return float(np.percentile(xs, q)) if xs and q is not None else None


def runtime_kernels(onnx_path: str | Path, batch: int = 1, threads: int = 1) -> list[Kernel]:
    """The kernels onnxruntime's CPU provider runs for ``onnx_path`` on this machine, and their shapes:
    one profiled run; its times are discarded (``measured_us`` is ``None``)."""
    s = ProfiledSession(onnx_path, batch, threads)
    s.run(1)
    return s.kernels(skip=0, percentile=None)

# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class KernelModel:
    """Per-class terms ``(eta_c, eta_m, t0_us)``: fraction of peak compute, of copy bandwidth while the
    kernel's bytes fit in ``cache_mb``, fixed cost (``eta_c`` unused for classes without MACs); the
    DRAM efficiency ``eta_d`` every class shares beyond the cache; the extra cost per group of a plain
    grouped convolution; and the model-level profiler and call terms."""

    classes: dict[str, tuple[float, float, float]]
    peak_gflops: float
    bandwidth_gbs: float
    eta_d: float = 1.0
    cache_mb: float = math.inf
    eta_w: float = 1.0
    llc_mb: float = math.inf
    cold_us: float = 0.0
    row_us: float = 0.0
    group_us: float = 0.0
    profiler_us: float = 0.0
    call_us: float = 0.0
    borrowed: dict[str, str] = field(default_factory=dict)
    source: str = "uncalibrated"
    ref: str = ""

    def __post_init__(self) -> None:
        if self.peak_gflops <= 0 or self.bandwidth_gbs <= 0:
            raise ValueError(f"peak_gflops={self.peak_gflops}, bandwidth_gbs={self.bandwidth_gbs}: both must be > 0")
        if not (self.eta_d > 0 and self.cache_mb >= 0):
            raise ValueError(f"eta_d={self.eta_d} must be > 0 and cache_mb={self.cache_mb} >= 0")
        for k, (ec, em, t0) in self.classes.items():
            if not (ec > 0 and em > 0 and t0 >= 0 and math.isfinite(ec + em + t0)):
                raise ValueError(f"class {k!r}: eta_c={ec}, eta_m={em} must be > 0 and t0_us={t0} >= 0")

    def terms(self, kind: str) -> tuple[float, float, float]:
        if kind in self.classes:
            return self.classes[kind]
        fallback = _fallback(kind)
        if fallback in self.classes:
            return self.classes[fallback]
        raise BadInputError(f"the kernel model has no terms for kernel class {kind!r} (fitted classes: "
                            f"{sorted(self.classes)}); refit it on models that contain one")

    def kernel_us(self, kernels: Sequence[Kernel]) -> np.ndarray:
        """(K,) predicted time of each kernel in microseconds, as the profiler would time it."""
        f = _features(kernels, self.peak_gflops, self.bandwidth_gbs, self.llc_mb)
        terms = np.array([self.terms(k.kind) for k in kernels]).reshape(-1, 3)
        eta = np.where(f["hot_bytes"] <= self.cache_mb * 1e6, terms[:, 1], self.eta_d)
        return (np.maximum(f["t_c"] / terms[:, 0], f["t_hot"] / eta) + f["t_cold"] / self.eta_w + terms[:, 2]
                + self.cold_us * f["cold"] + self.row_us * f["rows"] + self.group_us * f["groups"])

    def latency_ms(self, kernels: Sequence[Kernel]) -> float:
        """Predicted latency of one run: kernel times less the profiler's share, plus the call cost."""
        t = self.kernel_us(kernels)
        return float(np.sum(np.maximum(t - self.profiler_us, 0.0)) + self.call_us) * 1e-3

    def as_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = {k: list(v) for k, v in self.classes.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> KernelModel:
        d = dict(d)
        d["classes"] = {k: tuple(float(x) for x in v) for k, v in d["classes"].items()}
        return cls(**d)


def _fallback(kind: str) -> str:
    """The class whose terms a class without enough training kernels borrows: the dense convolution for
    MAC kernels, the element-wise kernel (a generic streaming op) for the rest."""
    return "conv" if kind in MAC_CLASSES else "eltwise"


def _features(kernels: Sequence[Kernel], peak: float, bandwidth: float, llc_mb: float) -> dict[str, np.ndarray]:
    """Per kernel of ONE model (K,): raw compute time and memory time of its hot and cold bytes in us at
    efficiency 1, its hot bytes, its extra groups. A kernel's weights are cold (read from DRAM on every
    run) when the model's weights together exceed ``llc_mb``: the other layers evict them between runs."""
    macs = np.array([k.macs for k in kernels], dtype=np.float64)
    nbytes = np.array([k.bytes_moved for k in kernels], dtype=np.float64)
    wbytes = np.array([k.weight_bytes for k in kernels], dtype=np.float64)
    view = np.array([k.kind == "view" for k in kernels])
    cold = wbytes if wbytes.sum() > llc_mb * 1e6 else np.zeros_like(wbytes)
    # a plain (not NCHWc) convolution with a k x k kernel runs as im2col + one GEMM per group: it writes
    # and reads back a column buffer of 4 * MACs / (output channels per group) bytes
    per_group = np.array([k.out_channels / k.groups if k.kind == "conv_nchw" and k.out_channels else 0.0
                          for k in kernels])
    im2col = np.where(per_group > 0, 8.0 * macs / np.maximum(per_group, 1.0), 0.0)
    hot = np.where(view, 0.0, nbytes - cold + im2col)
    return {"t_c": 2e-3 * macs / peak, "t_hot": 1e-3 * hot / bandwidth, "t_cold": 1e-3 * cold / bandwidth,
            "hot_bytes": hot, "cold": (cold > 0).astype(np.float64),
            "rows": np.array([k.rows if k.kind in ROW_CLASSES else 0 for k in kernels], dtype=np.float64),
            "groups": np.array([k.groups - 1 if k.kind == "conv_nchw" else 0 for k in kernels], dtype=np.float64)}


CACHE_MB_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LLC_MB_GRID = (4.0, 8.0, 16.0, 32.0, 64.0)


def fit_kernel_model(kernels_per_model: Sequence[Sequence[Kernel]], measured_ms: Sequence[float],
                     peak_gflops: float, bandwidth_gbs: float, ref: str = "",
                     llc_mb: float | None = None) -> KernelModel:
    """Fit the class terms, ``eta_d``, ``cache_mb`` and ``group_us`` on every kernel's ``measured_us``
    (least squares on ``log(predicted / measured)``, the cache size over ``CACHE_MB_GRID``; the
    last-level cache ``llc_mb`` as given, the machine's, or over ``LLC_MB_GRID`` when ``None``), then
    ``profiler_us`` and ``call_us`` on the models' unprofiled ``measured_ms``."""
    from scipy.optimize import least_squares

    m = np.asarray(measured_ms, dtype=np.float64)
    if len(kernels_per_model) != m.size or m.size < 2:
        raise ValueError("fit_kernel_model needs two or more models with one measurement each")
    if np.any(m <= 0):
        raise ValueError("measured latencies must be > 0")
    kernels = [k for ks in kernels_per_model for k in ks]
    missing = next((k for k in kernels if k.measured_us is None), None)
    if missing is not None:
        raise ValueError(f"kernel {missing.name!r} has no measured time: collect it with ProfiledSession.kernels")
    counts: dict[str, int] = {}
    for k in kernels:
        counts[k.kind] = counts.get(k.kind, 0) + 1
    fitted = [c for c in KERNEL_CLASSES if counts.get(c, 0) >= MIN_KERNELS]
    borrowed = {c: _fallback(c) for c in counts if c not in fitted}
    per_model = [[k for k in ks if k.kind in fitted] for ks in kernels_per_model]
    kernels = [k for ks in per_model for k in ks]
    cls = np.array([fitted.index(k.kind) for k in kernels])
    log_y = np.log(np.maximum([k.measured_us for k in kernels], 0.5))
    has_groups = any(k.kind == "conv_nchw" and k.groups > 1 for k in kernels)
    n = len(fitted)

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, float, float, float, float, float]:
        p = np.exp(theta)
        return (p[: 3 * n].reshape(n, 3), p[3 * n], p[3 * n + 1], p[3 * n + 2], p[3 * n + 3],
                (p[3 * n + 4] if has_groups else 0.0))

    best = (math.inf, None, None, None)
    for llc in (llc_mb,) if llc_mb else LLC_MB_GRID:
        fs = [_features(ks, peak_gflops, bandwidth_gbs, llc) for ks in per_model]
        f = {key: np.concatenate([x[key] for x in fs]) for key in fs[0]}
        for cache_mb in CACHE_MB_GRID:
            fast = f["hot_bytes"] <= cache_mb * 1e6

            def resid(theta: np.ndarray, fast: np.ndarray = fast, f: dict = f) -> np.ndarray:
                terms, eta_d, eta_w, cold_us, row_us, group_us = unpack(theta)
                t = terms[cls]
                t_m = f["t_hot"] / np.where(fast, t[:, 1], eta_d)
                return np.log(np.maximum(f["t_c"] / t[:, 0], t_m) + f["t_cold"] / eta_w + t[:, 2]
                              + cold_us * f["cold"] + row_us * f["rows"] + group_us * f["groups"]) - log_y

            x0 = np.log(np.concatenate([np.tile([0.5, 1.0, 2.0], n), [0.5, 0.5, 1.0, 0.01],
                                        [1.0] if has_groups else []]))
            r = least_squares(resid, x0, bounds=(-12.0, 8.0), method="trf")
            if r.cost < best[0]:
                best = (float(r.cost), cache_mb, llc, r.x)
    _, cache_mb, llc_mb, theta = best
    terms, eta_d, eta_w, cold_us, row_us, group_us = unpack(theta)
    model = KernelModel({c: tuple(float(x) for x in terms[i]) for i, c in enumerate(fitted)}, peak_gflops,
                        bandwidth_gbs, float(eta_d), float(cache_mb), float(eta_w), float(llc_mb), float(cold_us),
                        float(row_us), float(group_us), borrowed=borrowed)
    sums = np.array([model.kernel_us(ks).sum() for ks in kernels_per_model])
    lens = np.array([len(ks) for ks in kernels_per_model], dtype=np.float64)

    def resid_model(x: np.ndarray) -> np.ndarray:
        prof, call = x
        return np.log(np.maximum(sums - lens * prof + call, 1e-3)) - np.log(m * 1e3)

    r = least_squares(resid_model, np.array([1.0, 5.0]), bounds=([0.0, 0.0], [50.0, 1e4]))
    return replace(model, profiler_us=float(r.x[0]), call_us=float(r.x[1]), source="measured",
                   ref=ref or f"fitted to the kernels of {m.size} measured models")


def save_kernel_model(device: str, model: KernelModel, cache: Path | None = None) -> Path:
    from edgecompress.devices.profiles import cache_dir
    from edgecompress.fileio import write_json_atomic

    path = (cache or cache_dir()) / f"kernel-model-{device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, model.as_dict())
    return path


def cached_kernel_model(device: str, cache: Path | None = None) -> KernelModel | None:
    """A model saved by ``save_kernel_model`` for ``device``, or ``None``."""
    from edgecompress.devices.profiles import cache_dir

    path = (cache or cache_dir()) / f"kernel-model-{device}.json"
    if not path.is_file():
        return None
    try:
        return KernelModel.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadInputError(f"{path}: not a kernel model file ({exc}); delete it to refit") from None
