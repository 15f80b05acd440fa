"""``edgecompress demo``: the built-in example end to end."""

from __future__ import annotations

import argparse

from edgecompress.commands import COMMANDS, Command


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="runs/demo", help="run directory (default runs/demo); resumable")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    p.add_argument("--width-mult", type=float, default=0.5, help="MobileNetV2 width multiplier (default 0.5)")
    p.add_argument("--threads", type=int, help="threads for training and inference (default: all cores)")
    p.add_argument("--quick", action="store_true", help="1 epoch and short stages, for a smoke test")
    p.add_argument("--skip", action="append", default=[], metavar="STAGE", help="skip a stage (repeatable)")


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.demo import DemoConfig, demo
    from edgecompress.report import format_summary

    config = DemoConfig(epochs=args.epochs, width_mult=args.width_mult, threads=args.threads, quick=args.quick,
                        skip=tuple(args.skip))
    report = demo(args.output, config)
    lines = [f"run directory: {args.output} (report.json, report.html, model.onnx)"]
    lines += format_summary(report["summary"])
    return report, "\n".join(lines)


COMMANDS.add("demo", Command("demo", "train, export, compile and profile the built-in example on digits",
                             _configure, _run))
