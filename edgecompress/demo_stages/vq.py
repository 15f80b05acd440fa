"""Demo stage ``vq`` (order 30): a short LR²VQ of the trained demo model; reports ratio, file bytes, accuracy.

Settings: m=8, k=64 (about 23x counted from real bits), 4 epochs over the training set (under
``--quick``: no fine-tuning, k-means only), ``d`` estimated among 2, 4, 8. Measured on the demo's
MobileNetV2 (98.06% FP32): 90.3% at 22.9x in 166 s (1 torch thread, 2026-11-28); the earlier setting
(m=16, k=32 on a 128-image subset) gave 9.7% at 27x. The stage quantises a copy; later stages use the
dense model.
"""

from __future__ import annotations

import copy
from pathlib import Path

from edgecompress.demo import DemoContext, demo_stage

SUBSET = 128  # samples seen under --quick (k-means only)


def _summarise(ctx: DemoContext, report: dict) -> None:
    ctx.summary["vq_ratio"] = report["ratio"]
    ctx.summary["vq_val_accuracy"] = report["val_accuracy"]
    ctx.summary["vq_checkpoint_bytes"] = report["files"]["checkpoint"]["bytes"]


def _resume(ctx: DemoContext, stage_dir: Path, report: dict) -> None:
    _summarise(ctx, report)
    ctx.artifacts["model.ecvq"] = stage_dir / "model.ecvq"


@demo_stage("vq", order=30, resume=_resume)
def vq_stage(ctx: DemoContext, out: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader, Subset

    from edgecompress.compress.lr2vq.api import LR2VQConfig, vq, write_artifacts

    dataset = ctx.train_loader.dataset
    subset = Subset(dataset, range(min(SUBSET, len(dataset)) if ctx.config.quick else len(dataset)))
    loader = DataLoader(subset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(ctx.config.seed))
    epochs = 0 if ctx.config.quick else 4
    config = LR2VQConfig(k=64, m=8, epochs=epochs, d_candidates=(2, 4, 8), seed=ctx.config.seed)
    result = vq(copy.deepcopy(ctx.model), loader, config, val_data=ctx.val_loader)
    files = write_artifacts(result, out, ctx.example)
    r = result.report
    report = {k: r[k] for k in ("method", "d", "d_source", "ratio", "fp32_val_accuracy", "val_accuracy",
                                "accuracy_source", "quantised_layers", "uncompressed_layers", "seconds")}
    report |= {"config": r["config"], "files": files, "train_subset": len(subset),
               "accounting": {k: r["accounting"][k] for k in ("source", "rules", "reference_bytes",
                                                              "compressed_bytes", "ratio")},
               "note": "the demo quantises a copy; later stages use the dense model"}
    _summarise(ctx, report)
    return report
