"""Demo stage ``tvm`` (order 70): compile the demo's ONNX model with TVM for the host, check it against
onnxruntime, time both in one interleaved run, and (not under ``--quick``) cross-compile a Raspberry
Pi 4 bundle when the aarch64 cross compiler is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgecompress.demo import DemoContext, demo_stage


@demo_stage("tvm", order=70)
def tvm_stage(ctx: DemoContext, out: Path) -> dict:
    import numpy as np

    from edgecompress.devices.timing import LatencyStats, interleaved
    from edgecompress.runtime.backend_tvm import TvmCompileConfig, build_engine
    from edgecompress.runtime.bundle import compile_bundle
    from edgecompress.runtime.engine import EngineOptions, load_engine

    onnx_path = ctx.artifacts["model.onnx"]
    threads = ctx.config.threads
    # no MetaSchedule search in the demo: on 2 shared cores it takes many minutes (see bench/tvm); records
    # already in the tuning cache for this model and target are applied
    trials = 0
    tvm_engine, build = build_engine(onnx_path, TvmCompileConfig(trials_per_task=trials), threads=threads)
    ort_engine = load_engine(onnx_path, "onnxruntime", EngineOptions(threads=threads))
    feeds = tvm_engine.example_feeds(batch=1)
    repeats = 10 if ctx.config.quick else max(10, ctx.config.repeats // 2)
    samples = interleaved({"tvm": lambda: tvm_engine.run(feeds), "onnxruntime": lambda: ort_engine.run(feeds)},
                          warmup=3, repeats=repeats, rounds=2)
    stats = {k: LatencyStats.from_samples(v).as_dict() for k, v in samples.items()}
    ratio = stats["tvm"]["median_ms"] / stats["onnxruntime"]["median_ms"]
    report = {"engine": tvm_engine.settings(), "compile": build.report,
              "latency": {"source": "measured", "device": "host", "batch": 1, "threads": tvm_engine.threads,
                          "method": f"interleaved wall clock of engine.run, 2 rounds x {repeats}, warmup 3",
                          "stats_ms": stats, "tvm_over_onnxruntime_median": round(ratio, 3)}}
    ctx.summary["tvm_median_ms"] = stats["tvm"]["median_ms"]
    ctx.summary["tvm_over_onnxruntime"] = round(ratio, 3)
    if ctx.config.quick:
        report["rpi4_bundle"] = "skipped under --quick (one more compile); tests/runtime covers rpi4/rpi5 builds"
    elif shutil.which("aarch64-linux-gnu-g++"):
        bundle = compile_bundle(onnx_path, "tvm", "rpi4", out / "bundle-rpi4", threads=threads,
                                cross_parity=False)  # the host build above checked the same import
        report["rpi4_bundle"] = {"path": str(bundle.name), "engine": "engine.so (aarch64 ELF, checked)",
                                 "parity": "the host build of the same model above; aarch64 code not run here"}
    else:
        report["rpi4_bundle"] = "skipped: aarch64-linux-gnu-g++ not installed (make setup installs it)"
    report["max_rel_error_vs_onnxruntime"] = float(np.float64(build.report["parity"]["max_rel_error"]))
    return report
