"""``compile`` (ONNX -> deployable bundle) and ``run`` (a bundle on an input array).

Thin wrappers of ``edgecompress.runtime.bundle.compile_bundle`` and ``load_bundle``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecompress.commands import COMMANDS, Command


def _compile_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the .onnx file to compile")
    p.add_argument("--runtime", default="onnxruntime", help="onnxruntime (default), tvm or tensorrt")
    p.add_argument("--device", default="host", help="host (default), rpi4, rpi5, aarch64 (TVM cross-compiles)")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="TVM: MetaSchedule trials per operator (default 0: cached records only)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="TensorRT precision")
    p.add_argument("--threads", type=int, help="threads for the parity check (default: all usable cores)")
    p.add_argument("--archive", action="store_true", help="also write BUNDLE.tar.gz")
    p.add_argument("-o", "--output", required=True, help="the bundle directory to write")


def _compile_run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.runtime.bundle import compile_bundle, read_manifest

    if args.tune_trials < 0:
        raise ValueError(f"--tune-trials {args.tune_trials}: must be >= 0")
    path = compile_bundle(args.model, args.runtime, args.device, args.output, archive=args.archive,
                          threads=args.threads, tune_trials=args.tune_trials, precision=args.precision)
    manifest = read_manifest(args.output)
    parity = manifest["compile"].get("parity") or {}
    engine = manifest["engine"]["file"] or "none (runs model.onnx)"
    text = (f"wrote {path} ({manifest['runtime']['name']} {manifest['runtime']['version']}, device {args.device}, "
            f"engine file {engine})")
    if "max_rel_error" in parity:
        text += f"; matches onnxruntime: max relative error {parity['max_rel_error']:.2e}"
    return {"bundle": str(path), "manifest": manifest}, text


def _run_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a bundle directory or .tar.gz (from `edgecompress compile`)")
    p.add_argument("--input", required=True, action="append",
                   help="a .npy file per model input, in input order (repeat for several inputs)")
    p.add_argument("--output", help="write the first output here (.npy); with several outputs, an .npz of all")
    p.add_argument("--threads", type=int, help="threads (default: all usable cores)")


def _run_run(args: argparse.Namespace) -> tuple[dict, str]:
    import numpy as np

    from edgecompress.errors import BadInputError
    from edgecompress.runtime.bundle import load_bundle

    path = Path(args.bundle)
    if path.suffix in (".yaml", ".yml"):
        raise BadInputError(f"{path}: `run` takes a bundle (directory or .tar.gz from `edgecompress compile`); "
                            "running a recipe is not part of this command")
    engine = load_bundle(path, threads=args.threads)
    arrays = []
    for name in args.input:
        try:
            arrays.append(np.load(name, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise BadInputError(f"--input {name}: not a readable .npy file ({exc})") from None
    outputs = engine.run(arrays)
    if args.output:
        if len(outputs) == 1:
            np.save(args.output, outputs[0])
        else:
            np.savez(args.output, **{s.name: o for s, o in zip(engine.outputs, outputs, strict=True)})
    data = {"bundle": str(path), "runtime": engine.runtime,
            "outputs": [{"name": s.name, "shape": list(o.shape), "dtype": str(o.dtype)}
                        for s, o in zip(engine.outputs, outputs, strict=True)], "written": args.output}
    lines = [f"{s.name}: shape {tuple(o.shape)} {o.dtype}" + (f", argmax {o.reshape(o.shape[0], -1).argmax(1).tolist()}"
                                                              if o.ndim == 2 else "")
             for s, o in zip(engine.outputs, outputs, strict=True)]
    if args.output:
        lines.append(f"wrote {args.output}")
    return data, "\n".join(lines)


COMMANDS.add("compile", Command("compile", "compile an ONNX model into a deployable bundle (onnxruntime, tvm, "
                                           "tensorrt)", _compile_configure, _compile_run))
COMMANDS.add("run", Command("run", "run a bundle on .npy inputs", _run_configure, _run_run))
