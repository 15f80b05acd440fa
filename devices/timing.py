"""Latency timing and its statistics: pure functions, no torch.

``measure`` runs a callable ``warmup`` times, then ``repeats`` timed runs (wall clock,
``time.perf_counter_ns``); ``LatencyStats.from_samples`` turns the samples into the figures the
profiler reports. Percentiles use linear interpolation (numpy's default).

>>> LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0]).median_ms
2.5
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics in milliseconds over ``count`` timed runs of ``batch`` samples each."""

    count: int
    batch: int
    min_ms: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    throughput_per_s: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], batch: int = 1) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError("LatencyStats needs a non-empty 1-D sequence of samples")
        if np.any(~np.isfinite(a)) or np.any(a < 0):
            raise ValueError("latency samples must be finite and >= 0")
        if batch < 1:
            raise ValueError(f"batch={batch}: must be >= 1")
        mean = float(a.mean())
        return cls(
            count=int(a.size),
            batch=batch,
            min_ms=float(a.min()),
            median_ms=float(np.median(a)),
            mean_ms=mean,
            p90_ms=float(np.percentile(a, 90)),
            p99_ms=float(np.percentile(a, 99)),
            max_ms=float(a.max()),
            std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
            throughput_per_s=(1000.0 * batch / mean) if mean > 0 else float("inf"),
        )

    def as_dict(self) -> dict:
        return asdict(self)


def measure(fn: Callable[[], object], warmup: int = 10, repeats: int = 50) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup={warmup}, repeats={repeats}: need warmup >= 0 and repeats >= 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def interleaved(fns: dict[str, Callable[[], object]], warmup: int = 10, repeats: int = 50,
                rounds: int = 3) -> dict[str, list[float]]:
    """Time several candidates round-robin (``rounds`` x ``repeats`` each) so machine noise hits all.

    Every candidate is warmed up first; then, in each round, each candidate runs ``repeats`` times in
    turn. Returns all samples per candidate. Ratios between candidates should be taken from this.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].extend(measure(fn, warmup=0, repeats=repeats))
    return out
