"""Energy meters: the interface, the registry, and the pure integration math.

A meter reports the joules a device used over a timed window and its sampling period. Two shapes:

- counter meters (RAPL ``energy_uj``, NVML total energy) read a cumulative counter at the window's
  edges, polled in between so a counter that wraps at its maximum is still counted
  (``counter_delta``);
- power meters (Jetson INA3221 rails, Raspberry Pi 5 PMIC, NVML power) sample watts every
  ``sampling_period_s`` on a background thread and integrate with the trapezoidal rule
  (``integrate_power``), the samples clipped to the window by linear interpolation.

Energy per inference = window energy / inferences in the window (``energy_per_inference``); the idle
power (a window of sleep, measured with the same meter) is reported beside it, never subtracted
silently.

>>> counter_delta(start=990, end=10, max_range=1000)
20
>>> round(integrate_power([0.0, 1.0, 2.0], [2.0, 4.0, 4.0], 0.5, 2.0), 6)
5.75
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.registry import Registry


class MeterUnavailableError(EdgeCompressError):
    """The meter is absent or unreadable here; the message says which file or call and why."""


@dataclass(frozen=True)
class EnergyReading:
    """Joules over a window of ``seconds``, from ``meter``; ``detail`` holds per-domain/rail joules."""

    meter: str
    joules: float
    seconds: float
    sampling_period_s: float | None
    samples: int
    detail: dict = field(default_factory=dict)

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "mean_watts": self.watts}


def counter_delta(start: int, end: int, max_range: int) -> int:
    """Increase of a counter that wraps to 0 after ``max_range`` (at most one wrap between reads).

    ``end - start`` when ``end >= start``, else ``end + max_range - start`` (the kernel's powercap
    counters count ``0 .. max_energy_range_uj`` and restart at 0; docs.kernel.org/power/powercap).
    """
    if max_range <= 0:
        raise ValueError(f"max_range={max_range}: must be > 0")
    return end - start if end >= start else end + max_range - start


def integrate_power(times_s: Sequence[float], watts: Sequence[float], t0: float, t1: float) -> float:
    """Joules in ``[t0, t1]``: trapezoidal integral of the power samples, linearly interpolated at the edges.

    Needs samples at or before ``t0`` and at or after ``t1``; raises ``ValueError`` otherwise.
    """
    t = np.asarray(times_s, dtype=np.float64)
    w = np.asarray(watts, dtype=np.float64)
    if t.ndim != 1 or t.shape != w.shape or t.size < 2:
        raise ValueError("integrate_power needs two or more (time, watts) samples of equal length")
    if np.any(np.diff(t) < 0):
        raise ValueError("sample times must not decrease")
    if t1 < t0:
        raise ValueError(f"window end {t1} is before its start {t0}")
    if t[0] > t0 or t[-1] < t1:
        raise ValueError(f"samples cover {t[0]:.3f}..{t[-1]:.3f} s but the window is {t0:.3f}..{t1:.3f} s")
    inside = (t > t0) & (t < t1)
    tt = np.concatenate([[t0], t[inside], [t1]])
    ww = np.concatenate([[np.interp(t0, t, w)], w[inside], [np.interp(t1, t, w)]])
    return float(np.sum((tt[1:] - tt[:-1]) * (ww[1:] + ww[:-1]) / 2.0))


def energy_per_inference(reading: EnergyReading, inferences: int, idle_power_w: float | None = None) -> dict:
    """``reading.joules / inferences`` with the window's mean power and the idle power beside it."""
    if inferences < 1:
        raise ValueError(f"inferences={inferences}: must be >= 1")
    out = {"source": "measured", "meter": reading.meter, "joules_per_inference": reading.joules / inferences,
           "window_joules": reading.joules, "window_s": reading.seconds, "inferences": inferences,
           "mean_power_w": reading.watts, "sampling_period_s": reading.sampling_period_s,
           "samples": reading.samples, "idle_power_w": idle_power_w, "detail": reading.detail}
    if idle_power_w is not None:
        # what the inferences added on top of idle; reported beside the total, never instead of it
        out["joules_per_inference_above_idle"] = (reading.joules - idle_power_w * reading.seconds) / inferences
    return out


class EnergyMeter(ABC):
    """One meter. ``check()`` raises ``MeterUnavailableError`` with the reason; ``start``/``stop`` bound a window."""

    name: str = "?"
    sampling_period_s: float | None = None

    @abstractmethod
    def check(self) -> None:
        """Raise ``MeterUnavailableError`` when this meter cannot be read here."""

    @abstractmethod
    def start(self) -> None:
        """Open a window."""

    @abstractmethod
    def stop(self) -> EnergyReading:
        """Close the window and return its energy."""

    def measure(self, fn: Callable[[], object], min_seconds: float = 1.0) -> tuple[int, EnergyReading]:
        """Call ``fn`` repeatedly for at least ``min_seconds`` inside one window; returns (calls, reading)."""
        calls = 0
        self.start()
        try:
            deadline = time.perf_counter() + min_seconds
            while calls == 0 or time.perf_counter() < deadline:
                fn()
                calls += 1
        except BaseException:
            self._abort()
            raise
        return calls, self.stop()

    def idle_power(self, seconds: float = 1.0) -> float:
        """Mean watts over ``seconds`` of sleep."""
        self.start()
        time.sleep(seconds)
        return self.stop().watts

    def _abort(self) -> None:
        with contextlib.suppress(Exception):  # the caller's exception matters more
            self.stop()


class SampledPowerMeter(EnergyMeter):
    """A meter that samples instantaneous watts (``read_watts``) on a background thread and integrates."""

    def __init__(self, period_s: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s={period_s}: must be > 0")
        self.sampling_period_s = period_s
        self._clock = clock
        self._times: list[float] = []
        self._watts: list[float] = []
        self._details: list[dict] = []
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    @abstractmethod
    def read_watts(self) -> tuple[float, dict]:
        """(total watts now, watts per rail)."""

    def _sample(self) -> None:
        w, detail = self.read_watts()
        self._times.append(self._clock())
        self._watts.append(w)
        self._details.append(detail)

    def _loop(self) -> None:
        while not self._stop_event.wait(self.sampling_period_s):
            self._sample()

    def start(self) -> None:
        self.check()
        self._times, self._watts, self._details = [], [], []
        self._sample()
        self._t0 = self._times[0]
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> EnergyReading:
        if self._thread is None:
            raise RuntimeError(f"{self.name}: stop() without start()")
        self._stop_event.set()
        self._thread.join()
        self._thread = None
        self._sample()
        t1 = self._times[-1]
        joules = integrate_power(self._times, self._watts, self._t0, t1)
        rails = sorted({k for d in self._details for k in d})
        detail = {r: integrate_power(self._times, [d.get(r, 0.0) for d in self._details], self._t0, t1)
                  for r in rails}
        return EnergyReading(self.name, joules, t1 - self._t0, self.sampling_period_s, len(self._times),
                             {"rail_joules": detail})


MeterFactory = Callable[..., EnergyMeter]
METERS: Registry[MeterFactory] = Registry("energy meter")
