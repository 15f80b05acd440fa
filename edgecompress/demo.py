"""``edgecompress demo``: the built-in example, end to end, in a resumable run directory.

Trains a CIFAR-style MobileNetV2 on scikit-learn's digits, then runs every registered demo stage in
order (export, engine, profile; later stages add pruning, VQ, INT8, TVM) and writes
``RUN/report.json``, ``RUN/report.html`` and ``RUN/model.onnx``. Each stage is a sub-directory written
atomically; rerunning the same command skips finished stages.

Stages live in ``edgecompress/demo_stages/*.py`` and register themselves with ``@demo_stage``.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.fileio import RunDir, write_json_atomic


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings; the defaults finish in a few minutes on 2 cores."""

    model: str = "mobilenetv2_cifar"
    width_mult: float = 0.5
    epochs: int = 6
    batch_size: int = 64
    threads: int | None = None
    repeats: int = 50
    quick: bool = False
    seed: int = 0
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: must be >= 1")
        if self.width_mult <= 0:
            raise ValueError(f"width_mult={self.width_mult}: must be > 0")


@dataclass
class DemoContext:
    """What stages share: the config, data, the current model and the files written so far."""

    config: DemoConfig
    run: RunDir
    train_loader: Any = None
    val_loader: Any = None
    model: Any = None
    example: Any = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoStage:
    name: str
    order: int
    run: Callable[[DemoContext, Path], dict]
    resume: Callable[[DemoContext, Path, dict], None]


DEMO_STAGES: dict[str, DemoStage] = {}


def demo_stage(name: str, order: int, resume: Callable[[DemoContext, Path, dict], None] | None = None):
    """Register ``fn(ctx, stage_dir) -> report`` as a demo stage run in ``order``.

    ``resume(ctx, stage_dir, report)`` restores the context from a finished stage's files.
    """

    def decorator(fn: Callable[[DemoContext, Path], dict]) -> Callable[[DemoContext, Path], dict]:
        if name in DEMO_STAGES:
            raise ValueError(f"demo stage {name!r} registered twice")
        DEMO_STAGES[name] = DemoStage(name, order, fn, resume or (lambda ctx, d, r: None))
        return fn

    return decorator


def stages() -> list[DemoStage]:
    package = importlib.import_module("edgecompress.demo_stages")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return sorted(DEMO_STAGES.values(), key=lambda s: s.order)


def demo(out_dir: str | Path = "runs/demo", config: DemoConfig = DemoConfig(), log: Callable[[str], None] = print
         ) -> dict:
    """Run the demo into ``out_dir``; returns the run's report (also written as report.json/html)."""
    import torch

    from edgecompress.report import write_html

    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = DemoContext(config=config, run=RunDir(out_dir))
    report: dict[str, Any] = {"config": asdict(config), "stages": {}}
    for stage in stages():
        if stage.name in config.skip:
            log(f"[{stage.name}] skipped (--skip)")
            continue
        stage_dir = ctx.run.path(stage.name)
        if ctx.run.done(stage.name):
            stage_report = ctx.run.report(stage.name)
            stage.resume(ctx, stage_dir, stage_report)
            log(f"[{stage.name}] already done in {stage_dir}, resuming from it")
        else:
            log(f"[{stage.name}] running")
            start = time.perf_counter()
            with ctx.run.stage(stage.name) as (tmp, stage_report):
                stage_report.update(stage.run(ctx, tmp))
                stage_report["seconds"] = round(time.perf_counter() - start, 2)
            stage.resume(ctx, stage_dir, stage_report)
            log(f"[{stage.name}] done in {stage_report['seconds']:.1f} s")
        report["stages"][stage.name] = stage_report
    report["summary"] = ctx.summary
    if "model.onnx" in ctx.artifacts:
        shutil.copyfile(ctx.artifacts["model.onnx"], ctx.run.root / "model.onnx")
    write_json_atomic(ctx.run.root / "report.json", report)
    write_html(report, ctx.run.root / "report.html", title=f"edgecompress demo: {config.model} on digits")
    return report
