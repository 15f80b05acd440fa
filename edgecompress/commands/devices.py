"""``devices``: the device profiles, which are attached here, and the source of every figure."""

from __future__ import annotations

import argparse

from edgecompress.commands import COMMANDS, Command

_SHOWN = (("cores", "cores", "{:g}"), ("clock_ghz", "GHz", "{:g}"), ("peak_fp32_gflops", "FP32 GFLOP/s", "{:g}"),
          ("peak_int8_gops", "INT8 GOP/s", "{:g}"), ("memory_bandwidth_gbs", "GB/s", "{:g}"),
          ("idle_power_w", "idle W", "{:g}"), ("load_power_w", "load W", "{:g}"))


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show one profile in full (with each figure's reference)")
    p.add_argument("--measure", action="store_true",
                   help="measure the host's peak and bandwidth now if not cached (a few seconds)")
    p.add_argument("--calibrate", action="store_true",
                   help="time synthetic networks on onnxruntime here and fit the host's kernel model, which "
                        "then predicts host latency (about a minute on 2 cores; stored in the cache)")
    p.add_argument("--networks", type=int, default=200, help="synthetic networks for --calibrate (default 200)")


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.devices.detect import detect_devices
    from edgecompress.devices.profiles import PROFILES, cache_dir, load_profile

    if args.calibrate:
        return _calibrate(args)
    detected = detect_devices()
    attached = {d.profile for d in detected if d.profile}
    names = [args.name] if args.name else PROFILES.names()
    host_cached = (cache_dir() / "host.json").is_file()
    profiles = [load_profile(n, measure_host=args.measure or host_cached) for n in names]  # unknown -> error
    data = {"attached": [d.as_dict() for d in detected],
            "profiles": [{**p.as_dict(), "attached": p.name in attached} for p in profiles]}
    lines = []
    for p in profiles:
        mark = "attached" if p.name in attached else "not attached (figures are predicted)"
        lines.append(f"{p.name}: {p.description} [{p.kind}] - {mark}")
        lines.append(f"  processor: {p.value('processor')} ({p.figure('processor').source})")
        for key, label, fmt in _SHOWN:
            f = p.figures.get(key)
            if f is None:
                continue
            value = "?" if f.value is None else fmt.format(f.value)
            lines.append(f"  {label:>13}: {value:<10} {f.source}" + (f" - {f.ref}" if args.name else ""))
        lines.append(f"  tvm target: {dict(p.tvm_target)}; meters: {', '.join(p.energy_meters) or 'none'}")
    if not (args.measure or host_cached) and "host" in names:
        lines.append("(host peak and bandwidth are measured on first use: `edgecompress devices --measure`)")
    others = [d for d in detected if d.profile is None]
    for d in others:
        lines.append(f"attached without a profile: {d.kind} {d.name}")
    return data, "\n".join(lines)


def _calibrate(args: argparse.Namespace) -> tuple[dict, str]:
    import sys
    import tempfile

    from edgecompress.devices import microbench
    from edgecompress.devices.ort_kernels import save_kernel_model
    from edgecompress.errors import BadInputError

    if args.name not in (None, "host"):
        raise BadInputError(f"--calibrate times networks on this machine: it calibrates 'host', not {args.name!r}")
    if args.networks < 10:
        raise BadInputError(f"--networks {args.networks}: need at least 10 synthetic networks to fit the kernel model")
    with tempfile.TemporaryDirectory() as tmp:
        model, data = microbench.calibrate(tmp, count=args.networks,
                                           progress=lambda s: print(s, file=sys.stderr, flush=True))
    path = save_kernel_model("host", model)
    errors = [v["error"] for v in data["networks"].values()]
    within = sum(abs(e) <= 0.25 for e in errors)
    text = (f"host kernel model: {model.ref}\n"
            f"  on its own networks (in sample): {within}/{len(errors)} within 25% of measured\n"
            f"  saved to {path}; `edgecompress profile` and predict_for_device now predict host latency with it")
    return {"kernel_model": model.as_dict(), "path": str(path), "networks": len(errors),
            "in_sample_within_25pct": within, "wall_s": data["wall_s"]}, text


COMMANDS.add("devices", Command("devices", "list device profiles, which are attached, and each figure's source",
                                _configure, _run))
