"""``edgecompress prune``: OTOv2 structured pruning (DHSPG training + checked subnet), a thin wrapper of ``prune``."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecompress.commands import COMMANDS, Command
from edgecompress.commands.basic import add_model_arguments


def _configure(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--data", required=True, help="digits | a directory of class folders | a .npz file")
    p.add_argument("--target-sparsity", type=float, default=0.5, help="target group sparsity in (0, 1)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--variant", default="adamw", choices=("sgd", "adam", "adamw"))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warm-up before the cosine decay")
    p.add_argument("--macs-exponent", type=float, default=0.0,
                   help="rank rows by score x (row MACs / mean) ** this, so expensive rows go first (0 = the paper)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--group-divisible", type=int, default=1,
                   help="kept channels per group: a multiple of this (8 for onnxruntime on AVX2 CPUs, 16 on "
                        "AVX-512: other counts fall off its fast kernels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output directory")


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.commands.basic import model_and_input
    from edgecompress.compress.otov2.api import OTOv2Config, prune
    from edgecompress.compress.otov2.serialize import save_pruned
    from edgecompress.data import load, sample_batch
    from edgecompress.export.onnx import export_onnx
    from edgecompress.fileio import write_json_atomic

    config = OTOv2Config(target_group_sparsity=args.target_sparsity, epochs=args.epochs, variant=args.variant,
                         lr=args.lr, group_divisible=args.group_divisible, seed=args.seed,
                         warmup_epochs=args.warmup_epochs, macs_exponent=args.macs_exponent)
    model, _ = model_and_input(args)
    train_dl, val_dl = load(args.data, batch_size=args.batch_size, seed=args.seed)
    example = sample_batch(val_dl, 1)
    result = prune(model, example, train_dl, config, val_dl)
    out = Path(args.output)
    save_pruned(result.model, out / "pruned", spec=args.model, num_classes=args.num_classes)
    export = export_onnx(result.model, example, out / "pruned.onnx")
    report = {**result.report, "files": {"pruned": str(out / "pruned"), "onnx": str(out / "pruned.onnx")},
              "onnx_export": export.as_dict()}
    write_json_atomic(out / "report.json", report)
    text = (f"group sparsity {report['group_sparsity']:.3f} (target {config.target_group_sparsity}); "
            f"params {report['dense']['params']:,} -> {report['pruned']['params']:,}, "
            f"MACs {report['dense']['macs']:,} -> {report['pruned']['macs']:,} (counted); "
            f"val accuracy {report['val_accuracy']:.2%}; subnet check rel. err "
            f"{report['construction']['relative_error']:.1e}; wrote {out}/pruned, pruned.onnx, report.json")
    text += "".join(f"\nnote: {n}" for n in report.get("notes", []))
    return report, text


COMMANDS.add("prune", Command("prune", "OTOv2 structured pruning: train once with DHSPG, build the checked subnet",
                              _configure, _run))
