"""INT8 vs FP32 on onnxruntime (CPU): edgecompress.quantize vs onnxruntime's quantize_static vs NNCF.

One interleaved timing run per model (devices.timing.interleaved: every candidate warmed up, then
``--rounds`` rounds of ``--repeats`` batch-1 runs each, round-robin), 2 intra-op threads, ORT_ENABLE_ALL.
Peers are run as in shared/anchors/int8.py: onnxruntime ``quant_pre_process`` + ``quantize_static`` (QDQ,
per-channel, U8 activations / S8 weights, MinMax), and ``nncf.quantize`` defaults on the ONNX model.

Models: MobileNetV2@224 and ResNet-18@224 with random weights and BN statistics re-estimated on random
images (calibration: 32 random N(0,1) images, checks: 64 others, as the anchors), and the CIFAR-style
MobileNetV2 (width 0.5) trained on digits (calibration: the 1437 training images, checks and accuracy: the 360
validation images).

Usage: .venv/bin/python bench/int8/run.py [--models mobilenetv2 resnet18 digits] [--out bench/int8/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgecompress.compress.int8.api import quantize, run_onnx
from edgecompress.compress.int8.checks import compare
from edgecompress.compress.int8.config import Int8Config
from edgecompress.compress.int8.placement import verify_onnxruntime
from edgecompress.devices.host import host_info, package_version
from edgecompress.devices.timing import interleaved
from edgecompress.export.onnx import export_onnx

THREADS = 2


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def model_and_data(name: str, epochs: int, weights: str | None = None, width: float = 0.5, size: int = 32):
    from edgecompress.nas import zoo

    torch.manual_seed(0)
    if name == "digits":
        from edgecompress.compress.train import TrainConfig, evaluate, train
        from edgecompress.data import digits_loaders

        tr, va = digits_loaders(batch_size=64, size=size)
        model = zoo.create("mobilenetv2_cifar", num_classes=10, width_mult=width)
        if weights and Path(weights).is_file():
            from edgecompress.models import load_state_dict

            model.load_state_dict(load_state_dict(weights))
        else:
            train(model, tr, va, TrainConfig(epochs=epochs, optimizer="adamw", lr=3e-3, weight_decay=0.05,
                                             warmup_epochs=0.5, progress=False))
            if weights:
                torch.save(model.state_dict(), weights)
        calib = torch.cat([x for x, _ in tr]).numpy()  # the whole training set (1437 images)
        xs = torch.cat([x for x, _ in va]).numpy()
        ys = torch.cat([y for _, y in va]).numpy()
        return model.eval(), calib, xs, ys, {"fp32_torch_val_accuracy": evaluate(model, va), "width_mult": width,
                                             "input_size": size, "train_epochs": epochs}
    model = zoo.create(name, num_classes=1000)
    g = torch.Generator().manual_seed(123)
    # random weights make activations vanish (the zoo MobileNetV2@224 outputs ~1e-9 logits, so SQNR and
    # agreement would be meaningless): re-estimate BN statistics on random images so every layer sees
    # unit-scale activations, as in a trained net. Latency is unaffected (BN is folded at export).
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224, generator=g))
    model.eval()
    calib = torch.randn(32, 3, 224, 224, generator=g).numpy()
    xs = torch.randn(64, 3, 224, 224, generator=g).numpy()
    return model, calib, xs, None, {}


def ort_quantize_static(fp32: Path, calib: np.ndarray, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": c[None]} for c in calib)

        def get_next(self):
            return next(self.it, None)

    pre = out.with_name("ort_pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def nncf_quantize(fp32: Path, calib: np.ndarray, out: Path) -> None:
    import nncf

    qm = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset([{"input": c[None]} for c in calib]),
                       subset_size=len(calib))
    onnx.save(qm, str(out))


def bench_model(name: str, args, workdir: Path) -> dict:
    model, calib, xs, ys, extra = model_and_data(name, args.epochs, args.digits_weights, args.digits_width,
                                                 args.digits_size)
    fp32 = workdir / f"{name}_fp32.onnx"
    export_onnx(model, torch.from_numpy(xs[:1]), fp32)
    paths = {"fp32": fp32}
    info: dict[str, dict] = {"fp32": {}}
    t0 = time.perf_counter()
    # floors off: the benchmark records the accuracy/SQNR it measures instead of stopping at a floor
    res = quantize(fp32, calib, Int8Config(min_sqnr_db=None, max_accuracy_drop=None),
                   output=workdir / f"{name}_ec_int8.onnx")
    paths["edgecompress"] = res.model
    info["edgecompress"] = {"quantize_s": round(time.perf_counter() - t0, 1),
                            "reduce_range": res.report["placement"]["reduce_range"]}
    for key, fn in (("ort_quantize_static", ort_quantize_static), ("nncf_onnx", nncf_quantize)):
        out = workdir / f"{name}_{key}.onnx"
        t0 = time.perf_counter()
        try:
            fn(fp32, calib, out)
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result to report
            info[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        paths[key] = out
        info[key] = {"quantize_s": round(time.perf_counter() - t0, 1)}
    reference = run_onnx(fp32, xs)
    for key, path in paths.items():
        info[key]["size_bytes"] = path.stat().st_size
        if key != "fp32":
            placement = verify_onnxruntime(path, fp32)
            info[key]["placement"] = {k: placement[k] for k in ("layers", "int8_layers", "float_layers",
                                                                "unknown_layers", "runtime_ops")}
            info[key]["checks"] = compare(reference, run_onnx(path, xs), ys)
        elif ys is not None:
            info[key]["checks"] = {"fp32_accuracy": float(np.mean(reference.argmax(1) == ys))}
    sessions = {k: session(p) for k, p in paths.items()}
    feed = {"input": xs[:1]}
    samples = interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()},
                          warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
    per_round = {k: [statistics.median(v[r * args.repeats:(r + 1) * args.repeats]) for r in range(args.rounds)]
                 for k, v in samples.items()}
    for key, v in samples.items():
        info[key]["latency_ms"] = {"min": min(v), "median": statistics.median(v), "max": max(v),
                                   "round_medians": [round(m, 3) for m in per_round[key]]}
    base = info["fp32"]["latency_ms"]
    for key in samples:
        lat = info[key]["latency_ms"]
        info[key]["speedup_vs_fp32"] = {"median": base["median"] / lat["median"], "min": base["min"] / lat["min"]}
    return {"model": name, "input": list(xs.shape[1:]), **extra, "candidates": info}


def _row(model: str, key: str, c: dict) -> str:
    if "error" in c:
        return f"| {model} | {key} | failed: {c['error'][:80]} | | | | | | | |"
    lat, sp, pl, ch = c["latency_ms"], c["speedup_vs_fp32"], c.get("placement"), c.get("checks", {})
    acc = ch.get("int8_accuracy", ch.get("fp32_accuracy"))
    cells = [model, key, f"{lat['min']:.2f} / {lat['median']:.2f} / {lat['max']:.2f}",
             f"{sp['median']:.2f}x", f"{sp['min']:.2f}x",
             f"{pl['int8_layers']}/{pl['layers']}" if pl else "-",
             f"{ch['sqnr_db']:.1f}" if "sqnr_db" in ch else "-",
             f"{ch['top1_agreement']:.3f}" if "top1_agreement" in ch else "-",
             f"{acc:.4f}" if acc is not None else "-", f"{c['size_bytes'] / 1e6:.2f}"]
    return "| " + " | ".join(cells) + " |"


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"# INT8 vs FP32 on onnxruntime {s['onnxruntime']} (measured)", "",
             f"Host: {results['host'].get('cpu', '?')} ({results['host'].get('cores', '?')} cores, AVX2, no VNNI), "
             f"{THREADS} intra-op threads, batch 1, ORT_ENABLE_ALL, CPUExecutionProvider. One interleaved run per "
             f"model: warmup {s['warmup']}, {s['rounds']} rounds x {s['repeats']} runs per candidate, round-robin. "
             "The 2-core machine is shared with other engineers' jobs and noisy: compare the ratios (same run) "
             "and the minima rather than absolute medians.", "",
             f"Command: `{s['command']}`", "",
             "| model | candidate | min / median / max ms | speedup (median) | speedup (min) | Conv/Gemm in INT8 "
             "after ORT optimisation | SQNR dB vs FP32 | top-1 agree | accuracy | size MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in results["models"]:
        lines += [_row(m["model"], key, c) for key, c in m["candidates"].items()]
    lines += ["", "Per-model runs (each model is one interleaved run):", ""]
    for m in results["models"]:
        st = m.get("settings", s)
        lines.append(f"- {m['model']}: {st['rounds']} rounds x {st['repeats']} runs, warmup {st['warmup']}, "
                     f"measured {m.get('measured_at_utc', '?')} UTC, `{st['command']}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["mobilenetv2", "resnet18", "digits"])
    p.add_argument("--out", default="bench/int8/results")
    p.add_argument("--epochs", type=int, default=4, help="digits training epochs")
    p.add_argument("--digits-width", type=float, default=0.5, help="digits MobileNetV2 width multiplier")
    p.add_argument("--digits-size", type=int, default=32, help="digits image size (the 8x8 digits are resized)")
    p.add_argument("--digits-weights", help="load the digits model's weights from here if the file exists, "
                                             "else train and save them here")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep-others", action="store_true",
                   help="keep the results of models not named in --models from an earlier results.json")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    results = {"settings": {"threads": THREADS, "warmup": args.warmup, "repeats": args.repeats,
                            "rounds": args.rounds, "onnxruntime": ort.__version__,
                            "nncf": package_version("nncf"), "command": "python " + " ".join(sys.argv),
                            "source": "measured"},
               "host": host_info(), "models": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kept = []
    if args.keep_others and (out / "results.json").is_file():
        # models not re-run here keep their earlier results (each entry carries its own settings)
        old = json.loads((out / "results.json").read_text())
        kept = [m for m in old["models"] if m["model"] not in args.models]
        for m in kept:
            m.setdefault("settings", {k: old["settings"][k] for k in ("warmup", "repeats", "rounds", "command")})
    results["models"] = kept
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"[{name}]", flush=True)
            entry = bench_model(name, args, Path(tmp))
            entry["settings"] = {k: results["settings"][k] for k in ("warmup", "repeats", "rounds", "command")}
            entry["measured_at_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
            results["models"].append(entry)
            (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
            (out / "results.md").write_text(markdown(results))
            print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
