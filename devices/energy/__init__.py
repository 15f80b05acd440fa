"""Energy meters: a registry (``METERS``) of meters that report joules over a timed window.

``open_meter("rapl" | "nvml" | "jetson" | "rpi5" | "csv:FILE")`` builds one; ``auto_meter(names)`` tries
each name in turn and returns the first readable meter with the reason every other one was not used.

>>> meter, tried = auto_meter(["rapl"])                # doctest: +SKIP
>>> calls, reading = meter.measure(lambda: engine.run(feeds), min_seconds=2)  # doctest: +SKIP
>>> energy_per_inference(reading, calls, idle_power_w=meter.idle_power(1.0))   # doctest: +SKIP
"""

from __future__ import annotations

from edgecompress.devices.energy import csvlog, jetson, nvml, rapl, rpi5  # noqa: F401 - each registers itself
from edgecompress.devices.energy.base import (
    METERS,
    EnergyMeter,
    EnergyReading,
    MeterUnavailableError,
    counter_delta,
    energy_per_inference,
    integrate_power,
)
from edgecompress.errors import BadInputError

__all__ = ["METERS", "EnergyMeter", "EnergyReading", "MeterUnavailableError", "auto_meter", "counter_delta",
           "energy_per_inference", "integrate_power", "open_meter"]


def open_meter(spec: str) -> EnergyMeter:
    """A meter from a CLI spec: a registered name, or ``csv:FILE`` for an external meter's log."""
    if spec.startswith("csv:"):
        path = spec[4:]
        if not path:
            raise BadInputError("--energy csv:FILE needs a file name after 'csv:'")
        return METERS.get("csv")(path)
    if spec == "csv":
        raise BadInputError("--energy csv needs the log file: csv:FILE")
    return METERS.get(spec)()


def auto_meter(names: list[str] | tuple[str, ...]) -> tuple[EnergyMeter | None, list[dict]]:
    """The first of ``names`` whose ``check()`` passes, and ``[{meter, reason}]`` for each one not used."""
    tried = []
    for name in names:
        if name == "csv":
            tried.append({"meter": "csv", "reason": "an external meter's log must be named: --energy csv:FILE"})
            continue
        meter = open_meter(name)
        try:
            meter.check()
        except MeterUnavailableError as exc:
            tried.append({"meter": name, "reason": str(exc)})
            continue
        return meter, tried
    return None, tried
