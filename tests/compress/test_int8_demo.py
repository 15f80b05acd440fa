"""The ``int8`` demo stage: quantizes the demo model, measures accuracy and the FP32/INT8 latency ratio."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


def test_int8_demo_stage_writes_model_and_measured_ratio(tmp_path):
    from edgecompress.demo import DEMO_STAGES, DemoConfig, DemoContext, stages
    from edgecompress.fileio import RunDir
    from edgecompress.nas import zoo

    assert "int8" in {s.name for s in stages()} and DEMO_STAGES["int8"].order == 40
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    ctx = DemoContext(config=DemoConfig(quick=True, threads=2), run=RunDir(tmp_path / "run"))
    ctx.model = zoo.create("mobilenetv2_cifar_tiny", num_classes=10).eval()
    ctx.train_loader = DataLoader(data, batch_size=32)
    ctx.val_loader = DataLoader(data, batch_size=32)
    stage = DEMO_STAGES["int8"]
    with ctx.run.stage("int8") as (tmp, report):
        report.update(stage.run(ctx, tmp))
    stage.resume(ctx, ctx.run.path("int8"), ctx.run.report("int8"))
    assert (ctx.run.path("int8") / "model_int8.onnx").is_file()
    assert (ctx.run.path("int8") / "model_fp32.onnx").is_file()
    lat = ctx.run.report("int8")["latency"]
    assert lat["source"] == "measured" and lat["fp32_ms"]["min"] > 0 and lat["int8_ms"]["min"] > 0
    assert ctx.summary["int8_speedup_vs_fp32"] == lat["speedup_median"] > 0
    assert ctx.summary["int8_val_accuracy"] is not None
    assert ctx.artifacts["model_int8.onnx"].is_file()
