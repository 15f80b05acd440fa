"""An external meter's log (e.g. a USB-C inline meter on a Raspberry Pi 4, which has no sensor).

Format: a CSV with a header row. The first column named ``timestamp``, ``time`` or ``t`` holds the
sample time, as Unix seconds or ISO 8601 (``2026-11-28T12:00:00.5``, UTC unless an offset is given);
then either a power column (``watts``, ``power_w``, ``w``, ``power``) or a cumulative energy column
(``joules``, ``energy_j``, ``j``, ``energy``). Power is integrated with the trapezoidal rule; cumulative
energy is interpolated at the window's edges and differenced. ``clock_offset_s`` is added to the log's
times to put them on this host's clock. The log must cover the whole timed window (a meter's logger
writes it while the model runs; the file is read when the window closes).
"""

from __future__ import annotations

import csv
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgecompress.devices.energy.base import METERS, EnergyMeter, EnergyReading, MeterUnavailableError, integrate_power
from edgecompress.errors import BadInputError

TIME_COLUMNS = ("timestamp", "time", "t")
POWER_COLUMNS = ("watts", "power_w", "w", "power")
ENERGY_COLUMNS = ("joules", "energy_j", "j", "energy")


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_meter_csv(path: Path | str) -> tuple[np.ndarray, np.ndarray, str]:
    """(times in s, values, ``"watts"`` or ``"joules"``); ``BadInputError`` names the file and row at fault."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = list(reader)
    except OSError as exc:
        raise BadInputError(f"meter log {path}: cannot read it: {exc}") from None
    t_col = next((header.index(c) for c in TIME_COLUMNS if c in header), None)
    if t_col is None:
        raise BadInputError(f"meter log {path}: no time column (one of {', '.join(TIME_COLUMNS)}) in header {header}")
    kind, v_col = None, None
    for names, k in ((POWER_COLUMNS, "watts"), (ENERGY_COLUMNS, "joules")):
        v_col = next((header.index(c) for c in names if c in header), None)
        if v_col is not None:
            kind = k
            break
    if kind is None:
        raise BadInputError(f"meter log {path}: no power ({', '.join(POWER_COLUMNS)}) or energy "
                            f"({', '.join(ENERGY_COLUMNS)}) column in header {header}")
    times, values = [], []
    for i, row in enumerate(rows, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        try:
            times.append(_parse_time(row[t_col]))
            values.append(float(row[v_col]))
        except (ValueError, IndexError):
            raise BadInputError(f"meter log {path}, line {i}: cannot read time/{kind} from {row}") from None
    if len(times) < 2:
        raise BadInputError(f"meter log {path}: needs at least two samples, has {len(times)}")
    t, v = np.asarray(times), np.asarray(values)
    if np.any(np.diff(t) <= 0):
        raise BadInputError(f"meter log {path}: timestamps must strictly increase")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise BadInputError(f"meter log {path}: {kind} must be finite and >= 0")
    return t, v, kind


def window_energy(times: np.ndarray, values: np.ndarray, kind: str, t0: float, t1: float) -> float:
    """Joules in ``[t0, t1]`` from power samples (integrated) or a cumulative energy column (differenced)."""
    if times[0] > t0 or times[-1] < t1:
        raise ValueError(f"the log covers {times[0]:.3f}..{times[-1]:.3f} but the window is {t0:.3f}..{t1:.3f} "
                         "(Unix seconds): start the logger before the run, or set clock_offset_s")
    if kind == "watts":
        return integrate_power(times, values, t0, t1)
    return float(np.interp(t1, times, values) - np.interp(t0, times, values))


class CsvLogMeter(EnergyMeter):
    name = "csv"

    def __init__(self, path: Path | str, clock_offset_s: float = 0.0) -> None:
        self.path = Path(path)
        self.clock_offset_s = clock_offset_s
        self.window: tuple[float, float] | None = None
        self._t0 = 0.0

    def check(self) -> None:
        if not self.path.is_file():
            raise MeterUnavailableError(f"csv: meter log {self.path} does not exist")

    def start(self) -> None:
        self.check()
        self._t0 = time.time()

    def stop(self) -> EnergyReading:
        t1 = time.time()
        return self.reading(self._t0, t1)

    def reading(self, t0: float, t1: float) -> EnergyReading:
        """The log's energy over a window given in host Unix seconds."""
        self.window = (t0, t1)
        times, values, kind = read_meter_csv(self.path)
        times = times + self.clock_offset_s
        try:
            joules = window_energy(times, values, kind, t0, t1)
        except ValueError as exc:
            raise BadInputError(f"meter log {self.path}: {exc}") from None
        inside = int(np.sum((times >= t0) & (times <= t1)))
        period = float(np.median(np.diff(times)))
        return EnergyReading(self.name, joules, t1 - t0, period, inside,
                             {"log": str(self.path), "column": kind, "clock_offset_s": self.clock_offset_s})


METERS.add("csv", CsvLogMeter)
