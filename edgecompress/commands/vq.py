"""``edgecompress vq``: LR²VQ (or the PQ baseline), a thin wrapper of ``edgecompress.vq``.

Writes ``OUT/model.ecvq`` (the pickle-free compact checkpoint), ``OUT/model_compact.onnx``,
``OUT/model_dense.onnx`` and ``OUT/report.json``.
"""

from __future__ import annotations

import argparse

from edgecompress.commands import COMMANDS, Command
from edgecompress.commands.basic import add_model_arguments


def _d_value(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--d {text!r}: expected 'auto' or an integer") from None


def _configure(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--pruned", metavar="DIR", help="a model saved by `edgecompress prune` (DIR/pruned); --model "
                                                   "names its original architecture")
    p.add_argument("--data", required=True, help="digits | a directory of class folders | a .npz file")
    p.add_argument("--k", type=int, default=256, help="codebook size per layer (default 256)")
    p.add_argument("--m", type=int, default=16, help="sub-vector size; sets the ratio (default 16)")
    p.add_argument("--d", type=_d_value, default=None, help="clustering dimensionality, or 'auto' (default: "
                                                            "estimated from the weights)")
    p.add_argument("--method", default="lr2vq", choices=("lr2vq", "pq"), help="lr2vq (default) or the PQ baseline")
    p.add_argument("--epochs", type=int, default=4, help="training epochs: 1/4 low-rank, 1/2 soft, 1/4 hard")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bn-bits", type=int, default=16, choices=(16, 8),
                   help="storage of each folded BatchNorm scale/shift: fp16 (default) or 8-bit per-tensor grid")
    p.add_argument("--distill", type=float, default=0.0, metavar="W",
                   help="weight in [0, 1] of distilling the input model's outputs during training (default 0)")
    p.add_argument("--exclude", action="append", default=[], metavar="MODULE", help="leave this layer uncompressed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output directory")


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.commands.basic import model_and_input
    from edgecompress.compress.lr2vq.api import LR2VQConfig, vq, write_artifacts
    from edgecompress.data import load, sample_batch

    config = LR2VQConfig(k=args.k, m=args.m, d=args.d, method=args.method, epochs=args.epochs, lr=args.lr,
                         bn_bits=args.bn_bits, distill=args.distill, exclude=tuple(args.exclude), seed=args.seed)
    model, example = model_and_input(args)
    if args.pruned:
        from edgecompress.compress.otov2.serialize import load_pruned

        model = load_pruned(args.pruned, model).eval()
    train_dl, val_dl = load(args.data, batch_size=args.batch_size, size=example.shape[-1], seed=args.seed)
    example = sample_batch(val_dl, 1)
    result = vq(model, train_dl, config, val_dl)
    files = write_artifacts(result, args.output, example)
    rep = result.report
    skipped = [f"  {ln['name']}: {ln['reason']}" for ln in rep["layers"] if ln["reason"]]
    notes = [f"  {ln['name']}: {ln['note']}" for ln in rep["layers"] if ln["note"]]
    lines = [f"{rep['method']} m={config.m} k={config.k} d={rep['d']} ({rep['d_source']}): "
             f"{rep['quantised_layers']} layers quantised, {rep['uncompressed_layers']} left in fp16",
             f"ratio {rep['ratio']:.1f}x from real bits ({rep['accounting']['reference_bytes']:.0f} -> "
             f"{rep['accounting']['compressed_bytes']:.0f} bytes)",
             f"val accuracy {rep['val_accuracy']:.2%} (FP32 {rep['fp32_val_accuracy']:.2%}; measured, torch, CPU)",
             f"wrote {args.output}: model.ecvq {files['checkpoint']['bytes']} B "
             f"({files['checkpoint']['ratio_vs_fp32']:.1f}x), model_compact.onnx {files['compact_onnx']['bytes']} B, "
             f"model_dense.onnx {files['dense_onnx']['bytes']} B, report.json"]
    if skipped:
        lines += ["uncompressed:", *skipped]
    if notes:
        lines += ["notes:", *notes]
    return rep, "\n".join(lines)


COMMANDS.add("vq", Command("vq", "LR2VQ vector quantisation (or PQ): compact checkpoint, compact and dense ONNX",
                           _configure, _run))
