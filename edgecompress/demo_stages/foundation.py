"""Demo stages of the foundation: train on digits, export to ONNX, build the engine and profile it."""

from __future__ import annotations

from pathlib import Path

from edgecompress.demo import DemoContext, demo_stage


def _resume_train(ctx: DemoContext, stage_dir: Path, report: dict) -> None:
    from edgecompress.data import digits_loaders, sample_batch
    from edgecompress.models import load_state_dict
    from edgecompress.nas import zoo

    ctx.train_loader, ctx.val_loader = digits_loaders(batch_size=ctx.config.batch_size, seed=ctx.config.seed)
    ctx.model = zoo.create(ctx.config.model, num_classes=10, width_mult=ctx.config.width_mult)
    ctx.model.load_state_dict(load_state_dict(stage_dir / "weights.pt"))
    ctx.model.eval()
    ctx.example = sample_batch(ctx.val_loader, 1)
    ctx.artifacts["weights.pt"] = stage_dir / "weights.pt"
    ctx.summary["fp32_val_accuracy"] = report["val_accuracy"]
    ctx.summary["params"] = report["stats"]["params"]
    ctx.summary["macs"] = report["stats"]["macs"]


@demo_stage("train", order=10, resume=_resume_train)
def train_stage(ctx: DemoContext, out: Path) -> dict:
    import torch

    from edgecompress.compress.stats import model_stats
    from edgecompress.compress.train import TrainConfig, evaluate, train
    from edgecompress.data import digits_loaders, sample_batch
    from edgecompress.nas import zoo

    cfg = ctx.config
    train_dl, val_dl = digits_loaders(batch_size=cfg.batch_size, seed=cfg.seed)
    model = zoo.create(cfg.model, num_classes=10, width_mult=cfg.width_mult)
    epochs = 1 if cfg.quick else cfg.epochs
    tcfg = TrainConfig(epochs=epochs, optimizer="adamw", lr=3e-3, weight_decay=0.05, warmup_epochs=0.5, seed=cfg.seed)
    logs = train(model, train_dl, val_dl, tcfg, desc="train")
    torch.save(model.state_dict(), out / "weights.pt")
    return {"model": cfg.model, "width_mult": cfg.width_mult, "train_config": tcfg.__dict__,
            "val_accuracy": evaluate(model, val_dl), "epochs": [log.__dict__ for log in logs],
            "stats": model_stats(model, sample_batch(val_dl, 1)), "data": "sklearn digits, 32x32x3, 1437/360 split"}


def _resume_export(ctx: DemoContext, stage_dir: Path, report: dict) -> None:
    ctx.artifacts["model.onnx"] = stage_dir / "model.onnx"


@demo_stage("export", order=50, resume=_resume_export)
def export_stage(ctx: DemoContext, out: Path) -> dict:
    from edgecompress.export.onnx import export_onnx

    return export_onnx(ctx.model, ctx.example, out / "model.onnx").as_dict()


@demo_stage("profile", order=60)
def profile_stage(ctx: DemoContext, out: Path) -> dict:
    from edgecompress.compress.train import evaluate
    from edgecompress.profiler import ProfileConfig, profile
    from edgecompress.runtime.engine import EngineOptions, load_engine

    engine = load_engine(ctx.artifacts["model.onnx"], "onnxruntime", EngineOptions(threads=ctx.config.threads))
    report = profile(engine, config=ProfileConfig(repeats=ctx.config.repeats, threads=ctx.config.threads))
    accuracy = evaluate(_EngineModule(engine), ctx.val_loader)
    ctx.summary["onnxruntime_val_accuracy"] = accuracy
    ctx.summary["onnxruntime_median_ms"] = report["latency_ms"]["median_ms"]
    return {"engine": engine.settings(), "val_accuracy": accuracy, "latency": report}


class _EngineModule:
    """Lets ``evaluate`` drive an engine like a torch module (numpy in, torch out)."""

    training = False

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.engine.run([x.numpy()])[0])

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self
