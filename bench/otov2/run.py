"""OTOv2 benchmark on digits: dense vs OTOv2 (DHSPG, trained once) vs torch-pruning L2 magnitude at the same MACs.

For one model (``--model resnet20`` or ``mobilenetv2_cifar`` at ``--width`` 0.5) and each target group
sparsity in ``--targets``:

- dense: trained ``--epochs`` epochs (AdamW lr 3e-3, wd 0.05, cosine);
- OTOv2: ``edgecompress.prune`` from scratch with the same ``--epochs`` (DHSPG AdamW, one training, no
  fine-tuning), subnet checked against the group-sparse model;
- torch-pruning: a dense model trained ``epochs // 2`` (shared by the targets), pruned by ``MetaPruner`` +
  ``GroupMagnitudeImportance(p=2)`` (uniform ratio, classifier ignored) with the ratio bisected so its MACs
  match OTOv2's within 2%, then fine-tuned ``epochs - epochs // 2``: the same total epochs.

Then every candidate is exported to ONNX and timed in onnxruntime (1 thread, batch 1) in ONE interleaved
run (``devices.timing.interleaved``); latency ratios are dense / candidate from that run. Results are
written after every step to ``OUT/<model>.json``. Source of every latency: measured on this host.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="resnet20 | mobilenetv2_cifar (any CIFAR zoo model works)")
    p.add_argument("--width", type=float, default=0.5, help="width_mult for mobilenetv2_cifar")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3, 0.7])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warmup", type=float, default=0.0, help="lr warm-up epochs, the same for every method")
    p.add_argument("--group-divisible", type=int, default=1, help="OTOv2 kept-channel multiple")
    p.add_argument("--macs-exponent", type=float, default=0.0, help="OTOv2 MACs-aware row ranking (0 = the paper)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/otov2/results")
    p.add_argument("--tag", default="", help="suffix of the results file name (results/<model>_<tag>.json)")
    p.add_argument("--remeasure", action="store_true",
                   help="no training: time the ONNX files an earlier run wrote again (one interleaved run, e.g. on a "
                        "quieter machine) and replace the latency section of its JSON")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    import torch_pruning as tp

    import edgecompress as ec
    from edgecompress.compress.stats import model_stats
    from edgecompress.compress.train import TrainConfig, evaluate, train
    from edgecompress.data import digits_loaders
    from edgecompress.devices.host import host_info
    from edgecompress.devices.timing import LatencyStats, interleaved
    from edgecompress.export.onnx import export_onnx
    from edgecompress.runtime.engine import EngineOptions, load_engine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    tag = args.model if args.model == "resnet20" else f"{args.model}_w{args.width}"
    stem = f"{tag}{'_' + args.tag if args.tag else ''}"
    path = out / f"{stem}.json"
    train_dl, val_dl = digits_loaders(batch_size=64, seed=0)
    example = next(iter(val_dl))[0][:1]
    kw = {"width_mult": args.width} if args.model == "mobilenetv2_cifar" else {}

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return ec.zoo.create(args.model, num_classes=10, **kw)

    def tcfg(epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, optimizer="adamw", lr=3e-3, weight_decay=0.05, seed=0, progress=False,
                           warmup_epochs=min(args.warmup, epochs / 2))

    res = {"model": tag, "data": "sklearn digits 32x32x3, 1437 train / 360 val", "epochs": args.epochs,
           "host": host_info(), "torch_threads": args.threads, "torch_pruning": tp.__version__,
           "load_avg_at_start": os.getloadavg(), "args": {k: v for k, v in vars(args).items() if k != "remeasure"},
           "dense": {}, "otov2": {}, "torch_pruning_l2": {}}

    def save() -> None:
        path.write_text(json.dumps(res, indent=1, default=str))

    models: dict[str, nn.Module] = {}
    ckpt = out / "ckpt"
    ckpt.mkdir(exist_ok=True)

    def trained(name: str, epochs: int) -> nn.Module:
        """A fresh model trained ``epochs`` epochs, reloaded from OUT/ckpt when an earlier run saved it."""
        m = fresh()
        f = ckpt / f"{tag}_{name}_e{epochs}{f'_warm{args.warmup:g}' if args.warmup else ''}.pt"
        if f.is_file():
            m.load_state_dict(torch.load(f, weights_only=True))
        else:
            train(m, train_dl, None, tcfg(epochs))
            torch.save(m.state_dict(), f)
        return m.eval()

    def tp_prune(ratio: float) -> nn.Module:
        m = copy.deepcopy(half)
        ignored = [mm for mm in m.modules() if isinstance(mm, nn.Linear)][-1:]  # the classifier
        pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
        return m

    engines: dict = {}

    def onnx_file(name: str) -> Path:
        return onnx_dir / f"{stem}_{name.replace('@', '_')}.onnx"

    def add_engine(name: str) -> None:
        engines[name] = load_engine(onnx_file(name), "onnxruntime", EngineOptions(threads=args.threads))

    def measure_latency() -> None:
        """ONE interleaved onnxruntime run over every candidate so far (rerun after each target; the last counts)."""
        for name, m in models.items():
            if name not in engines:
                export_onnx(m, example, onnx_file(name))
                add_engine(name)
        feeds = {n: e.example_feeds(batch=1) for n, e in engines.items()}
        fns = {n: (lambda e=e, fd=feeds[n]: e.run(fd)) for n, e in engines.items()}
        samples = interleaved(fns, warmup=10, repeats=args.repeats, rounds=args.rounds)
        stats = {n: LatencyStats.from_samples(v).as_dict() for n, v in samples.items()}
        d = stats["dense"]
        res["latency"] = {"source": "measured", "runtime": "onnxruntime CPUExecutionProvider", "threads": args.threads,
                          "batch": 1, "warmup": 10, "repeats": args.repeats, "rounds": args.rounds,
                          "load_avg": os.getloadavg(), "stats_ms": stats,
                          "ratio_vs_dense_median": {n: d["median_ms"] / s["median_ms"] for n, s in stats.items()},
                          "ratio_vs_dense_min": {n: d["min_ms"] / s["min_ms"] for n, s in stats.items()}}
        save()
        print("latency", json.dumps(res["latency"]["ratio_vs_dense_median"]), flush=True)

    if args.remeasure:
        if not path.is_file():
            p.error(f"--remeasure: {path} does not exist (run the benchmark first)")
        res.update({k: v for k, v in json.loads(path.read_text()).items() if k not in ("host", "args")})
        names = ["dense", *(f"{m}@{k}" for m, sec in (("otov2", "otov2"), ("tp_l2", "torch_pruning_l2"))
                            for k in res[sec] if k != "pretrain_val_accuracy")]
        for name in names:
            if not onnx_file(name).is_file():
                p.error(f"--remeasure: {onnx_file(name)} is missing")
            add_engine(name)
        res["latency_remeasured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        res["host"] = host_info()
        measure_latency()
        return 0

    if path.is_file():  # a run with more targets: keep the targets an earlier run of this tag measured
        old = json.loads(path.read_text())
        if old.get("epochs") == args.epochs:
            res["otov2"].update(old.get("otov2", {}))
            res["torch_pruning_l2"].update({k: v for k, v in old.get("torch_pruning_l2", {}).items()
                                            if k != "pretrain_val_accuracy"})
            for key in old.get("otov2", {}):  # their ONNX files join this run's interleaved timing
                for name in (f"otov2@{key}", f"tp_l2@{key}"):
                    if onnx_file(name).is_file():
                        add_engine(name)

    t0 = time.perf_counter()
    dense = trained("dense", args.epochs)
    models["dense"] = dense
    res["dense"] = {"val_accuracy": evaluate(dense, val_dl), **model_stats(dense, example),
                    "train_seconds": time.perf_counter() - t0}
    save()
    print("dense", res["dense"], flush=True)

    half = trained("dense", args.epochs // 2)
    res["torch_pruning_l2"]["pretrain_val_accuracy"] = evaluate(half, val_dl)

    for s in args.targets:
        key = f"{s:.1f}"
        t0 = time.perf_counter()
        cfg = ec.OTOv2Config(target_group_sparsity=s, epochs=args.epochs, progress=False, warmup_epochs=args.warmup,
                             group_divisible=args.group_divisible, macs_exponent=args.macs_exponent)
        result = ec.prune(fresh(), example, train_dl, cfg, val_dl)
        r = result.report
        models[f"otov2@{key}"] = result.model.eval()
        res["otov2"][key] = {"val_accuracy": r["val_accuracy"],
                             "val_accuracy_group_sparse": r["val_accuracy_group_sparse"],
                             "group_sparsity": r["group_sparsity"], **r["pruned"], "macs_ratio": r["macs_ratio"],
                             "params_ratio": r["params_ratio"],
                             "construction_rel_err": r["construction"]["relative_error"],
                             "groups": {k: r["groups"][k] for k in ("groups", "prunable", "prunable_rows")},
                             "train_seconds": time.perf_counter() - t0}
        save()
        print("otov2", key, res["otov2"][key], flush=True)

        # torch-pruning at the same MACs: bisect the uniform ratio
        goal = r["pruned"]["macs"]
        lo, hi, best = 0.0, 0.95, None
        for _ in range(10):
            mid = (lo + hi) / 2
            cand = tp_prune(mid)
            macs = model_stats(cand, example)["macs"]
            if best is None or abs(macs - goal) < abs(best[1] - goal):
                best = (mid, macs, cand)
            if abs(macs - goal) / goal < 0.02:
                break
            lo, hi = (mid, hi) if macs > goal else (lo, mid)
        ratio, _, pruned = best
        t0 = time.perf_counter()
        acc_before = evaluate(pruned, val_dl)
        train(pruned, train_dl, None, tcfg(args.epochs - args.epochs // 2))
        pruned.eval()
        models[f"tp_l2@{key}"] = pruned
        res["torch_pruning_l2"][key] = {"pruning_ratio": ratio, "val_accuracy_before_finetune": acc_before,
                                        "val_accuracy": evaluate(pruned, val_dl), **model_stats(pruned, example),
                                        "macs_ratio": model_stats(pruned, example)["macs"] / res["dense"]["macs"],
                                        "finetune_seconds": time.perf_counter() - t0}
        save()
        print("tp", key, res["torch_pruning_l2"][key], flush=True)
        measure_latency()

    return 0


if __name__ == "__main__":
    sys.exit(main())
