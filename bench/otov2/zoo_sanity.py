"""Zero-invariance over the whole model zoo: random zero groups (50% of rows) -> subnet -> relative error.

Writes bench/otov2/results/zoo_sanity.json: per model, groups / prunable groups, the groups left alone
with their reasons, params before/after, the subnet check's relative error (must be <= 1e-5) and seconds.
Usage: .venv/bin/python bench/otov2/zoo_sanity.py
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch


def main() -> int:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from edgecompress.compress.otov2.api import OTO
    from edgecompress.nas import zoo

    rows = []
    for name in zoo.names():
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = zoo.create(name).eval()
        x = torch.randn(2, *model.input_size)
        oto = OTO(model, x[:1])
        params = oto.compute_num_params()
        oto.random_zero_groups(0.5, seed=0)
        oto.construct_subnet(check_inputs=x)
        rows.append({"model": name, **oto.summary(), "params": params,
                     "params_after": oto.compute_num_params(compressed=True),
                     "relative_error": oto.last_construction["relative_error"],
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).parent / "results" / "zoo_sanity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"check": "random 50% zero rows per prunable group, construct, compare on 2 random "
                                        "inputs in eval mode; relative error = max|a-b|/max|b|", "rtol": 1e-5,
                               "torch_threads": 1, "rows": rows}, indent=1))
    return 0 if all(r["relative_error"] <= 1e-5 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
