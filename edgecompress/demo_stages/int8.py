"""Demo stage ``int8``: PTQ of the trained demo model to a Q/DQ ONNX for onnxruntime, with its accuracy and
its measured latency ratio against FP32 (one interleaved run on onnxruntime)."""

from __future__ import annotations

from pathlib import Path

from edgecompress.demo import DemoContext, demo_stage


def _resume(ctx: DemoContext, stage_dir: Path, report: dict) -> None:
    ctx.artifacts["model_int8.onnx"] = stage_dir / "model_int8.onnx"
    ctx.summary["int8_val_accuracy"] = report["checks"].get("int8_accuracy")
    ctx.summary["int8_sqnr_db"] = report["checks"]["sqnr_db"]
    ctx.summary["int8_speedup_vs_fp32"] = report["latency"]["speedup_median"]


@demo_stage("int8", order=40, resume=_resume)
def int8_stage(ctx: DemoContext, out: Path) -> dict:
    import statistics

    from torch.utils.data import DataLoader

    from edgecompress.compress.int8 import Int8Config
    from edgecompress.compress.int8.api import _ort_session, quantize
    from edgecompress.data import sample_batch
    from edgecompress.devices.timing import interleaved

    quick = ctx.config.quick
    # the quick demo trains one epoch: its accuracy is near chance, so only the SQNR floor applies there
    config = Int8Config(calibration_samples=64 if quick else 1024, max_accuracy_drop=None if quick else 0.01)
    # calibrate on the first training samples in file order, not on a draw from the shuffled loader: the
    # draw depended on how far the earlier stages had moved its generator, and the PTQ drop with it
    # (0.28 or 1.11 points for two draws of the same model, the floor is 1.00)
    calibration = DataLoader(ctx.train_loader.dataset, batch_size=ctx.train_loader.batch_size, shuffle=False)
    result = quantize(ctx.model, calibration, config, output=out / "model_int8.onnx", eval_data=ctx.val_loader)
    report = result.report
    threads = ctx.config.threads or 2
    x = sample_batch(ctx.val_loader, 1).numpy()
    sessions = {"fp32": _ort_session(Path(report["fp32"]["path"]), threads),
                "int8": _ort_session(result.model, threads)}
    repeats = 10 if quick else 30
    samples = interleaved({k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()},
                          warmup=5, repeats=repeats, rounds=3)
    med = {k: statistics.median(v) for k, v in samples.items()}
    report["latency"] = {"source": "measured", "engine": "onnxruntime CPU, ORT_ENABLE_ALL", "threads": threads,
                         "batch": 1, "timing": f"interleaved, 3 rounds x {repeats} runs",
                         "fp32_ms": {"min": min(samples["fp32"]), "median": med["fp32"]},
                         "int8_ms": {"min": min(samples["int8"]), "median": med["int8"]},
                         "speedup_median": med["fp32"] / med["int8"],
                         "speedup_min": min(samples["fp32"]) / min(samples["int8"])}
    report["int8_path"] = "model_int8.onnx"
    report["fp32"]["path"] = "model_fp32.onnx"
    return report
