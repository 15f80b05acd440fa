"""Jetson power rails from the INA3221 monitors in sysfs, sampled and integrated.

Two real layouts, both read:

- **hwmon** (upstream ``ina3221`` driver; JetPack 5/6, Orin): a folder such as
  ``/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1`` with, per channel N = 1..3,
  ``inN_label`` (rail name, e.g. ``VDD_IN``, ``VDD_CPU_GPU_CV``, ``VDD_SOC`` on an Orin Nano),
  ``inN_input`` (bus voltage, millivolts) and ``currN_input`` (current, milliamperes):
  power = V x I.
- **iio** (NVIDIA's ``ina3221x`` driver; JetPack 4, Nano/TX2/Xavier): a folder such as
  ``/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0`` with, per channel N = 0..2, ``rail_name_N``,
  ``in_power{N}_input`` (milliwatts), ``in_voltage{N}_input`` (mV), ``in_current{N}_input`` (mA):
  power is read directly.

The window's energy uses the board's input rail (``VDD_IN`` or ``POM_5V_IN``) when there is one,
because the other rails are inside it; otherwise the sum of every rail. Per-rail joules are in the
reading's detail. There is no cumulative counter, so the meter samples every ``period_s`` seconds.
"""

from __future__ import annotations

from pathlib import Path

from edgecompress.devices.energy.base import METERS, MeterUnavailableError, SampledPowerMeter

I2C_DRIVERS = Path("/sys/bus/i2c/drivers")
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def find_rails(root: Path) -> dict[str, tuple[str, Path, Path | None]]:
    """``rail -> (layout, power-or-voltage file, current file or None)`` under an I2C drivers folder."""
    rails: dict[str, tuple[str, Path, Path | None]] = {}
    for hwmon in sorted(root.glob("ina3221/*/hwmon/hwmon*")):
        for label in sorted(hwmon.glob("in*_label")):
            n = label.name[2:-len("_label")]
            volt, curr = hwmon / f"in{n}_input", hwmon / f"curr{n}_input"
            name = label.read_text().strip()
            if volt.exists() and curr.exists() and name and not name.lower().startswith("nc"):
                rails[name] = ("hwmon", volt, curr)
    for iio in sorted(root.glob("ina3221x/*/iio:device*")):
        for label in sorted(iio.glob("rail_name_*")):
            n = label.name[len("rail_name_"):]
            power = iio / f"in_power{n}_input"
            if power.exists():
                rails[label.read_text().strip()] = ("iio", power, None)
    return rails


def read_rail_watts(rails: dict[str, tuple[str, Path, Path | None]]) -> dict[str, float]:
    out = {}
    for name, (layout, a, b) in rails.items():
        if layout == "hwmon":
            out[name] = _read_int(a) / 1000.0 * _read_int(b) / 1000.0  # mV x mA -> W
        else:
            out[name] = _read_int(a) / 1000.0  # mW -> W
    return out


class JetsonMeter(SampledPowerMeter):
    name = "jetson"

    def __init__(self, root: Path | str = I2C_DRIVERS, period_s: float = 0.05) -> None:
        super().__init__(period_s)
        self.root = Path(root)
        self._rails: dict | None = None

    def rails(self) -> dict[str, tuple[str, Path, Path | None]]:
        if self._rails is None:
            rails = find_rails(self.root) if self.root.is_dir() else {}
            if not rails:
                raise MeterUnavailableError(f"jetson: no INA3221 rails under {self.root}/ina3221*/ "
                                            "(not a Jetson, or the monitor driver is not loaded)")
            self._rails = rails
        return self._rails

    def read_watts(self) -> tuple[float, dict]:
        try:
            per_rail = read_rail_watts(self.rails())
        except PermissionError as exc:
            raise MeterUnavailableError(f"jetson: {exc.filename} is not readable by this user: run as root "
                                        "or add a udev rule") from None
        except (OSError, ValueError) as exc:
            raise MeterUnavailableError(f"jetson: cannot read an INA3221 rail: {exc}") from None
        total = next((per_rail[r] for r in INPUT_RAILS if r in per_rail), None)
        return (sum(per_rail.values()) if total is None else total), per_rail

    def check(self) -> None:
        self.read_watts()


METERS.add("jetson", JetsonMeter)
