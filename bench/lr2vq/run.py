"""LR²VQ vs PQ on digits: accuracy at equal (m, k), exact ratios, file bytes, and the d-estimate vs a d sweep.

Usage (from the repository root; see README.md for the budget):

    .venv/bin/python bench/lr2vq/run.py --model resnet20 --out bench/lr2vq/results
    .venv/bin/python bench/lr2vq/run.py --model mobilenetv2 --out bench/lr2vq/results
    .venv/bin/python bench/lr2vq/run.py --table bench/lr2vq/results   # results.md from the JSON files

Each (m, k) is run twice: LR²VQ (d estimated from the weights) and PQ (d = m, P = I) with the same
schedule and epochs; with d < m LR²VQ's ratio is above PQ's at the same (m, k) (its codebook is k x d,
not k x m); with d = m it is slightly below (it also stores P). Results are written
after every run (``<model>.json``), so an interrupted benchmark keeps what it finished.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgecompress.compress.lr2vq import LR2VQConfig, vq, write_artifacts
from edgecompress.compress.train import TrainConfig, evaluate, train
from edgecompress.data import digits_loaders, sample_batch
from edgecompress.devices.host import cpu_model
from edgecompress.fileio import write_json_atomic, write_text_atomic
from edgecompress.nas import zoo

MODELS = {
    "resnet20": {"zoo": "resnet20", "options": {}, "fp32_epochs": 8,
                 "grid": [(8, 32), (8, 16), (8, 64), (4, 256)], "sweep": (8, 32, [2, 4, 8])},
    "mobilenetv2": {"zoo": "mobilenetv2_cifar", "options": {"width_mult": 0.5}, "fp32_epochs": 30,
                    "grid": [(8, 64), (16, 32)], "sweep": None},
    "tiny": {"zoo": "resnet_cifar_tiny", "options": {}, "fp32_epochs": 1, "grid": [(8, 16)], "sweep": (8, 16, [2, 8])},
}
SIZE = 16  # digits are 8x8; 16x16 keeps every pixel and quarters the cost of 32x32 on this 2-core machine
EPOCHS = 4  # vq epochs per run: 1 low-rank, 2 soft, 1 hard (tiny: 1 soft epoch, a smoke test of the script)


def ort_accuracy(path: str, loader) -> float:
    from edgecompress.runtime.engine import EngineOptions, load_engine

    engine = load_engine(path, "onnxruntime", EngineOptions(threads=1))
    correct = total = 0
    for x, y in loader:
        logits = engine.run([x.numpy()])[0]
        correct += int((np.argmax(logits, 1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def fp32_cache(out: Path, name: str) -> Path:
    """The cached FP32 weights of ``name``, per training length (the epochs changed once: results/notes.md)."""
    return out / f"{name}_fp32_e{MODELS[name]['fp32_epochs']}.pt"


def fresh_train_loader(order_seed: int = 0) -> DataLoader:
    """A new training loader per VQ run: the shuffle generator of a shared one moves on with every run, so
    an LR2VQ run and the PQ run after it would train on different data orders (results/notes.md). The
    train/val split is always seed 0's; ``order_seed`` seeds the shuffle only (0: the order of every run
    in the committed results)."""
    train = digits_loaders(batch_size=64, size=SIZE, seed=0)[0]
    return DataLoader(train.dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(order_seed))


def one_run(model, val_dl, example, config: LR2VQConfig) -> dict:
    result = vq(model, fresh_train_loader(), config, val_data=val_dl)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_artifacts(result, tmp, example)
        compact_acc = ort_accuracy(files["compact_onnx"]["path"], val_dl)
    rep = result.report
    return {"method": config.method, "m": config.m, "k": config.k, "d": rep["d"], "d_source": rep["d_source"],
            "ratio": rep["ratio"], "compressed_bytes": rep["accounting"]["compressed_bytes"],
            "reference_bytes": rep["accounting"]["reference_bytes"],
            "checkpoint_bytes": files["checkpoint"]["bytes"], "checkpoint_ratio": files["checkpoint"]["ratio_vs_fp32"],
            "compact_onnx_bytes": files["compact_onnx"]["bytes"], "dense_onnx_bytes": files["dense_onnx"]["bytes"],
            "compact_onnx_max_rel_error": files["compact_onnx"]["max_rel_error"],
            "val_accuracy": rep["val_accuracy"], "compact_onnx_val_accuracy": compact_acc,
            "quantised_layers": rep["quantised_layers"], "uncompressed_layers": rep["uncompressed_layers"],
            "d_estimate": rep["d_estimate"], "seconds": rep["seconds"],
            "layer_notes": [f"{ln['name']}: {ln['reason'] or ln['note']}" for ln in rep["layers"]
                            if ln["reason"] or ln["note"]]}


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def bench(name: str, out: Path, epochs: int | None = None, grid: list[tuple[int, int]] | None = None,
          tag: str = "", seed: int = 0, methods: tuple[str, ...] = ("lr2vq", "pq"), d_below_m: bool = False,
          distill: float = 0.0, bn_bits: int = 16, fp32_control: bool = False) -> dict:
    spec = dict(MODELS[name])
    if grid is not None:
        spec["grid"], spec["sweep"] = grid, None
    epochs = epochs if epochs is not None else (1 if name == "tiny" else EPOCHS)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_dl, val_dl = digits_loaders(batch_size=64, size=SIZE, seed=0)
    example = sample_batch(val_dl, 2)
    model = zoo.create(spec["zoo"], num_classes=10, **spec["options"])
    t0 = time.perf_counter()
    cache = fp32_cache(out, name)  # not committed; lets an interrupted benchmark skip the FP32 training
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        train(model, train_dl, val_dl, TrainConfig(epochs=spec["fp32_epochs"], optimizer="adamw", lr=3e-3,
                                                   weight_decay=0.05, warmup_epochs=0.5, progress=False))
        torch.save(model.state_dict(), cache)
    model.eval()
    record = {"model": spec["zoo"], "options": spec["options"], "input": f"3x{SIZE}x{SIZE}",
              "data": "sklearn digits, 1437 train / 360 val, resized to 16x16",
              "fp32": {"val_accuracy": evaluate(model, val_dl), "epochs": spec["fp32_epochs"],
                       "seconds": round(time.perf_counter() - t0, 1),
                       "bytes": sum(4 * t.numel() for t in model.state_dict().values() if t.is_floating_point())},
              "vq_epochs": epochs, "vq_seed": seed, "distill": distill, "bn_bits": bn_bits, "runs": [], "sweep": [],
              "d_candidates": "1..m-1 (--d-below-m)" if d_below_m else "1..m (default)",
              "machine": {"cpu": cpu_model(), "torch_threads": 1, "python": platform.python_version(),
                          "torch": torch.__version__,
                          "note": "shared 2-core VM: other jobs or parallel bench processes may contend"},
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "code_commit": _commit()}
    path = out / f"{name}{'_' + tag if tag else ''}.json"
    if fp32_control:  # the uncompressed model trained as many more epochs as a VQ run: does VQ beat extra training?
        control = copy.deepcopy(model)
        logs = train(control, fresh_train_loader(), val_dl, TrainConfig(epochs=epochs, optimizer="adamw", lr=1e-3,
                                                                      weight_decay=0.0, seed=seed))
        record["fp32_control"] = {"val_accuracy": evaluate(control.eval(), val_dl), "extra_epochs": epochs,
                                  "per_epoch_val_accuracy": [log.val_acc for log in logs],
                                  "schedule": "AdamW lr 1e-3 cosine, weight decay 0, the VQ runs' loader"}
        print(f"{name}: FP32 + {epochs} epochs val accuracy {record['fp32_control']['val_accuracy']:.4f}", flush=True)
    write_json_atomic(path, record)
    print(f"{name}: FP32 val accuracy {record['fp32']['val_accuracy']:.4f}", flush=True)
    for i, (m, k) in enumerate(spec["grid"]):
        if i == 1 and spec["sweep"]:
            sweep(model, val_dl, example, spec["sweep"], record, path, epochs)
        for method in methods:
            row = one_run(model, val_dl, example,
                          LR2VQConfig(k=k, m=m, epochs=epochs, method=method, seed=seed, distill=distill,
                                      bn_bits=bn_bits,
                                      d_candidates=tuple(range(1, m)) if d_below_m and method == "lr2vq" else None))
            record["runs"].append(row)
            write_json_atomic(path, record)
            print(f"{name} {method} m={m} k={k} d={row['d']}: ratio {row['ratio']:.1f}x, "
                  f"acc {row['val_accuracy']:.4f}, ckpt {row['checkpoint_bytes']} B, {row['seconds']:.0f} s",
                  flush=True)
    if spec["sweep"] and len(spec["grid"]) == 1:
        sweep(model, val_dl, example, spec["sweep"], record, path, epochs)
    return record


def sweep(model, val_dl, example, spec, record: dict, path: Path, epochs: int) -> None:
    """LR2VQ at fixed (m, k) for each d in the sweep, next to the run with the estimated d."""
    m, k, ds = spec
    estimated = next(r for r in record["runs"] if r["m"] == m and r["k"] == k and r["method"] == "lr2vq")
    record["sweep"].append({**estimated, "estimated": True})
    for d in ds:
        if d == estimated["d"]:
            continue
        row = one_run(model, val_dl, example,
                      LR2VQConfig(k=k, m=m, d=d, epochs=epochs, seed=record.get("vq_seed", 0),
                                  distill=record.get("distill", 0.0), bn_bits=record.get("bn_bits", 16)))
        record["sweep"].append({**row, "estimated": False})
        record["sweep"].sort(key=lambda r: r["d"])
        write_json_atomic(path, record)
        print(f"{record['model']} sweep d={d}: acc {row['val_accuracy']:.4f}, ratio {row['ratio']:.1f}x", flush=True)


def table(out: Path) -> str:
    lines = ["# LR²VQ vs PQ on digits: results", "",
             "Source: measured by `bench/lr2vq/run.py` (command in README.md); accuracy = top-1 on the 360 "
             "validation digits (torch eager, frozen fp16-stored model; the compact ONNX's accuracy in onnxruntime "
             "alongside). Ratios are counted from real bits (`accounting.py`); file bytes are `os.stat` of the files "
             "written. One seed, one run each: on 360 images one image is 0.28 pt.", ""]
    for path in sorted(out.glob("*.json")):
        rec = json.loads(path.read_text())
        if "fp32" not in rec or "runs" not in rec:
            continue  # d_sweep.py's files: their own tables (<name>.md) next to them
        fp = rec["fp32"]
        seed = f", seed {rec['vq_seed']}" if rec.get("vq_seed") else ""
        seed += f", distill {rec['distill']:g}" if rec.get("distill") else ""
        seed += f", BatchNorm in {rec['bn_bits']} bits" if rec.get("bn_bits", 16) != 16 else ""
        lines += [f"## {rec['model']} {rec['options'] or ''} ({rec['input']}), {rec['vq_epochs']} VQ epochs{seed} "
                  f"[{path.name}]", "",
                  f"FP32: val accuracy {fp['val_accuracy']:.2%}, {fp['bytes']} bytes of float tensors, "
                  f"{fp['epochs']} epochs. VQ: {rec['vq_epochs']} epochs per run (1/4 low-rank, 1/2 soft, 1/4 hard). "
                  f"Machine: {rec['machine']['cpu']}, torch threads 1, {rec['machine']['note']}.", "",
                  *([f"FP32 trained {rec['fp32_control']['extra_epochs']} more epochs without VQ (control: "
                     f"{rec['fp32_control']['schedule']}): {rec['fp32_control']['val_accuracy']:.2%}.", ""]
                    if rec.get("fp32_control") else []),
                  "| method | m | k | d | ratio (bits) | ckpt bytes | ckpt ratio | compact ONNX bytes "
                  "| dense ONNX bytes | val acc | Δ vs FP32 (pt) | compact ONNX acc (ORT) | s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rec["runs"]:
            lines.append(f"| {r['method']} | {r['m']} | {r['k']} | {r['d']} | {r['ratio']:.1f}x "
                         f"| {r['checkpoint_bytes']} | {r['checkpoint_ratio']:.1f}x | {r['compact_onnx_bytes']} "
                         f"| {r['dense_onnx_bytes']} "
                         f"| {r['val_accuracy']:.2%} | {100 * (r['val_accuracy'] - fp['val_accuracy']):+.2f} "
                         f"| {r['compact_onnx_val_accuracy']:.2%} | {r['seconds']:.0f} |")
        pairs = {}
        for r in rec["runs"]:
            pairs.setdefault((r["m"], r["k"]), {})[r["method"]] = r
        lines += ["", "LR²VQ vs PQ at the same (m, k) (LR²VQ's ratio is the higher one unless its d = m):", ""]
        for (m, k), p in pairs.items():
            if {"lr2vq", "pq"} <= set(p):
                a, b = p["lr2vq"], p["pq"]
                verdict = "LR²VQ >= PQ" if a["val_accuracy"] >= b["val_accuracy"] else "**LR²VQ < PQ**"
                lines.append(f"- m={m}, k={k}: LR²VQ {a['val_accuracy']:.2%} at {a['ratio']:.1f}x vs PQ "
                             f"{b['val_accuracy']:.2%} at {b['ratio']:.1f}x: {verdict}")
        if rec["sweep"]:
            best = max(r["val_accuracy"] for r in rec["sweep"])
            est = next((r for r in rec["sweep"] if r["estimated"]), None)
            lines += ["", f"d sweep at m={rec['sweep'][0]['m']}, k={rec['sweep'][0]['k']}:", "",
                      "| d | estimated | ratio | val acc |", "|---|---|---|---|"]
            lines += [f"| {r['d']} | {'yes' if r['estimated'] else ''} | {r['ratio']:.1f}x | {r['val_accuracy']:.2%} |"
                      for r in rec["sweep"]]
            if est is not None:
                gap = 100 * (best - est["val_accuracy"])
                lines += ["", f"Estimated d = {est['d']}: {gap:.2f} pt below the best d of the sweep "
                              f"({'within' if gap <= 0.5 else '**outside**'} the 0.5 pt target)."]
                curve = est["d_estimate"]
                if curve:
                    lines += ["", "The estimate's curves (relative errors, all quantised layers):", "",
                              "| d | e_lr(d) | e_c(d) | max |", "|---|---|---|---|"]
                    lines += [f"| {d} | {a:.4f} | {c:.4f} | {max(a, c):.4f} |" for d, a, c in
                              zip(curve["candidates"], curve["lowrank_error"], curve["clustering_error"], strict=True)]
        lines.append("")
    notes = out / "notes.md"  # the reading of the numbers, written by hand after the run
    if notes.is_file():
        lines += [notes.read_text()]
    text = "\n".join(lines)
    write_text_atomic(out / "results.md", text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS))
    parser.add_argument("--out", default="bench/lr2vq/results")
    parser.add_argument("--table", metavar="DIR", help="only write DIR/results.md from the JSON files")
    parser.add_argument("--epochs", type=int, help=f"VQ epochs per run (default {EPOCHS})")
    parser.add_argument("--grid", help="m:k pairs, comma-separated, replacing the model's grid (no d sweep)")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--seed", type=int, default=0, help="LR2VQConfig.seed (k-means and training order)")
    parser.add_argument("--methods", nargs="+", default=["lr2vq", "pq"], choices=["lr2vq", "pq"])
    parser.add_argument("--d-below-m", action="store_true",
                        help="LR2VQ's d estimate chooses among 1..m-1 only (a true low-rank projection)")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="LR2VQConfig.distill: weight of distilling the FP32 model's outputs (0: CE only)")
    parser.add_argument("--bn-bits", type=int, default=16, choices=(16, 8),
                        help="LR2VQConfig.bn_bits: folded BatchNorm scale/shift in fp16 or on an 8-bit grid")
    parser.add_argument("--fp32-control", action="store_true",
                        help="also train the FP32 model --epochs more epochs (no VQ) and report its accuracy")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    if not args.model:
        parser.error("--model or --table is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = [tuple(int(v) for v in pair.split(":")) for pair in args.grid.split(",")] if args.grid else None
    bench(args.model, out, args.epochs, grid, args.tag, args.seed, tuple(args.methods), args.d_below_m,
          args.distill, args.bn_bits, args.fp32_control)
    table(out)


if __name__ == "__main__":
    main()
