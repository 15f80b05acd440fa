"""Where INT8 time goes: onnxruntime's per-node profile of FP32 vs edgecompress INT8, by convolution class.

For MobileNetV2@224 and ResNet-18@224 (random weights, as in ``run.py``), both files run with
onnxruntime's profiler on (``profiler.ort_per_layer``: 1 intra-op thread, ORT_ENABLE_ALL, 50 runs
after one untimed run); each node's mean kernel time is summed per class of the optimised graph: 1x1
convolutions, depthwise, other kxk convolutions, everything else. The INT8/FP32 ratio per class shows
which kernels limit the whole-model speed-up. Source: measured on this host; one profile per file, so
classes within ~10 % are noise.

    .venv/bin/python bench/int8/op_classes.py      # writes results/op_classes.json and .md
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402

from edgecompress.compress.int8.api import quantize  # noqa: E402
from edgecompress.compress.int8.config import Int8Config  # noqa: E402
from edgecompress.export.onnx import export_onnx  # noqa: E402
from edgecompress.profiler import ProfileConfig, ort_per_layer  # noqa: E402
from edgecompress.runtime.backend_onnxruntime import session_options  # noqa: E402
from edgecompress.runtime.engine import EngineOptions  # noqa: E402

OUT = Path(__file__).parent / "results"


def conv_class(node: onnx.NodeProto) -> str:
    if "Conv" not in node.op_type:
        return "other"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) > 1:
        return "depthwise/grouped conv"
    kernel = list(attrs.get("kernel_shape", []))
    return "1x1 conv" if kernel == [1, 1] else f"{kernel[0]}x{kernel[0]} conv" if kernel else "conv"


def profile(path: Path, runs: int = 50) -> dict[str, float]:
    """Milliseconds per convolution class: ``profiler.ort_per_layer`` per node, classed on the optimised graph."""
    opt = path.with_suffix(".opt.onnx")
    ort.InferenceSession(str(path), session_options(EngineOptions(threads=1), str(opt)),
                         providers=["CPUExecutionProvider"])  # only to write the optimised graph
    kinds = {n.name: conv_class(n) for n in onnx.load(str(opt)).graph.node}
    per_layer = ort_per_layer(path, ProfileConfig(threads=1), runs=runs, top=10**6)
    out: dict[str, float] = defaultdict(float)
    for row in per_layer["top"]:
        out[kinds.get(row["node"], "other")] += row["mean_us"] / 1000.0
    out["total"] = sum(out.values())
    return dict(out)


def main() -> None:
    torch.set_num_threads(1)
    results = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "onnxruntime": ort.__version__,
               "settings": "1 intra-op thread, ORT_ENABLE_ALL, batch 1, mean of 50 profiled runs per node",
               "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mobilenetv2", "resnet18"):
            model, calib, xs, _, _ = bench.model_and_data(name, 0)
            fp32 = Path(tmp) / f"{name}_fp32.onnx"
            export_onnx(model, torch.from_numpy(xs[:1]), fp32)
            int8 = quantize(fp32, calib, Int8Config(min_sqnr_db=None, max_accuracy_drop=None),
                            output=Path(tmp) / f"{name}_int8.onnx").model
            results["models"][name] = {"fp32_ms": profile(fp32), "int8_ms": profile(Path(int8))}
            print(name, results["models"][name], flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "op_classes.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# INT8 vs FP32 time per convolution class (onnxruntime profiler, measured)", "",
             f"`python bench/int8/op_classes.py` on {results['measured']}, onnxruntime {ort.__version__}: "
             f"{results['settings']}. Host: AMD EPYC, 2 cores, AVX2, no VNNI.", "",
             "| model | class | FP32 ms | INT8 ms | FP32 / INT8 |", "|---|---|---:|---:|---:|"]
    for name, r in results["models"].items():
        for cls in sorted(set(r["fp32_ms"]) | set(r["int8_ms"]), key=lambda c: (c == "total", c)):
            f, i = r["fp32_ms"].get(cls, 0.0), r["int8_ms"].get(cls, 0.0)
            lines.append(f"| {name} | {cls} | {f:.2f} | {i:.2f} | {f / i:.2f}x |" if i else
                         f"| {name} | {cls} | {f:.2f} | {i:.2f} | - |")
    (OUT / "op_classes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
