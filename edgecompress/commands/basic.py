"""``zoo``, ``export`` and ``profile``: the foundation's subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecompress.commands import COMMANDS, Command


def _zoo_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", help="only models of this family")


def _zoo_run(args: argparse.Namespace) -> tuple[list[dict], str]:
    from dataclasses import asdict

    from edgecompress.nas import zoo

    rows = [asdict(zoo.info(n)) for n in zoo.names()]
    if args.family:
        rows = [r for r in rows if r["family"] == args.family]
    width = max(len(r["name"]) for r in rows) if rows else 4
    text = "\n".join(f"{r['name']:<{width}}  {r['family']:<12} {'x'.join(map(str, r['input_size'])):<10} "
                     f"{r['description']}" for r in rows)
    return rows, text


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--num-classes``, ``--input-size``: shared by every stage command."""
    p.add_argument("--model", required=True, help="zoo:NAME or package.module:factory")
    p.add_argument("--weights", help="a state dict (.pt), loaded with weights_only=True")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the model's head (default 10)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="example input size (default: the zoo model's own)")


def model_and_input(args: argparse.Namespace):
    import torch

    from edgecompress.errors import BadInputError
    from edgecompress.models import load_model

    model = load_model(args.model, num_classes=args.num_classes, weights=args.weights)
    size = tuple(args.input_size) if args.input_size else getattr(model, "input_size", None)
    if size is None:
        raise BadInputError(f"--model {args.model}: give --input-size C H W")
    return model.eval(), torch.randn(1, *size, generator=torch.Generator().manual_seed(0))


def _export_configure(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension at 1")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--rtol", type=float, default=1e-4, help="parity tolerance vs torch (relative)")


def _export_run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.export.onnx import export_onnx

    model, x = model_and_input(args)
    report = export_onnx(model, x, args.output, opset=args.opset, dynamic_batch=not args.static_batch,
                         do_simplify=not args.no_simplify, rtol=args.rtol)
    text = (f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, opset {report.opset}, {report.nodes} nodes); "
            f"onnxruntime matches torch: max relative error {report.max_rel_error:.2e}")
    return report.as_dict(), text


def _profile_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--runtime", default="onnxruntime", help="onnxruntime (default), tvm, tensorrt")
    p.add_argument("--device", default="host",
                   help="device profile name (default host; `edgecompress devices` lists them); a device that is "
                        "not attached gets predicted figures")
    p.add_argument("--threads", type=int, help="threads (default: all usable cores)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--energy", default="auto", metavar="auto|rapl|nvml|jetson|rpi5|csv:FILE|none",
                   help="energy meter (default auto: try the device's meters; an estimate, labelled so, when none "
                        "is readable)")
    p.add_argument("--energy-seconds", type=float, default=2.0, help="length of the energy window (default 2 s)")
    p.add_argument("--idle-seconds", type=float, default=1.0, help="idle window for idle power (default 1 s)")
    p.add_argument("--offline-batch", type=int, help="batch of the offline-throughput run (default --batch)")
    p.add_argument("--per-layer", action="store_true", help="per-layer breakdown from onnxruntime's profiler")
    p.add_argument("--histogram", metavar="PNG", help="write a latency histogram here")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--remote", metavar="HOST:PORT", help="a board's TVM RPC server (needs --runtime tvm)")
    where.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker (with --key)")
    p.add_argument("--key", help="the tracker key the boards registered under")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for each RPC step (default 60)")
    p.add_argument("-o", "--output", help="also write the report as JSON here")


def _profile_run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.fileio import write_json_atomic
    from edgecompress.profiler import ProfileConfig, format_report, profile

    config = ProfileConfig(runtime=args.runtime, device=args.device, threads=args.threads, batch=args.batch,
                           warmup=args.warmup, repeats=args.repeats, energy=args.energy,
                           energy_seconds=args.energy_seconds, idle_seconds=args.idle_seconds,
                           offline_batch=args.offline_batch, per_layer=args.per_layer, histogram=args.histogram,
                           remote=args.remote, tracker=args.tracker, key=args.key, remote_timeout_s=args.timeout)
    report = profile(Path(args.model), config=config)
    if args.output:
        write_json_atomic(args.output, report)
    return report, format_report(report)


COMMANDS.add("zoo", Command("zoo", "list the model zoo", _zoo_configure, _zoo_run))
COMMANDS.add("export", Command("export", "export a model to ONNX, checked against torch in onnxruntime",
                               _export_configure, _export_run))
COMMANDS.add("profile", Command("profile", "latency and energy of an ONNX model on a device (measured, or predicted)",
                                _profile_configure, _profile_run))
