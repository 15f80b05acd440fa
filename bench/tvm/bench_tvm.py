"""TVM (Relax, after a stated MetaSchedule budget) vs onnxruntime latency, one interleaved run.

Models: the digits MobileNetV2 (zoo ``mobilenetv2_cifar``, width 0.5, 3x32x32, as in the demo) and
MobileNetV2@224 (zoo ``mobilenetv2``). Weights are random (latency does not depend on their values);
every TVM engine is parity-checked against onnxruntime when it is built (max relative error reported).

Timing: batch 1, ``engine.run`` wall clock for every candidate (input copies included for both),
``devices.timing.interleaved`` (warmup, then rounds x repeats round-robin); TVM's own
``time_evaluator`` figure is reported next to it. Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgecompress.devices.host import cpu_model, package_version, usable_cores
from edgecompress.devices.timing import LatencyStats, interleaved
from edgecompress.export.onnx import export_onnx
from edgecompress.nas import zoo
from edgecompress.runtime.backend_tvm import TvmCompileConfig, build_engine
from edgecompress.runtime.engine import EngineOptions, load_engine

MODELS = {"digits_mnv2": ("mobilenetv2_cifar", {"width_mult": 0.5}), "mnv2_224": ("mobilenetv2", {})}


def bench_model(key: str, trials: list[int], threads: int, repeats: int, rounds: int, work: Path,
                layouts: tuple[str, ...] = ("NCHW",)) -> dict:
    name, options = MODELS[key]
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10, **options).eval()
    path = work / f"{key}.onnx"
    export_onnx(model, torch.randn(1, *model.input_size), path)
    ort = load_engine(path, "onnxruntime", EngineOptions(threads=threads))
    candidates = {"onnxruntime": ort}
    builds = {}
    for variant in layouts:
        layout, _, prepack = variant.partition("-")  # "NHWC-prepack": NHWC with MetaSchedule's weight prepacking
        for n in trials:
            name = (f"tvm_trials{n}" if variant == "NCHW" else f"tvm_{variant.lower().replace('-', '_')}_trials{n}")
            t0 = time.perf_counter()
            try:
                # 0 trials means "no search", but records cached by an earlier tuned run would still be
                # applied: the untuned baseline compiles against an empty cache of its own
                cache = {"cache_dir": work / "untuned-cache"} if n == 0 else {}
                engine, build = build_engine(path, TvmCompileConfig(trials_per_task=n, layout=layout,
                                                                      prepack=bool(prepack), **cache),
                                             threads=threads)
            except Exception as exc:  # noqa: BLE001 - a failed candidate is reported, the others still run
                builds[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"[{key}] {name}: FAILED {exc}", flush=True)
                continue
            builds[name] = {**build.report, "wall_s": round(time.perf_counter() - t0, 1),
                            "time_evaluator_ms": LatencyStats.from_samples(
                                engine.measure(engine.example_feeds(), 3, repeats)).as_dict()}
            candidates[name] = engine
            print(f"[{key}] {name}: built in {builds[name]['wall_s']} s, schedules {build.report['schedules']}",
                  flush=True)
    feeds = ort.example_feeds(batch=1)
    samples = interleaved({k: (lambda e=e: e.run(feeds)) for k, e in candidates.items()},
                          warmup=5, repeats=repeats, rounds=rounds)
    stats = {k: LatencyStats.from_samples(v).as_dict() for k, v in samples.items()}
    base = stats["onnxruntime"]
    ratios = {k: {"median_ratio_vs_ort": round(s["median_ms"] / base["median_ms"], 2),
                  "min_ratio_vs_ort": round(s["min_ms"] / base["min_ms"], 2)} for k, s in stats.items()}
    return {"model": name, "options": options, "input": list(model.input_size), "stats_ms": stats,
            "ratios": ratios, "builds": builds}


def markdown(result: dict) -> str:
    load = [result["host"].get(k, [None])[0] for k in ("load_avg_at_start", "load_avg_at_end")]
    load_txt = ", ".join("?" if x is None else f"{x:.1f}" for x in load)
    lines = [f"Source: measured on {result['host']['cpu']} ({result['host']['cores']} usable cores of a shared VM; "
             f"1-min load average {load_txt} at start and end, tuning included), batch 1, "
             f"{result['settings']['threads']} threads, interleaved "
             f"{result['settings']['rounds']} rounds x {result['settings']['repeats']} runs (warmup 5), "
             "wall clock of engine.run. Ratios are TVM / onnxruntime (1.0 = as fast).", "",
             "| model | engine | min ms | median ms | max ms | median ratio | min ratio "
             "| TVM time_evaluator median ms | tuning |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in result["models"].items():
        for eng, s in r["stats_ms"].items():
            b = r["builds"].get(eng, {})
            te = b.get("time_evaluator_ms", {}).get("median_ms")
            tuning = b.get("tuning", {})
            tune_txt = (f"{tuning.get('trials_per_task_cached', 0)} trials/task, {tuning.get('tasks', '?')} tasks, "
                        f"{tuning.get('seconds', 0)} s" if eng != "onnxruntime" else "")
            lines.append(f"| {key} | {eng} | {s['min_ms']:.3f} | {s['median_ms']:.3f} | {s['max_ms']:.3f} | "
                         f"{r['ratios'][eng]['median_ratio_vs_ort']} | {r['ratios'][eng]['min_ratio_vs_ort']} | "
                         f"{'' if te is None else f'{te:.3f}'} | {tune_txt} |")
        for eng, b in r["builds"].items():
            if "error" in b:
                lines.append(f"| {key} | {eng} | failed: {b['error'][:200]} | | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[0, 8], help="MetaSchedule trials per task to compare")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layouts", nargs="+", default=["NCHW"],
                   choices=["NCHW", "NHWC", "NCHW-prepack", "NHWC-prepack"],
                   help="convolution layouts to compile (TvmCompileConfig.layout; '-prepack': weights laid out "
                        "for the tuned schedule, TvmCompileConfig.prepack), each with every --trials")
    p.add_argument("--out", default=str(Path(__file__).parent))
    p.add_argument("--tag", default="", help="write results_<tag>.json/.md instead of results.json/.md")
    args = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    result = {"command": "python bench/tvm/bench_tvm.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "host": {"cpu": cpu_model(), "cores": usable_cores(), "machine": platform.machine(),
                       "load_avg_at_start": os.getloadavg()},
              "versions": {p: package_version(p) for p in ("apache-tvm", "apache-tvm-ffi", "onnxruntime", "torch")},
              "settings": {"threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
                           "trials_per_task": args.trials, "layouts": args.layouts, "batch": 1},
              "source": "measured", "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for key in args.models:
            result["models"][key] = bench_model(key, args.trials, args.threads, args.repeats, args.rounds, Path(work),
                                                tuple(args.layouts))
    result["host"]["load_avg_at_end"] = os.getloadavg()
    out = Path(args.out)
    stem = f"results_{args.tag}" if args.tag else "results"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
