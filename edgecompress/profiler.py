"""``profile``: latency and energy of a model, an ONNX file or an engine, with the source of each figure.

What a report holds (every figure names its ``source``: measured | predicted | estimated, the device,
the runtime and the settings):

- latency percentiles from timed runs here (``measured``), on a board over TVM RPC (``measured``,
  timed on the board by ``time_evaluator``), or, for a device that is not attached, from the roofline
  cost model in ``devices.estimate`` (``predicted``);
- MLPerf-style figures from the same run: single-stream p90 latency and offline throughput (samples/s
  at ``offline_batch``); not a valid MLPerf result (no LoadGen, no 600 s minimum);
- energy per inference from a meter (``--energy auto`` tries the device's meters in turn and says why
  each was not used) or, when none is readable, ``estimated`` = load power x latency; idle power beside;
- a per-layer breakdown from onnxruntime's own profiler (``SessionOptions.enable_profiling``);
- the predicted latency beside a measured one, so the cost model's error is visible;
- a latency histogram (PNG, matplotlib Agg).

>>> report = profile("model.onnx", config=ProfileConfig(repeats=100, energy="auto"))  # doctest: +SKIP
>>> print(format_report(report))                                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.devices.host import host_info, package_version
from edgecompress.devices.timing import LatencyStats, measure
from edgecompress.errors import BadInputError
from edgecompress.runtime.engine import Engine, EngineOptions, load_engine

ENERGY_CHOICES = ("auto", "none", "rapl", "nvml", "jetson", "rpi5")
MLPERF_NOTE = "MLPerf-style figures from this run; not a valid MLPerf result (no LoadGen, no minimum duration)"


@dataclass(frozen=True)
class ProfileConfig:
    """Timing settings. ``threads=None`` uses every usable core.

    ``energy``: auto | none | rapl | nvml | jetson | rpi5 | csv:FILE. ``offline_batch``: batch of the
    offline-throughput run (``None``: the timed runs at ``batch``). ``remote`` (HOST:PORT) or
    ``tracker`` (HOST:PORT) with ``key``: time on a board over TVM RPC, each step within
    ``remote_timeout_s``. ``histogram``: a PNG path. ``predict``: put the cost model's prediction beside a
    measurement of an ONNX file (the first use measures the host's peak and bandwidth, a few seconds).
    """

    runtime: str = "onnxruntime"
    device: str = "host"
    threads: int | None = None
    batch: int = 1
    warmup: int = 10
    repeats: int = 50
    seed: int = 0
    energy: str = "none"
    energy_seconds: float = 2.0
    idle_seconds: float = 1.0
    offline_batch: int | None = None
    per_layer: bool = False
    predict: bool = True
    histogram: str | None = None
    remote: str | None = None
    tracker: str | None = None
    key: str | None = None
    remote_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch={self.batch}: must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup}: must be >= 0")
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats}: must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be >= 1")
        if self.energy not in ENERGY_CHOICES and not (self.energy.startswith("csv:") and len(self.energy) > 4):
            raise ValueError(f"energy={self.energy!r}: choose {'|'.join(ENERGY_CHOICES)}|csv:FILE")
        if not self.energy_seconds > 0 or self.idle_seconds < 0:
            raise ValueError(f"energy_seconds={self.energy_seconds}, idle_seconds={self.idle_seconds}: "
                             "need energy_seconds > 0 and idle_seconds >= 0")
        if self.offline_batch is not None and self.offline_batch < 1:
            raise ValueError(f"offline_batch={self.offline_batch}: must be >= 1")
        if self.remote and self.tracker:
            raise ValueError("remote and tracker: give one, not both")
        if self.tracker and not self.key:
            raise ValueError("key: required with tracker")
        if not self.remote_timeout_s > 0:
            raise ValueError(f"remote_timeout_s={self.remote_timeout_s}: must be > 0")

    @property
    def is_remote(self) -> bool:
        return bool(self.remote or self.tracker)


def profile(target: Any, inputs: dict[str, np.ndarray] | np.ndarray | None = None,
            config: ProfileConfig = ProfileConfig()) -> dict:
    """Time ``target`` (an ``Engine``, an ONNX path, or a ``torch.nn.Module``) and report.

    ``inputs`` default to random normal tensors shaped like the engine's inputs at ``config.batch``
    (for a torch module, give ``inputs`` or set ``model.input_size``). An unknown ``config.device`` is
    a ``BadInputError`` listing the known ones; a device that is not attached (and not reached over
    RPC) gets a ``predicted`` report from its profile.
    """
    from edgecompress.devices.detect import attached_profiles
    from edgecompress.devices.profiles import load_profile

    device = load_profile(config.device, measure_host=False)
    if config.is_remote:
        return profile_remote(target, config)
    attached = attached_profiles()
    if device.name not in attached:
        if not isinstance(target, (str, Path)):
            raise BadInputError(f"device {device.name!r} is not attached (attached: {', '.join(sorted(attached))}); "
                                "a prediction needs an ONNX file, or reach the board with --remote/--tracker")
        return predict_report(target, config, attached)
    if isinstance(target, (str, Path)):
        engine = load_engine(target, config.runtime, EngineOptions(threads=config.threads, target=config.device))
        return profile_engine(engine, inputs, config, onnx_path=Path(target))
    if isinstance(target, Engine):
        return profile_engine(target, inputs, config)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(target, torch.nn.Module):
        return _profile_torch(target, inputs, config)
    raise BadInputError(f"cannot profile a {type(target).__name__}: give an Engine, an ONNX path or an nn.Module")


def profile_engine(engine: Engine, inputs: dict[str, np.ndarray] | np.ndarray | None,
                   config: ProfileConfig, onnx_path: Path | None = None) -> dict:
    feeds = engine.check_feeds(inputs) if inputs is not None else engine.example_feeds(config.batch, config.seed)
    batch = next(iter(feeds.values())).shape[0] if feeds else 1
    samples = engine.measure(feeds, config.warmup, config.repeats)
    report = _report(samples, batch, engine.settings(), config)
    onnx_path = onnx_path or getattr(engine, "path", None)

    def run_batch(n: int) -> Callable[[], object] | None:
        if n == batch:
            return lambda: engine._run(feeds)
        if any(isinstance(d, str) for s in engine.inputs for d in s.shape[:1]):
            big = engine.example_feeds(n, config.seed)
            return lambda: engine._run(big)
        return None

    per_layer = None
    if config.per_layer and engine.runtime == "onnxruntime" and onnx_path is not None:
        per_layer = lambda: ort_per_layer(onnx_path, config)  # noqa: E731
    elif config.per_layer and engine.runtime == "tvm" and hasattr(engine, "vm"):
        per_layer = lambda: tvm_per_layer(engine, feeds, min(config.repeats, 20))  # noqa: E731
    _extend(report, run_batch, batch, config, onnx_path, per_layer)
    return report


def _profile_torch(model: Any, inputs: Any, config: ProfileConfig) -> dict:
    import torch

    if inputs is None:
        size = getattr(model, "input_size", None)
        if size is None:
            raise BadInputError("profiling a torch module needs `inputs` or a `model.input_size` (C, H, W)")
        generator = torch.Generator().manual_seed(config.seed)
        inputs = torch.randn((config.batch, *size), generator=generator)
    x = torch.as_tensor(inputs)
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    model.eval()
    try:
        with torch.inference_mode():
            samples = measure(lambda: model(x), config.warmup, config.repeats)
            threads = torch.get_num_threads()
            settings = {"runtime": "torch-eager", "version": torch.__version__, "threads": threads}
            report = _report(samples, x.shape[0], settings, config)

            def run_batch(n: int) -> Callable[[], object]:
                xb = x if n == x.shape[0] else torch.randn((n, *x.shape[1:]))
                return lambda: model(xb)

            _extend(report, run_batch, x.shape[0], config, None)
    finally:
        torch.set_num_threads(previous)
    return report


def _report(samples: list[float], batch: int, settings: dict, config: ProfileConfig) -> dict:
    stats = LatencyStats.from_samples(samples, batch=batch)
    return {
        "source": "measured",
        "device": config.device,
        "runtime": settings.get("runtime"),
        "settings": {**settings, "batch": batch, "warmup": config.warmup, "repeats": config.repeats,
                     "numpy": package_version("numpy")},
        "host": host_info(),
        "latency_ms": stats.as_dict(),
        "samples_ms": [round(s, 6) for s in samples],
    }


# ----------------------------------------------------------------------------- report extensions

def _extend(report: dict, run_batch: Callable[[int], Callable[[], object] | None], batch: int,
            config: ProfileConfig, onnx_path: Path | None, per_layer: Callable[[], dict] | None = None) -> None:
    """Add MLPerf-style figures, energy, per-layer breakdown, prediction and histogram to a measured report."""
    report["mlperf"] = _mlperf(report, run_batch, batch, config)
    if config.energy != "none":
        report["energy"] = _energy(report, run_batch(batch), batch, config)
    if onnx_path is not None and config.predict:
        report["predicted"] = _prediction(onnx_path, config, batch, report["latency_ms"]["median_ms"])
    if config.per_layer:
        report["per_layer"] = per_layer() if per_layer is not None else {
            "available": False, "reason": f"per-layer timing comes from onnxruntime's profiler (ONNX file) or TVM's "
                                          f"VM instrument; not available for runtime {report['runtime']}"}
    if config.histogram:
        report["histogram"] = str(write_histogram(report, config.histogram))


def _mlperf(report: dict, run_batch, batch: int, config: ProfileConfig) -> dict:
    s = report["latency_ms"]
    out = {"note": MLPERF_NOTE, "single_stream": {"p90_ms": s["p90_ms"], "queries": s["count"], "batch": batch}}
    if batch != 1:
        out["single_stream"]["note"] = f"timed at batch {batch}; single-stream is defined at batch 1"
    n = config.offline_batch or batch
    fn = run_batch(n)
    if fn is None:
        out["offline"] = {"available": False, "reason": f"the model's batch is fixed at {batch}; "
                                                        f"cannot run offline_batch={n}"}
        return out
    samples = s if n == batch else LatencyStats.from_samples(measure(fn, config.warmup, config.repeats), n).as_dict()
    out["offline"] = {"throughput_per_s": samples["throughput_per_s"], "batch": n,
                      "method": "samples / mean wall time of back-to-back runs"}
    return out


def _energy(report: dict, run_once: Callable[[], object], batch: int, config: ProfileConfig) -> dict:
    from edgecompress.devices.energy import auto_meter, energy_per_inference, open_meter
    from edgecompress.devices.estimate import estimate_energy
    from edgecompress.devices.profiles import load_profile

    device = load_profile(config.device, measure_host=False)
    if config.energy == "auto":
        meter, tried = auto_meter(device.energy_meters)
    else:
        meter, tried = open_meter(config.energy), []
        meter.check()  # MeterUnavailableError: the meter the user asked for is absent or unreadable
    if meter is None:
        load = device.figures.get("load_power_w")
        idle = device.figures.get("idle_power_w")
        median_s = report["latency_ms"]["median_ms"] / 1e3
        out = estimate_energy(median_s / batch, load.value if load else None, idle.value if idle else None,
                              latency_source="measured median per sample")
        out["power_source"] = f"{load.source}: {load.ref}" if load else "none"
        out["meters_tried"] = tried
        out["note"] = ("no energy meter is readable here (" + "; ".join(t["reason"] for t in tried)
                       + "); this figure is an estimate, not a measurement")
        return out
    inferences, reading = meter.measure(run_once, config.energy_seconds)
    idle = meter.idle_power(config.idle_seconds) if config.idle_seconds > 0 else None
    out = energy_per_inference(reading, inferences * batch, idle)
    out["meters_tried"] = tried
    return out


def _prediction(onnx_path: Path, config: ProfileConfig, batch: int, measured_ms: float | None) -> dict:
    from edgecompress.devices.estimate import predict_for_device
    from edgecompress.devices.profiles import load_profile

    try:
        host = load_profile("host", measure_host=True)
        device = host if config.device == "host" else load_profile(config.device)
        pred = predict_for_device(onnx_path, device, batch=batch, host=host)
    except BadInputError as exc:
        return {"source": "predicted", "available": False, "reason": str(exc)}
    pred["layers"] = pred["layers"][:5]
    if measured_ms:
        pred["ratio_predicted_to_measured"] = pred["latency_ms"] / measured_ms
    return pred


def predict_report(onnx_path: str | Path, config: ProfileConfig, attached: set[str] | None = None) -> dict:
    """A ``predicted`` report for a device that is not attached: roofline latency and estimated energy."""
    from edgecompress.devices.estimate import predict_for_device
    from edgecompress.devices.profiles import load_profile

    host = load_profile("host", measure_host=True)
    device = load_profile(config.device)
    pred = predict_for_device(onnx_path, device, batch=config.batch, host=host)
    return {"source": "predicted", "device": config.device, "runtime": config.runtime,
            "settings": {"batch": config.batch, "runtime": config.runtime},
            "note": f"device {config.device!r} is not attached (attached: {', '.join(sorted(attached or {'host'}))}); "
                    f"latency is predicted from profiles/{config.device}.yaml, energy estimated",
            "host": host_info(), "latency_ms": {"predicted_ms": pred["latency_ms"]},
            "predicted": pred, "energy": pred.get("energy", {"source": "estimated", "available": False,
                                                             "reason": "no load power in the profile"})}


def profile_remote(target: Any, config: ProfileConfig) -> dict:
    """Compile ``target`` (an ONNX path) for ``config.device`` with TVM, time it on the board over RPC."""
    from edgecompress.devices.estimate import estimate_energy
    from edgecompress.devices.profiles import load_profile
    from edgecompress.devices.remote import RemoteTarget, time_library
    from edgecompress.runtime.backend_tvm import TvmCompileConfig, compile_tvm

    if not isinstance(target, (str, Path)):
        raise BadInputError("profiling over TVM RPC needs an ONNX file")
    if config.runtime != "tvm":
        raise BadInputError(f"--remote/--tracker run TVM libraries; use --runtime tvm (got {config.runtime!r})")
    where = RemoteTarget.parse(config.remote, config.tracker, config.key, config.remote_timeout_s)
    build = compile_tvm(target, TvmCompileConfig(target=config.device, batch=config.batch, check_parity=False))
    rng = np.random.default_rng(config.seed)
    feeds = [rng.standard_normal([d if isinstance(d, int) else config.batch for d in s.shape]).astype(s.dtype)
             for s in build.inputs]
    with tempfile.TemporaryDirectory() as tmp:
        lib = build.export(Path(tmp) / f"{Path(target).stem}-{config.device}.so")
        timed = time_library(where, lib, feeds, repeats=config.repeats, warmup=config.warmup)
    settings = {"runtime": "tvm-rpc", "version": build.report.get("tvm_version"), "target": build.target,
                "remote": timed["remote"], "timer": timed["timer"], "number": timed["number"],
                "compile_s": build.report.get("compile_s"), "upload_s": timed["upload_s"]}
    report = _report(timed["samples_ms"], config.batch, settings, config)
    report["runtime"] = "tvm-rpc"
    report["mlperf"] = {"note": MLPERF_NOTE, "single_stream": {"p90_ms": report["latency_ms"]["p90_ms"],
                                                               "batch": config.batch},
                        "offline": {"throughput_per_s": report["latency_ms"]["throughput_per_s"],
                                    "batch": config.batch}}
    if config.energy != "none":
        device = load_profile(config.device, measure_host=False)
        load = device.figures.get("load_power_w")
        idle = device.figures.get("idle_power_w")
        energy = estimate_energy(report["latency_ms"]["median_ms"] / 1e3 / config.batch, load.value if load else None,
                                 idle.value if idle else None, latency_source="measured on the board (median)")
        energy["note"] = "meters on a board are not read over RPC; an estimate from the profile's load power"
        report["energy"] = energy
    if config.predict:
        report["predicted"] = _record_remote_ratio(target, config, report["latency_ms"]["median_ms"])
    if config.histogram:
        report["histogram"] = str(write_histogram(report, config.histogram))
    return report


def _record_remote_ratio(onnx_path: str | Path, config: ProfileConfig, measured_ms: float) -> dict:
    """Predict the board's latency without measured ratios, then record measured/predicted for later predictions."""
    from edgecompress.devices.estimate import calibration_for, predict_for_device, record_ratio
    from edgecompress.devices.profiles import load_profile
    from edgecompress.fileio import sha256_file

    try:
        host = load_profile("host", measure_host=True)
        device = host if config.device == "host" else load_profile(config.device)
        base = calibration_for(device, host, use_ratios=False)
        pred = predict_for_device(onnx_path, device, batch=config.batch, calibration=base, host=host,
                                  use_kernels=False)  # ratios scale the roofline (calibration_for)
    except BadInputError as exc:
        return {"source": "predicted", "available": False, "reason": str(exc)}
    path = record_ratio(config.device, f"{sha256_file(onnx_path)[:16]}-b{config.batch}", measured_ms,
                        pred["latency_ms"])
    return {"source": "predicted", "latency_ms": pred["latency_ms"], "calibration": base.as_dict(),
            "ratio_measured_to_predicted": measured_ms / pred["latency_ms"], "recorded_in": str(path)}


# ----------------------------------------------------------------------------- per-layer, histogram

def ort_per_layer(onnx_path: Path | str, config: ProfileConfig, runs: int | None = None, top: int = 10) -> dict:
    """Per-node kernel time from onnxruntime's profiler (``devices.ort_kernels.ProfiledSession``).

    Sums each kernel's durations over ``runs`` runs after one untimed run; returns the ``top`` nodes by
    time and the share of the total.
    """
    import onnxruntime as ort

    from edgecompress.devices.ort_kernels import ProfiledSession

    runs = runs or min(config.repeats, 20)
    session = ProfiledSession(onnx_path, batch=config.batch, threads=config.threads, seed=config.seed)
    session.run(runs + 1)
    kernels, durations = session.finish(skip=1)
    per_node = {k.name: {"node": k.name, "op_type": k.op_type, "total_us": float(sum(durations.get(k.name, []))),
                         "calls": len(durations.get(k.name, []))} for k in kernels}
    total = sum(r["total_us"] for r in per_node.values()) or 1.0
    rows = sorted(per_node.values(), key=lambda r: -r["total_us"])
    by_op: dict[str, float] = {}
    for r in rows:
        r["mean_us"] = r["total_us"] / max(r["calls"], 1)
        r["share"] = r["total_us"] / total
        by_op[r["op_type"]] = by_op.get(r["op_type"], 0.0) + r["share"]
    return {"source": "measured", "profiler": f"onnxruntime {ort.__version__} enable_profiling", "runs": runs,
            "nodes": len(rows), "top": rows[:top],
            "share_by_op_type": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


def tvm_per_layer(engine: Engine, feeds: dict[str, np.ndarray], runs: int = 20, top: int = 10) -> dict:
    """Per-kernel wall time of a TVM engine from the Relax VM's instrument hook (``vm.set_instrument``).

    The hook is called before and after every packed call (fused TIR kernels and ``vm.builtin.*``
    helpers); the time between is that call's. The hook itself adds a few microseconds per call.
    """
    import tvm
    from tvm import relax

    vm = engine.vm
    args = engine._tensors(feeds)
    vm["main"](*args)  # untimed first run
    totals: dict[str, list[float]] = {}
    started: dict[str, int] = {}

    def instrument(func, symbol, before_run, ret_value, *a):
        if before_run:
            started[symbol] = time.perf_counter_ns()
        else:
            totals.setdefault(symbol, []).append((time.perf_counter_ns() - started.pop(symbol)) / 1e3)
        return relax.VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            vm["main"](*args)
    finally:
        vm.set_instrument(None)
    rows = [{"node": k, "op_type": "vm-builtin" if k.startswith("vm.builtin") else "tvm-kernel",
             "total_us": float(sum(v)), "calls": len(v), "mean_us": float(sum(v)) / len(v)} for k, v in totals.items()]
    total = sum(r["total_us"] for r in rows) or 1.0
    rows.sort(key=lambda r: -r["total_us"])
    by_kind: dict[str, float] = {}
    for r in rows:
        r["share"] = r["total_us"] / total
        by_kind[r["op_type"]] = by_kind.get(r["op_type"], 0.0) + r["share"]
    return {"source": "measured", "profiler": f"tvm {tvm.__version__} Relax VM instrument", "runs": runs,
            "nodes": len(rows), "top": rows[:top], "share_by_op_type": by_kind}


def write_histogram(report: dict, path: str | Path) -> Path:
    """A PNG histogram of the report's latency samples with the median and p90 marked (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report.get("samples_ms")
    if not samples:
        raise BadInputError("a histogram needs measured latency samples (this report has none)")
    path = Path(path)
    s = report["latency_ms"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(samples, bins=min(40, max(5, len(samples) // 3)), color="#4c72b0")
    ax.axvline(s["median_ms"], color="k", linestyle="--", label=f"median {s['median_ms']:.3f} ms")
    ax.axvline(s["p90_ms"], color="#c44e52", linestyle=":", label=f"p90 {s['p90_ms']:.3f} ms")
    settings = report["settings"]
    ax.set_title(f"{report['device']} / {report['runtime']}, batch {settings['batch']}, "
                 f"threads {settings.get('threads')}, {s['count']} runs ({report['source']})", fontsize=9)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def format_report(report: dict) -> str:
    """A readable table of a profile report."""
    if report["source"] == "predicted":
        return _format_predicted(report)
    s = report["latency_ms"]
    settings = report["settings"]
    lines = [
        f"latency ({report['source']}) on {report['device']} [{report['host']['cpu']}], "
        f"runtime {settings.get('runtime')} {settings.get('version', '')}, threads {settings.get('threads')}, "
        f"batch {settings['batch']}, warmup {settings['warmup']}, repeats {settings['repeats']}",
        f"{'min':>9} {'median':>9} {'mean':>9} {'p90':>9} {'p99':>9} {'max':>9} {'std':>9}   throughput",
        f"{s['min_ms']:9.3f} {s['median_ms']:9.3f} {s['mean_ms']:9.3f} {s['p90_ms']:9.3f} {s['p99_ms']:9.3f} "
        f"{s['max_ms']:9.3f} {s['std_ms']:9.3f}   {s['throughput_per_s']:.1f}/s  (ms)",
    ]
    if settings.get("remote"):
        lines.append(f"timed on {settings['remote']} by {settings['timer']}")
    mlperf = report.get("mlperf")
    if mlperf:
        off = mlperf.get("offline", {})
        off_text = (f"offline {off['throughput_per_s']:.1f} samples/s at batch {off['batch']}"
                    if "throughput_per_s" in off else f"offline n/a ({off.get('reason')})")
        lines.append(f"MLPerf-style: single-stream p90 {mlperf['single_stream']['p90_ms']:.3f} ms, {off_text}")
    lines += _format_energy(report.get("energy"))
    pred = report.get("predicted")
    if pred and "latency_ms" in pred:
        lines.append(f"predicted ({_method(pred)}): {pred['latency_ms']:.3f} ms"
                     + (f", {pred['ratio_predicted_to_measured']:.2f}x the measured median"
                        if "ratio_predicted_to_measured" in pred else ""))
    per_layer = report.get("per_layer")
    if per_layer and per_layer.get("top"):
        lines.append(f"per layer ({per_layer['profiler']}, {per_layer['runs']} runs), slowest:")
        lines += [f"  {r['node'][:40]:<40} {r['op_type']:<14} {r['mean_us']:9.1f} us  {100 * r['share']:5.1f}%"
                  for r in per_layer["top"][:5]]
    if report.get("histogram"):
        lines.append(f"histogram: {report['histogram']}")
    return "\n".join(lines)


def _format_energy(energy: dict | None) -> list[str]:
    if not energy:
        return []
    if energy.get("source") == "measured":
        idle = energy.get("idle_power_w")
        return [f"energy (measured, {energy['meter']}): {energy['joules_per_inference'] * 1e3:.3f} mJ/inference, "
                f"mean {energy['mean_power_w']:.2f} W over {energy['window_s']:.2f} s"
                + (f", idle {idle:.2f} W" if idle is not None else "")]
    if energy.get("source") == "estimated" and "joules_per_inference" in energy:
        lines = [f"energy (estimated, not measured): {energy['joules_per_inference'] * 1e3:.3f} mJ/inference "
                 f"= {energy['formula']}"]
        if energy.get("note"):
            lines.append(f"  {energy['note']}")
        return lines
    return [f"energy: {energy.get('reason', 'not available')}"]


def _method(pred: dict) -> str:
    if pred.get("method") == "kernels":
        return (f"kernel model over {pred['kernels']} onnxruntime kernels, {pred['kernel_model']['ref']}; "
                f"roofline {pred['roofline_ms']:.3f} ms")
    return f"roofline, calibration {pred['calibration']['source']}"


def _format_predicted(report: dict) -> str:
    pred = report["predicted"]
    lines = [report["note"],
             f"latency (predicted, {_method(pred)}): {pred['latency_ms']:.3f} ms "
             f"at batch {pred['batch']} ({pred['macs'] / 1e6:.1f} MMACs, {pred['bytes_moved'] / 1e6:.1f} MB moved, "
             f"{pred['compute_bound_layers']}/{pred['nodes']} layers compute-bound)"]
    lines += _format_energy(report.get("energy"))
    return "\n".join(lines)
