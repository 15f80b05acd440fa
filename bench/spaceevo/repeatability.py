"""Noise floor of the latency ground truth: the same subnets measured several times, minutes apart.

If two measurements of one model often differ by more than 10%, no predictor can be shown to be
within +-10% of "the" measured latency on that machine. Same settings as predictor_accuracy.py.

Each pass measures every file in a fresh onnxruntime session, and around it (before and after) a fixed
reference subnet in its own long-lived session. Two figures per file and pass: the raw latency, and
the latency relative to the reference (file / mean of the two reference blocks), which cancels a
machine-wide slowdown lasting longer than the three blocks. Writes ``results/repeatability.json``/``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecompress.devices.host import cpu_model
from edgecompress.fileio import write_json_atomic, write_text_atomic
from edgecompress.nas.predictor import MeasureSettings, OnnxTimer, measure_subnet
from edgecompress.nas.space import CIFAR_HYPERSPACE


def _pairs_within(values: np.ndarray, tol: float = 0.10) -> tuple[float, float]:
    """Share of (file, pass i < pass j) pairs whose relative difference is within ``tol``; median of it."""
    diffs = [abs(row[j] / row[i] - 1) for row in values for i, j in itertools.combinations(range(len(row)), 2)]
    return float(np.mean(np.array(diffs) <= tol)), float(np.median(diffs))


def main(n: int = 20, passes: int = 3, pause_s: float = 30.0) -> None:
    settings = MeasureSettings(threads=1, warmup=10, repeats=40, rounds=5)
    mid = [CIFAR_HYPERSPACE.windows(i) // 2 for i in range(len(CIFAR_HYPERSPACE.stages))]
    spaces = [CIFAR_HYPERSPACE.space(tuple((b, m) for m in mid)) for b in CIFAR_HYPERSPACE.blocks]
    rng = random.Random(777)
    work = Path(tempfile.mkdtemp(prefix="ec-repeat-"))
    at_export, paths = [], []
    for i in range(n + 1):  # file 0 is the reference
        sp = spaces[i % len(spaces)]
        at_export.append(measure_subnet(sp, sp.sample(rng), "int8", settings, work))
        paths.append(work / f"s{i}.onnx")
        shutil.copy(work / "subnet.onnx", paths[-1])
    ref = OnnxTimer(paths[0], settings)
    raw, rel = np.zeros((n, passes)), np.zeros((n, passes))
    for k in range(passes):
        if k:
            time.sleep(pause_s)
        for i, path in enumerate(paths[1:]):
            timed = OnnxTimer(path, settings)  # a fresh session, as every benchmark measurement gets
            before, raw[i, k], after = ref.latency(), timed.latency(), ref.latency()
            rel[i, k] = raw[i, k] / ((before + after) / 2)
        print(f"pass {k + 1}/{passes} done", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    raw_within, raw_median = _pairs_within(raw)
    rel_within, rel_median = _pairs_within(rel)
    result = {"what": "the same INT8 subnet ONNX files measured in several passes minutes apart, raw and relative "
                      "to an interleaved reference subnet (host, onnxruntime, 1 thread)",
              "cpu": cpu_model(), "settings": settings.as_dict(), "subnets": n, "passes": passes,
              "pause_between_passes_s": pause_s,
              "raw": {"pairs_within_10pct": raw_within, "median_abs_rel_diff": raw_median, "ms": raw.tolist()},
              "relative_to_reference": {"pairs_within_10pct": rel_within, "median_abs_rel_diff": rel_median,
                                        "ratio": rel.tolist()},
              "at_export_ms": at_export[1:], "reference_at_export_ms": at_export[0],
              "load_average_at_end": os.getloadavg(),
              "note": "2 vCPU KVM guest; the load average at the end says whether other jobs shared it"}
    out = Path(__file__).parent / "results"
    write_json_atomic(out / "repeatability.json", result)
    md = ["# Latency repeatability (noise floor of the ground truth)", "",
          f"Command: `.venv/bin/python bench/spaceevo/repeatability.py --passes {passes}` "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, 2 vCPU, load average at the end "
          f"{os.getloadavg()[0]:.2f}). {n} INT8 subnets, {passes} passes {pause_s:g} s apart, each file in a "
          "fresh session per pass; pairs = every two passes of one file.", "",
          "| figure | pairs within +-10% | median abs. difference |", "|---|---|---|",
          f"| raw latency | {raw_within:.0%} | {raw_median:.1%} |",
          f"| latency / interleaved reference subnet | {rel_within:.0%} | {rel_median:.1%} |", ""]
    write_text_atomic(out / "repeatability.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--pause-s", type=float, default=30.0)
    a = ap.parse_args()
    main(a.subnets, a.passes, a.pause_s)
