"""``edgecompress quantize``: INT8 PTQ/QAT to a Q/DQ ONNX file placed for a target runtime (+ op report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecompress.commands import COMMANDS, Command


def _floor(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _configure(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="zoo:NAME or package.module:factory (a torch model)")
    source.add_argument("--onnx", help="an FP32 .onnx file (PTQ only)")
    p.add_argument("--weights", help="a state dict (.pt) for --model, loaded with weights_only=True")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the model's head (default 10)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input size (default: the zoo model's own, or the ONNX file's)")
    p.add_argument("--calib", default="digits", help="calibration data: digits (default), a class-folder DIR or .npz")
    p.add_argument("--method", choices=("ptq", "qat"), default="ptq")
    p.add_argument("--target-runtime", choices=("onnxruntime", "tensorrt", "tvm"), default="onnxruntime")
    p.add_argument("--calibration", choices=("minmax", "percentile", "entropy"), default="minmax")
    p.add_argument("--calibration-samples", type=int, default=1024)
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weights (auto: on for x86 CPUs without VNNI)")
    p.add_argument("--min-sqnr-db", type=_floor, default=10.0, help="SQNR floor in dB, or 'none' (default 10)")
    p.add_argument("--max-accuracy-drop", type=_floor, default=0.01,
                   help="largest accuracy drop as a fraction (0.01 = 1 point), or 'none'")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--op-report", action="store_true",
                   help="also measure the INT8/FP32 latency ratio of every distinct layer configuration")
    p.add_argument("-o", "--output", required=True,
                   help="output directory: model_int8.onnx, model_fp32.onnx (torch input), report.json, op_report.*")


def _input_hw(args: argparse.Namespace) -> int:
    if args.input_size:
        return args.input_size[1]
    if args.onnx:
        import onnx

        dims = onnx.load(args.onnx, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        return dims[2].dim_value if len(dims) == 4 and dims[2].dim_value else 32
    return 32


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.commands.basic import model_and_input
    from edgecompress.compress.int8 import Int8Config
    from edgecompress.compress.int8.api import quantize
    from edgecompress.data import load
    from edgecompress.fileio import write_json_atomic

    config = Int8Config(method=args.method, target_runtime=args.target_runtime, calibration=args.calibration,
                        calibration_samples=args.calibration_samples,
                        reduce_range={"auto": None, "on": True, "off": False}[args.reduce_range],
                        min_sqnr_db=args.min_sqnr_db, max_accuracy_drop=args.max_accuracy_drop,
                        qat_epochs=args.qat_epochs, qat_lr=args.qat_lr)
    if args.model:
        model, example = model_and_input(args)
        size = example.shape[2] if example.dim() == 4 else 32
    else:
        model, example, size = Path(args.onnx), None, _input_hw(args)
    train, val = load(args.calib, size=size)
    out = Path(args.output)
    result = quantize(model, train, config, output=out / "model_int8.onnx", eval_data=val)
    report = result.report
    if args.op_report:
        from edgecompress.compress.int8.op_report import op_quant_friendliness, write_op_report

        source = model if example is not None else Path(args.onnx)
        rows = op_quant_friendliness(source, example, engine="onnxruntime", config=config)
        report["op_report"] = str(write_op_report(rows, out))
    write_json_atomic(out / "report.json", report)
    pl, ch = report["placement"], report["checks"]
    lines = [f"wrote {result.model} ({report['sizes']['int8_bytes'] / 1e6:.2f} MB; FP32 "
             f"{report['sizes']['fp32_bytes'] / 1e6:.2f} MB) and {out / 'report.json'}",
             f"placement ({args.target_runtime}): {pl['int8_layers']}/{pl['layers']} Conv/Gemm layers run in INT8 "
             f"[{pl['verified_by']}]",
             f"checks on {ch['data']} ({ch['samples']} samples): SQNR {ch['sqnr_db']:.2f} dB, top-1 agreement "
             f"{ch['top1_agreement']:.4f}"
             + (f", accuracy FP32 {ch['fp32_accuracy']:.4f} -> INT8 {ch['int8_accuracy']:.4f}"
                if "int8_accuracy" in ch else "")]
    if pl.get("warning"):
        lines.append(f"WARNING: {pl['warning']}")
    if args.op_report:
        lines.append(f"operator report: {out / 'op_report.md'}")
    return report, "\n".join(lines)


COMMANDS.add("quantize", Command("quantize", "INT8 PTQ/QAT to Q/DQ ONNX placed for onnxruntime, TensorRT or TVM",
                                 _configure, _run))
