"""Intel/AMD RAPL through the Linux powercap sysfs counters.

Files (docs.kernel.org/power/powercap/powercap.html), one folder per zone under
``/sys/class/powercap``: ``intel-rapl:N`` (a package; AMD Zen exposes the same names) with
``name`` (``package-N``, ``psys``), ``energy_uj`` (cumulative microjoules) and ``max_energy_range_uj``
(where the counter wraps to 0); sub-zones ``intel-rapl:N:M`` (``core``, ``uncore``, ``dram``).

The window's energy is the sum over packages plus ``dram`` sub-zones (``core``/``uncore`` lie inside
the package and ``psys`` covers the platform, so adding them would double count; they are reported in
``detail``). A poller reads the counters every ``poll_s`` seconds so a wrap between the window's edges
is counted (``counter_delta`` allows one wrap per read; a 32-bit package counter wraps after minutes at
hundreds of watts). ``energy_uj`` is root-only since Linux 5.10 (the Platypus side channel): an
unreadable counter raises ``MeterUnavailableError`` saying so.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edgecompress.devices.energy.base import METERS, EnergyMeter, EnergyReading, MeterUnavailableError, counter_delta

POWERCAP = Path("/sys/class/powercap")


class RaplMeter(EnergyMeter):
    name = "rapl"

    def __init__(self, root: Path | str = POWERCAP, poll_s: float | None = 1.0) -> None:
        self.root = Path(root)
        self.poll_s = poll_s
        self.sampling_period_s = poll_s
        self._zones: list[tuple[str, Path, int]] = []
        self._last: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._reads = 0

    def zones(self) -> list[tuple[str, Path, int]]:
        """(label, energy_uj path, max range) for every zone; raises when none is readable."""
        if not self.root.is_dir():
            raise MeterUnavailableError(f"rapl: {self.root} does not exist (no powercap driver: not an Intel/AMD "
                                        "host, or a virtual machine that hides RAPL)")
        found = []
        for zone in sorted(self.root.glob("intel-rapl:*")):
            energy = zone / "energy_uj"
            if not energy.exists():
                continue
            try:
                name = (zone / "name").read_text().strip()
                max_range = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError) as exc:
                raise MeterUnavailableError(f"rapl: cannot read {zone}/name or max_energy_range_uj: {exc}") from None
            found.append((f"{zone.name}:{name}", energy, max_range))
        if not found:
            raise MeterUnavailableError(f"rapl: no intel-rapl zones under {self.root} (not an Intel/AMD host, or a "
                                        "virtual machine that hides RAPL)")
        for label, energy, _ in found:
            try:
                int(energy.read_text())
            except PermissionError:
                raise MeterUnavailableError(
                    f"rapl: {energy} is not readable by this user (root-only since Linux 5.10, the Platypus "
                    "side-channel fix): run as root, or grant read access with a udev rule or "
                    f"`sudo chmod o+r {self.root}/intel-rapl:*/energy_uj`") from None
            except (OSError, ValueError) as exc:
                raise MeterUnavailableError(f"rapl: cannot read {energy} ({label}): {exc}") from None
        return found

    def check(self) -> None:
        self.zones()

    @staticmethod
    def _counted(label: str) -> bool:
        """Zones summed into the window's total: packages and DRAM."""
        name = label.rsplit(":", 1)[-1]
        return name.startswith("package") or name == "dram"

    def _read_all(self) -> None:
        with self._lock:
            for label, path, max_range in self._zones:
                value = int(path.read_text())
                self._total[label] += counter_delta(self._last[label], value, max_range)
                self._last[label] = value
            self._reads += 1

    def _loop(self) -> None:
        while not self._stop_event.wait(self.poll_s):
            self._read_all()

    def start(self) -> None:
        self._zones = self.zones()
        self._last = {label: int(path.read_text()) for label, path, _ in self._zones}
        self._total = {label: 0 for label, _, _ in self._zones}
        self._reads = 1
        self._t0 = time.monotonic()
        if self.poll_s:
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._loop, name="rapl-poller", daemon=True)
            self._thread.start()

    def stop(self) -> EnergyReading:
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join()
            self._thread = None
        self._read_all()
        seconds = time.monotonic() - self._t0
        zone_j = {label: uj / 1e6 for label, uj in self._total.items()}
        joules = sum(j for label, j in zone_j.items() if self._counted(label))
        return EnergyReading(self.name, joules, seconds, self.sampling_period_s, self._reads,
                             {"zone_joules": zone_j, "summed": sorted(k for k in zone_j if self._counted(k))})


METERS.add("rapl", RaplMeter)
