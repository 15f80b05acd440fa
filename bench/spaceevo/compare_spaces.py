"""Host-specific space (Q-T evolution) + its quantized-for-all supernet vs the plain MobileNetV2 space.

Both spaces get the same supernet training (sandwich FP32 then LSQ+ INT8 QAT, same epochs) and the
same subnet search under the same INT8 latency limit on the host (onnxruntime, 1 thread); the
result compares the best onnxruntime INT8 accuracy on digits among candidates whose **measured**
latency meets the limit, and the two winners' latency ratio from one interleaved run. Writes
``results/compare_spaces.json`` and ``.md``. Small scale: see README.md for the command and budgets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from edgecompress.data import digits_loaders
from edgecompress.devices.host import cpu_model
from edgecompress.devices.timing import interleaved
from edgecompress.fileio import write_json_atomic, write_text_atomic
from edgecompress.nas.evolution import SpaceEvolutionConfig, SubnetSearchConfig, evolve_space, search_subnets
from edgecompress.nas.predictor import LatencyPredictor, MeasureSettings
from edgecompress.nas.qt_score import QTConfig, qt_score
from edgecompress.nas.space import CIFAR_HYPERSPACE, mobilenetv2_space
from edgecompress.nas.supernet import Supernet, SupernetConfig, train_supernet
from edgecompress.runtime.engine import EngineOptions, load_engine

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--predictor", default=str(HERE / "results" / "predictor_host_ort_int8.json"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--train-subset", type=int, default=384, help="digits training images used (of 1437)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    command = " ".join([".venv/bin/python", "bench/spaceevo/compare_spaces.py", *sys.argv[1:]])
    settings = MeasureSettings(threads=1, warmup=10, repeats=40, rounds=5)
    limit = args.latency_ms
    train, val = digits_loaders(batch_size=64, size=32, seed=0)
    train = DataLoader(Subset(train.dataset, range(args.train_subset)), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    sn_config = SupernetConfig(epochs=args.epochs, qat_epochs=args.qat_epochs, num_random=1, seed=0, progress=False)
    search_config = SubnetSearchConfig(population=6, generations=1, measure_top=3, settings=settings, seed=0)
    mbv2 = mobilenetv2_space()
    supernets, train_seconds = {}, {}
    t0 = time.perf_counter()
    supernets["mobilenetv2"] = Supernet(mbv2)
    logs = {"mobilenetv2": train_supernet(supernets["mobilenetv2"], train, sn_config)}
    train_seconds["mobilenetv2"] = time.perf_counter() - t0
    print("trained the MobileNetV2 supernet", logs["mobilenetv2"][-1], flush=True)

    while not Path(args.predictor).is_file():  # written by predictor_accuracy.py once fitted
        print("waiting for", args.predictor, flush=True)
        time.sleep(30)
    predictor = LatencyPredictor.load(args.predictor)
    qt = QTConfig((0.8 * limit, limit), samples=300)
    host_space, history = evolve_space(CIFAR_HYPERSPACE, predictor, qt,
                                       SpaceEvolutionConfig(population=20, sample=5, cycles=30), progress=print)
    qt_rows = {"host": qt_score(host_space, predictor, qt), "mobilenetv2": qt_score(mbv2, predictor, qt)}
    print("host space", host_space.format(), qt_rows["host"][0], "mbv2", qt_rows["mobilenetv2"][0], flush=True)
    t0 = time.perf_counter()
    supernets["host"] = Supernet(host_space)
    logs["host"] = train_supernet(supernets["host"], train, sn_config)
    train_seconds["host"] = time.perf_counter() - t0

    results, work = {}, Path(tempfile.mkdtemp(prefix="ec-compare-"))
    for name in ("host", "mobilenetv2"):
        t0 = time.perf_counter()
        found = search_subnets(supernets[name], predictor, limit, train, val, search_config, workdir=work / name,
                               progress=print)
        found.update(train_logs=logs[name], train_seconds=train_seconds[name],
                     search_seconds=time.perf_counter() - t0)
        results[name] = found
        print(name, "best", found["candidates"][found["best"]] if found["best"] is not None else None, flush=True)

    # the two winners' latency in one interleaved run
    engines = {}
    for name, found in results.items():
        if found["best"] is not None:
            e = load_engine(work / name / found["candidates"][found["best"]]["onnx"], "onnxruntime",
                            EngineOptions(threads=1))
            feeds = e.check_feeds(e.example_feeds(1))
            engines[name] = (lambda e=e, f=feeds: e.run(f))
    samples = interleaved(engines, warmup=20, repeats=50, rounds=5) if len(engines) == 2 else {}
    lat = {n: {"min": min(s), "median": statistics.median(s), "max": max(s)} for n, s in samples.items()}
    ratio = lat["host"]["min"] / lat["mobilenetv2"]["min"] if len(lat) == 2 else None

    summary = {}
    for name, found in results.items():
        ok = [c for c in found["candidates"] if c.get("measured_ms") is not None and c["measured_ms"] <= limit]
        best = max(ok, key=lambda c: c["onnx_int8_accuracy"]) if ok else None
        summary[name] = {"space": found["space"], "qt_score": qt_rows[name][0],
                         "best": best, "pareto": [found["candidates"][i] for i in found["pareto"]],
                         "train_seconds": found["train_seconds"], "search_seconds": found["search_seconds"]}
    result = {
        "what": "host-specific space (Q-T evolution) vs plain MobileNetV2 space, same supernet training and search",
        "device": "host", "cpu": cpu_model(), "runtime": "onnxruntime CPU, INT8 Q/DQ, 1 thread, batch 1",
        "latency_limit_ms": limit, "measure_settings": settings.as_dict(),
        "data": f"digits 32x32 (first {args.train_subset} of 1437 train images / 360 val)",
        "budgets": {"supernet": asdict(sn_config), "subnet_search": {k: v for k, v in asdict(search_config).items()
                                                                    if k != "settings"},
                    "space_evolution": {"population": 20, "sample": 5, "cycles": 30, "qt_samples": 300}},
        "quality_proxy": "capacity (1 / log MACs), not SpaceEvo's block-KD loss",
        "note": f"2 shared CPU cores; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
                "accuracies from one seed",
        "command": command,
        "summary": summary, "interleaved_latency_ms": lat, "latency_ratio_host_over_mbv2": ratio,
        "space_history": history, "details": results, "seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    write_json_atomic(out / "compare_spaces.json", result)
    rows = []
    for name, s in summary.items():
        b = s["best"]
        acc = f"{b['onnx_int8_accuracy']:.2%} (fake-quant {b['fake_quant_accuracy']:.2%})" if b else "none"
        ms = f"{b['measured_ms']:.3f}" if b else "-"
        il = lat.get(name)
        il_s = f"{il['min']:.3f} / {il['median']:.3f} / {il['max']:.3f}" if il else "-"
        rows.append(f"| {name} | `{s['space']}` | {s['qt_score']:.3f} | {b['subnet'] if b else '-'} | {acc} | {ms} | "
                    f"{il_s} |")
    md = [f"# Host space vs MobileNetV2 space at the same INT8 latency limit ({limit:g} ms)", "",
          f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, "
          f"{result['note']}).", "",
          f"Budgets: supernet {args.epochs} FP32 sandwich epochs + {args.qat_epochs} LSQ+ QAT epoch(s) on "
          f"{args.train_subset} digits images (max, min + 1 random subnet per step); subnet search "
          "population 6, 1 generation, 3 measured (+ the fastest); space evolution 20 x 30 cycles, Q-T on 300 "
          "predicted subnets. "
          "Accuracy: onnxruntime INT8 on the 360-image digits validation split (one seed).", "",
          "| space | text | Q-T | best subnet (measured <= limit) | INT8 accuracy | measured ms | "
          "interleaved ms min / median / max |", "|---|---|---|---|---|---|---|", *rows, "",
          f"Latency ratio host / MobileNetV2 winners (min, one interleaved run): "
          f"{ratio:.2f}" if ratio else "No interleaved ratio (a search found no subnet).", ""]
    write_text_atomic(out / "compare_spaces.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
