"""Alternative forms of the host cost model, fitted to the measurements in results.json, in and out of sample.

    .venv/bin/python bench/profiler/variants.py               # every variant, ~10 min on 2 cores
    .venv/bin/python bench/profiler/variants.py grouped_eff    # one

Reads the measured figures that ``run.py`` committed (no timing here) and the layer costs of the same ONNX
files, then fits each variant like ``run.py`` does: least squares on ``log(predicted / measured)`` over all
15 models (in sample) and over the other 14 for each model (leave-one-out). The fit is Nelder-Mead from
three starts for every cache size in ``CACHE_MB_GRID``, not ``fit_calibration``'s grid search, so the
``committed`` row is this fitter's reading of the model ``devices.estimate`` implements.

Variants (per layer ``t = max(t_compute / eta_c, t_memory / eta) + overhead``; see devices/estimate.py):

- ``committed``: the model in devices/estimate.py (a grouped conv pays ``node_us`` per group);
- ``group_cost``: an extra group costs its own fitted ``group_us`` instead of ``node_us``;
- ``grouped_eff``: grouped convs get their own compute efficiency;
- ``stream``: data-movement layers beyond the cache stream at the measured copy bandwidth (eta 1), and
  MAC and data-movement layers have separate node costs.

Writes nothing; prints one block per variant.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from edgecompress.devices.estimate import CACHE_MB_GRID, _arrays, layer_costs
from edgecompress.devices.profiles import cache_dir

HERE = Path(__file__).parent
# eta_c, eta_m, eta_d, eta_e, node_ms, call_ms, move_node_ms, group (eff. or ms)
STARTS = ([0.6, 4, 0.3, 1, 4e-3, 1e-3, 4e-3, 0.1], [0.6, 2, 1, 1, 2e-3, 2e-2, 1e-3, 0.05],
          [0.5, 1.5, 0.5, 2, 3e-3, 5e-3, 1e-3, 0.2])


def model_ms(a: dict, p: np.ndarray, variant: str, cache_mb: float) -> float:
    ec, em, ed, ee, node, call, move_node, group = p
    em = max(em, 1.0)  # ETA_M_MIN, as in fit_calibration
    mac, fast, calls = a["mac"], a["bytes"] <= cache_mb * 1e6, a["calls"]
    eta = np.where(fast, np.where(mac, em, ee), ed)
    eta_c = np.full(mac.shape, ec)
    overhead = node * calls
    if variant == "group_cost":
        overhead = node + (calls - 1) * group
    elif variant == "grouped_eff":
        eta_c = np.where(calls > 1, group, ec)
    elif variant == "stream":
        eta = np.where(fast, np.where(mac, em, ee), np.where(mac, ed, 1.0))
        overhead = np.where(mac, node, move_node) * calls
    elif variant != "committed":
        raise SystemExit(f"unknown variant {variant!r}")
    return float((np.maximum(a["t_c"] / eta_c, a["t_m"] / eta) + overhead).sum() + call)


def fit(arrays: list[dict], measured: np.ndarray, variant: str) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize

    best = (math.inf, None, 0.0)
    for cache_mb in CACHE_MB_GRID:
        def loss(theta: np.ndarray, cache_mb: float = cache_mb) -> float:
            p = np.exp(np.clip(theta, -12, 8))
            pred = np.array([model_ms(a, p, variant, cache_mb) for a in arrays])
            return float(np.sum((np.log(pred) - np.log(measured)) ** 2))

        for start in STARTS:
            r = minimize(loss, np.log(start), method="Nelder-Mead",
                         options={"maxiter": 4000, "xatol": 1e-5, "fatol": 1e-9})
            if r.fun < best[0]:
                best = (r.fun, np.exp(np.clip(r.x, -12, 8)), cache_mb)
    return best[1], best[2]


def main(variants: list[str]) -> None:
    result = json.loads((HERE / "results.json").read_text())
    names = [r["model"] for r in result["rows"]]
    measured = np.array([r["measured_ms"] for r in result["rows"]])
    cal = result["calibration_all_models"]
    workdir = cache_dir() / "bench-zoo-onnx"
    arrays = [_arrays(layer_costs(workdir / f"{n}.onnx"), cal["fitted_peak_gflops"], cal["fitted_bandwidth_gbs"])
              for n in names]
    print(f"measurements: results.json of {result['date_utc']} ({len(names)} models)")
    for variant in variants:
        p, cache_mb = fit(arrays, measured, variant)
        ins = np.array([model_ms(a, p, variant, cache_mb) / m - 1 for a, m in zip(arrays, measured, strict=True)])
        loo = []
        for i in range(len(names)):
            rest = [j for j in range(len(names)) if j != i]
            p_i, c_i = fit([arrays[j] for j in rest], measured[rest], variant)
            loo.append(model_ms(arrays[i], p_i, variant, c_i) / measured[i] - 1)
        loo = np.array(loo)
        print(f"\n{variant}: cache {cache_mb} MB, parameters {np.round(p, 4).tolist()}")
        for label, err in (("in sample", ins), ("leave-one-out", loo)):
            print(f"  {label}: {int(np.sum(np.abs(err) <= 0.25))}/{len(err)} within 25% "
                  f"(median |error| {np.median(np.abs(err)):.1%}, max {np.max(np.abs(err)):.1%})")
        for n, a, b in zip(names, ins, loo, strict=True):
            print(f"    {n:32s} in {a:+7.1%}  loo {b:+7.1%}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["committed", "group_cost", "grouped_eff", "stream"])
