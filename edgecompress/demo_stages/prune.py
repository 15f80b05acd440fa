"""Demo stage ``prune`` (order 20): OTOv2 on the trained demo model, briefly; reports params, MACs, accuracy."""

from __future__ import annotations

import copy
from pathlib import Path

from edgecompress.demo import DemoContext, demo_stage


@demo_stage("prune", order=20)
def prune_stage(ctx: DemoContext, out: Path) -> dict:
    from edgecompress.compress.otov2.api import OTOv2Config, prune
    from edgecompress.compress.otov2.serialize import save_pruned

    epochs = 1 if ctx.config.quick else 2
    config = OTOv2Config(target_group_sparsity=0.5, epochs=epochs, lr=1e-3, start_pruning_fraction=0.1,
                         force_project_fraction=0.5, seed=ctx.config.seed)
    result = prune(copy.deepcopy(ctx.model), ctx.example, ctx.train_loader, config, ctx.val_loader)
    save_pruned(result.model, out / "pruned", spec=f"zoo:{ctx.config.model}", num_classes=10)
    r = result.report
    ctx.summary["pruned_val_accuracy"] = r["val_accuracy"]
    ctx.summary["pruned_params"] = r["pruned"]["params"]
    ctx.summary["pruned_macs"] = r["pruned"]["macs"]
    return {k: r[k] for k in ("method", "target_group_sparsity", "group_sparsity", "dense", "pruned", "params_ratio",
                              "macs_ratio", "stats_source", "construction", "val_accuracy", "seconds")} | {
        "epochs": epochs, "note": "the demo prunes a separate copy; later stages use the dense model"}
