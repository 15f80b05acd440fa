"""Render bench/otov2/results/*.json (from run.py) as the markdown table in results/results.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    res_dir = Path(__file__).parent / "results"
    lines = []
    for path in sorted(res_dir.glob("*.json")):
        r = json.loads(path.read_text())
        if "dense" not in r or not r["dense"]:
            continue
        lat = r.get("latency", {})
        stats = lat.get("stats_ms", {})
        ratio = lat.get("ratio_vs_dense_median", {})
        ratio_min = lat.get("ratio_vs_dense_min", {})

        def cell(name: str, stats=stats, ratio=ratio, ratio_min=ratio_min) -> str:
            if name not in stats:
                return "not measured | not measured"
            s = stats[name]
            return (f"{s['min_ms']:.3f} / {s['median_ms']:.3f} / {s['max_ms']:.3f} | "
                    f"{ratio[name]:.2f}x / {ratio_min[name]:.2f}x")

        d = r["dense"]
        a = r.get("args", {})
        knobs = ", ".join(f"{k} {a[k]}" for k in ("warmup", "group_divisible", "macs_exponent") if k in a)
        knobs = "; " + knobs if knobs else ""
        lines += [f"### {r['model']} ({r['epochs']} epochs per method{knobs}) [{path.name}]", "",
                  "| method | target | group sparsity | val acc | params | MACs | ORT ms min / median / max | "
                  "speed-up vs dense (median / min) |", "|---|---|---|---|---|---|---|---|",
                  f"| dense | - | - | {d['val_accuracy']:.2%} | {d['params']:,} | {d['macs']:,} | {cell('dense')} |"]
        for key in sorted(r.get("otov2", {})):
            o = r["otov2"][key]
            lines.append(f"| OTOv2 (DHSPG) | {key} | {o['group_sparsity']:.3f} | {o['val_accuracy']:.2%} | "
                         f"{o['params']:,} | {o['macs']:,} | {cell('otov2@' + key)} |")
            t = r.get("torch_pruning_l2", {}).get(key)
            if t:
                lines.append(f"| torch-pruning L2 (ratio {t['pruning_ratio']:.3f}) | {key} | - | "
                             f"{t['val_accuracy']:.2%} | {t['params']:,} | {t['macs']:,} | {cell('tp_l2@' + key)} |")
        if lat:
            lines += ["", f"Latency: {lat['source']}, {lat['runtime']}, {lat['threads']} thread, batch {lat['batch']}, "
                      f"warmup {lat['warmup']}, {lat['rounds']} interleaved rounds x {lat['repeats']} repeats, "
                      f"host {r['host'].get('cpu', '?')} ({r['host'].get('cores', '?')} cores), load average "
                      f"{lat.get('load_avg', '?')} while timing"
                      f"{'; re-timed ' + r['latency_remeasured'] if 'latency_remeasured' in r else ''}."]
        lines.append("")
    (res_dir / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
