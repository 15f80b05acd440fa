"""Raspberry Pi 5 PMIC rails through ``vcgencmd pmic_read_adc``.

The firmware prints one line per ADC channel, current lines first, then voltages, for example::

     VDD_CORE_A current(7)=0.56259000A
     VDD_CORE_V volt(15)=0.76798460V
        EXT5V_V volt(24)=5.14158000V

A rail ``R`` has ``R_A`` (amperes) and ``R_V`` (volts); ``EXT5V_V`` and ``BATT_V`` are voltage only.
Power = sum over rails with both of V x I. The PMIC rails miss the 5 V branch (USB, HATs, NVMe), so
this is the SoC and memory power, not the wall power (a third-party fit puts the wall at about
1.1451 x sum + 0.5879 W; single source, not applied here). ``vcgencmd`` takes ~0.1 s per call, so the
sampling period is at least that. The command runner is a parameter so tests feed captured text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

from edgecompress.devices.energy.base import METERS, MeterUnavailableError, SampledPowerMeter

_LINE = re.compile(r"^\s*(?P<rail>\S+)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)="
                   r"(?P<value>[-+0-9.eE]+)(?P<unit>[AV])\s*$")


def parse_pmic_adc(text: str) -> dict[str, dict[str, float]]:
    """``rail -> {"current_a": I, "volt_v": V}`` (either may be missing) from ``pmic_read_adc`` output."""
    rails: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"unexpected pmic_read_adc line: {line.strip()!r}")
        if m["kind"] != m["unit"]:
            raise ValueError(f"pmic_read_adc line with mismatched unit: {line.strip()!r}")
        key = "current_a" if m["kind"] == "A" else "volt_v"
        rails.setdefault(m["rail"], {})[key] = float(m["value"])
    if not rails:
        raise ValueError("pmic_read_adc printed no rails")
    return rails


def rail_watts(rails: dict[str, dict[str, float]]) -> dict[str, float]:
    """V x I for every rail that has both."""
    return {r: v["current_a"] * v["volt_v"] for r, v in rails.items() if "current_a" in v and "volt_v" in v}


def _run_vcgencmd() -> str:
    exe = shutil.which("vcgencmd")
    if exe is None:
        raise MeterUnavailableError("rpi5: vcgencmd is not on PATH (not a Raspberry Pi, or raspi-utils missing)")
    done = subprocess.run([exe, "pmic_read_adc"], capture_output=True, text=True, timeout=5, check=False)
    if done.returncode != 0 or "error" in done.stdout:
        raise MeterUnavailableError(f"rpi5: `vcgencmd pmic_read_adc` failed ({done.returncode}): "
                                    f"{(done.stderr or done.stdout).strip()} (only a Raspberry Pi 5 has the PMIC ADC)")
    return done.stdout


class Rpi5PmicMeter(SampledPowerMeter):
    name = "rpi5"

    def __init__(self, runner: Callable[[], str] = _run_vcgencmd, period_s: float = 0.2) -> None:
        super().__init__(period_s)
        self.runner = runner

    def read_watts(self) -> tuple[float, dict]:
        try:
            per_rail = rail_watts(parse_pmic_adc(self.runner()))
        except ValueError as exc:
            raise MeterUnavailableError(f"rpi5: cannot parse `vcgencmd pmic_read_adc`: {exc}") from None
        return sum(per_rail.values()), per_rail

    def check(self) -> None:
        self.read_watts()


METERS.add("rpi5", Rpi5PmicMeter)
