"""Noise floor of the latency ground truth: the same subnets measured twice, minutes apart.

If two measurements of one model often differ by more than 10%, no predictor can be shown to be
within +-10% of "the" measured latency on that machine. Same settings as predictor_accuracy.py.
Writes ``results/repeatability.json`` and ``.md``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecompress.devices.host import cpu_model
from edgecompress.fileio import write_json_atomic, write_text_atomic
from edgecompress.nas.predictor import MeasureSettings, measure_onnx, measure_subnet
from edgecompress.nas.space import CIFAR_HYPERSPACE


def main(n: int = 20) -> None:
    settings = MeasureSettings(threads=1, warmup=10, repeats=40, rounds=5)
    mid = [CIFAR_HYPERSPACE.windows(i) // 2 for i in range(len(CIFAR_HYPERSPACE.stages))]
    spaces = [CIFAR_HYPERSPACE.space(tuple((b, m) for m in mid)) for b in CIFAR_HYPERSPACE.blocks]
    rng = random.Random(777)
    work = Path(tempfile.mkdtemp(prefix="ec-repeat-"))
    first, paths = [], []
    for i in range(n):
        sp = spaces[i % len(spaces)]
        first.append(measure_subnet(sp, sp.sample(rng), "int8", settings, work))
        paths.append(work / f"s{i}.onnx")
        shutil.copy(work / "subnet.onnx", paths[-1])
    second = [measure_onnx(p, settings) for p in paths]  # the same files, measured again later
    ratio = np.array(second) / np.array(first) - 1
    within = float(np.mean(np.abs(ratio) <= 0.10))
    result = {"what": "same INT8 subnet ONNX files measured twice, minutes apart (host, onnxruntime, 1 thread)",
              "cpu": cpu_model(), "settings": settings.as_dict(), "subnets": n,
              "pairs_within_10pct": within, "abs_rel_diff": {"min": float(np.abs(ratio).min()),
                                                             "median": float(np.median(np.abs(ratio))),
                                                             "max": float(np.abs(ratio).max())},
              "first_ms": first, "second_ms": second,
              "load_average_at_end": os.getloadavg(),
              "note": "2 vCPU KVM guest; the load average at the end says whether other jobs shared it"}
    out = Path(__file__).parent / "results"
    write_json_atomic(out / "repeatability.json", result)
    md = ["# Latency repeatability (noise floor of the ground truth)", "",
          f"Command: `.venv/bin/python bench/spaceevo/repeatability.py` ({time.strftime('%Y-%m-%d')}, {cpu_model()}, "
          f"2 vCPU, load average at the end {os.getloadavg()[0]:.2f}).", "",
          "| subnets | pairs within +-10% | abs rel. diff min / median / max |", "|---|---|---|",
          f"| {n} | {within:.0%} | {np.abs(ratio).min():.1%} / {np.median(np.abs(ratio)):.1%} / "
          f"{np.abs(ratio).max():.1%} |", ""]
    write_text_atomic(out / "repeatability.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
