"""NVIDIA GPU energy through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

- Volta and newer (compute capability >= 7.0): ``nvmlDeviceGetTotalEnergyConsumption`` is a cumulative
  counter in millijoules since the driver loaded; the window's energy is its difference.
- Older GPUs, or when that call is not supported: ``nvmlDeviceGetPowerUsage`` (milliwatts) sampled every
  ``period_s`` and integrated. On recent drivers that value is a ~1 s moving average, so short windows
  are biased; the reading says which method was used.

The ``nvml`` module is a parameter so tests pass a fake object with the same functions.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType

from edgecompress.devices.energy.base import (
    METERS,
    EnergyMeter,
    EnergyReading,
    MeterUnavailableError,
    SampledPowerMeter,
)


def _load_nvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        raise MeterUnavailableError("nvml: pynvml is not installed (pip install nvidia-ml-py)") from None


class _PowerSampler(SampledPowerMeter):
    name = "nvml"

    def __init__(self, nvml: ModuleType, handle: object, period_s: float) -> None:
        super().__init__(period_s)
        self.nvml, self.handle = nvml, handle

    def check(self) -> None:
        pass

    def read_watts(self) -> tuple[float, dict]:
        w = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        return w, {"gpu": w}


class NvmlMeter(EnergyMeter):
    name = "nvml"

    def __init__(self, index: int = 0, nvml: ModuleType | None = None, period_s: float = 0.1) -> None:
        self.index = index
        self._nvml = nvml
        self.period_s = period_s
        self.method = "?"
        self._handle = None
        self._sampler: _PowerSampler | None = None
        self._e0 = 0
        self._t0 = 0.0

    def _open(self) -> tuple[ModuleType, object]:
        nvml = self._nvml or _load_nvml()
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:  # pynvml.NVMLError_* (driver not loaded, library not found)
            raise MeterUnavailableError(f"nvml: cannot start NVML: {exc}") from None
        if self.index >= count:
            raise MeterUnavailableError(f"nvml: GPU index {self.index} requested, NVML sees {count} GPU(s)")
        return nvml, nvml.nvmlDeviceGetHandleByIndex(self.index)

    def _has_energy_counter(self, nvml: ModuleType, handle: object) -> bool:
        try:
            major, _ = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            if major < 7:
                return False
        except Exception:  # noqa: BLE001 - old drivers lack the call: try the counter itself
            pass
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            return True
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported
            return False

    def check(self) -> None:
        self._open()

    def start(self) -> None:
        nvml, self._handle = self._open()
        if self._has_energy_counter(nvml, self._handle):
            self.method = "total energy counter (nvmlDeviceGetTotalEnergyConsumption)"
            self.sampling_period_s = None
            self._sampler = None
            self._t0 = time.monotonic()
            self._e0 = nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        else:
            self.method = "power samples integrated (nvmlDeviceGetPowerUsage, ~1 s averaged by the driver)"
            self.sampling_period_s = self.period_s
            self._sampler = _PowerSampler(nvml, self._handle, self.period_s)
            self._sampler.start()
        self._nvml_module = nvml

    def stop(self) -> EnergyReading:
        nvml = self._nvml_module
        try:
            if self._sampler is not None:
                r = self._sampler.stop()
                return EnergyReading(self.name, r.joules, r.seconds, r.sampling_period_s, r.samples,
                                     {"gpu": self.index, "method": self.method})
            e1 = nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            seconds = time.monotonic() - self._t0
            return EnergyReading(self.name, (e1 - self._e0) / 1000.0, seconds, None, 2,
                                 {"gpu": self.index, "method": self.method})
        finally:
            nvml.nvmlShutdown()


METERS.add("nvml", NvmlMeter)
