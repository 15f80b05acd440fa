"""``edgecompress search``: SpaceEvo search under a latency limit (``edgecompress.search``)."""

from __future__ import annotations

import argparse

from edgecompress.commands import COMMANDS, Command


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="host", help="device to search for (default host; the only one measurable "
                                                    "from this machine)")
    p.add_argument("--runtime", default="onnxruntime", help="runtime (default onnxruntime)")
    p.add_argument("--latency-ms", type=float, required=True, help="INT8 latency limit per inference, batch 1 (ms)")
    p.add_argument("--data", default="digits", help="digits | a directory of class folders | an .npz file")
    p.add_argument("--budget", default="small", choices=["tiny", "small", "medium"], help="search budget")
    p.add_argument("--hyperspace", default="cifar", help="hyperspace name (default cifar: 32x32 inputs)")
    p.add_argument("--space", help="skip the space evolution: a space text, or 'mobilenetv2'")
    p.add_argument("--predictor", help="reuse a saved latency predictor JSON")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for measurement (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="run directory (resumable)")


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.nas.search import SearchConfig, search

    config = SearchConfig(latency_ms=args.latency_ms, device=args.device, runtime=args.runtime, budget=args.budget,
                          hyperspace=args.hyperspace, space=args.space, predictor=args.predictor,
                          threads=args.threads, seed=args.seed)
    result = search(args.data, config, args.output)
    r = result.report
    best = r["best"]
    lines = [f"space: {r['space']}",
             f"best subnet: {best['subnet']}",
             f"  INT8 accuracy {best['onnx_int8_accuracy']:.2%} (onnxruntime; "
             f"fake-quant {best['fake_quant_accuracy']:.2%})"
             f", latency {best['measured_ms']:.3f} ms measured (predicted {best['predicted_ms']:.3f}), "
             f"limit {args.latency_ms:g} ms",
             f"Pareto set ({len(r['pareto'])}): " + "; ".join(
                 f"{c['onnx_int8_accuracy']:.2%} @ {c['measured_ms']:.3f} ms" for c in r["pareto"]),
             f"model: {r['onnx']}"]
    return r, "\n".join(lines)


COMMANDS.add("search", Command("search", "search an INT8-friendly space and subnet under a latency limit (SpaceEvo)",
                               _configure, _run))
