"""``profile``: measured latency of a model, an ONNX file or an engine, with the settings used.

Every figure carries ``source: measured`` plus the device, runtime and settings (threads, batch,
warmup, repeats, runtime versions, CPU model).

>>> report = profile("model.onnx", config=ProfileConfig(repeats=100))  # doctest: +SKIP
>>> print(format_report(report))                                         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.devices.host import host_info, package_version
from edgecompress.devices.timing import LatencyStats, measure
from edgecompress.errors import BadInputError
from edgecompress.runtime.engine import Engine, EngineOptions, load_engine


@dataclass(frozen=True)
class ProfileConfig:
    """Timing settings. ``threads=None`` uses every usable core."""

    runtime: str = "onnxruntime"
    device: str = "host"
    threads: int | None = None
    batch: int = 1
    warmup: int = 10
    repeats: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch={self.batch}: must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup}: must be >= 0")
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats}: must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be >= 1")


def profile(target: Any, inputs: dict[str, np.ndarray] | np.ndarray | None = None,
            config: ProfileConfig = ProfileConfig()) -> dict:
    """Time ``target`` (an ``Engine``, an ONNX path, or a ``torch.nn.Module``) and report.

    ``inputs`` default to random normal tensors shaped like the engine's inputs at ``config.batch``
    (for a torch module, give ``inputs`` or set ``model.input_size``).
    """
    if isinstance(target, (str, Path)):
        engine = load_engine(target, config.runtime, EngineOptions(threads=config.threads, target=config.device))
        return profile_engine(engine, inputs, config)
    if isinstance(target, Engine):
        return profile_engine(target, inputs, config)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(target, torch.nn.Module):
        return _profile_torch(target, inputs, config)
    raise BadInputError(f"cannot profile a {type(target).__name__}: give an Engine, an ONNX path or an nn.Module")


def profile_engine(engine: Engine, inputs: dict[str, np.ndarray] | np.ndarray | None,
                   config: ProfileConfig) -> dict:
    feeds = engine.check_feeds(inputs) if inputs is not None else engine.example_feeds(config.batch, config.seed)
    batch = next(iter(feeds.values())).shape[0] if feeds else 1
    samples = engine.measure(feeds, config.warmup, config.repeats)
    return _report(samples, batch, engine.settings(), config)


def _profile_torch(model: Any, inputs: Any, config: ProfileConfig) -> dict:
    import torch

    if inputs is None:
        size = getattr(model, "input_size", None)
        if size is None:
            raise BadInputError("profiling a torch module needs `inputs` or a `model.input_size` (C, H, W)")
        generator = torch.Generator().manual_seed(config.seed)
        inputs = torch.randn((config.batch, *size), generator=generator)
    x = torch.as_tensor(inputs)
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    model.eval()
    try:
        with torch.inference_mode():
            samples = measure(lambda: model(x), config.warmup, config.repeats)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    settings = {"runtime": "torch-eager", "version": torch.__version__, "threads": threads}
    return _report(samples, x.shape[0], settings, config)


def _report(samples: list[float], batch: int, settings: dict, config: ProfileConfig) -> dict:
    stats = LatencyStats.from_samples(samples, batch=batch)
    return {
        "source": "measured",
        "device": config.device,
        "runtime": settings.get("runtime"),
        "settings": {**settings, "batch": batch, "warmup": config.warmup, "repeats": config.repeats,
                     "numpy": package_version("numpy")},
        "host": host_info(),
        "latency_ms": stats.as_dict(),
        "samples_ms": [round(s, 6) for s in samples],
    }


def format_report(report: dict) -> str:
    """A readable table of a profile report."""
    s = report["latency_ms"]
    settings = report["settings"]
    lines = [
        f"latency ({report['source']}) on {report['device']} [{report['host']['cpu']}], "
        f"runtime {settings.get('runtime')} {settings.get('version', '')}, threads {settings.get('threads')}, "
        f"batch {settings['batch']}, warmup {settings['warmup']}, repeats {settings['repeats']}",
        f"{'min':>9} {'median':>9} {'mean':>9} {'p90':>9} {'p99':>9} {'max':>9} {'std':>9}   throughput",
        f"{s['min_ms']:9.3f} {s['median_ms']:9.3f} {s['mean_ms']:9.3f} {s['p90_ms']:9.3f} {s['p99_ms']:9.3f} "
        f"{s['max_ms']:9.3f} {s['std_ms']:9.3f}   {s['throughput_per_s']:.1f}/s  (ms)",
    ]
    return "\n".join(lines)
