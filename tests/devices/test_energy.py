"""Every energy meter against fixtures in its real format: sysfs trees, vcgencmd text, a meter CSV, fake NVML."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgecompress.devices.energy import (
    METERS,
    MeterUnavailableError,
    auto_meter,
    counter_delta,
    energy_per_inference,
    integrate_power,
    open_meter,
)
from edgecompress.devices.energy.csvlog import CsvLogMeter, read_meter_csv
from edgecompress.devices.energy.jetson import JetsonMeter
from edgecompress.devices.energy.nvml import NvmlMeter
from edgecompress.devices.energy.rapl import RaplMeter
from edgecompress.devices.energy.rpi5 import Rpi5PmicMeter, parse_pmic_adc, rail_watts
from edgecompress.errors import BadInputError

FIXTURES = Path(__file__).parent / "fixtures"


def test_registry_has_every_meter():
    assert METERS.names() == ["csv", "jetson", "nvml", "rapl", "rpi5"]
    with pytest.raises(BadInputError, match="unknown energy meter 'rapll'.*rapl"):
        open_meter("rapll")


def test_counter_delta_and_trapezoid():
    assert counter_delta(100, 250, 1000) == 150
    assert counter_delta(900, 50, 1000) == 150  # wrapped once
    # constant 3 W for 2 s, then samples clipped to the window by interpolation
    assert integrate_power([0, 1, 2], [3, 3, 3], 0, 2) == pytest.approx(6.0)
    assert integrate_power([0, 2], [0, 4], 0.5, 1.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="samples cover"):
        integrate_power([1, 2], [1, 1], 0, 2)


def _rapl_tree(root: Path, package_uj: int, dram_uj: int, max_uj: int = 1_000_000) -> None:
    pkg = root / "intel-rapl:0"
    (pkg / "intel-rapl:0:0").mkdir(parents=True, exist_ok=True)
    (pkg / "name").write_text("package-0\n")
    (pkg / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (pkg / "energy_uj").write_text(f"{package_uj}\n")
    dram = root / "intel-rapl:0:1"  # sysfs also lists sub-zones at the top level as links; a folder here
    dram.mkdir(exist_ok=True)
    (dram / "name").write_text("dram\n")
    (dram / "max_energy_range_uj").write_text("65532610987\n")
    (dram / "energy_uj").write_text(f"{dram_uj}\n")
    core = root / "intel-rapl:0:0"
    core.mkdir(exist_ok=True)
    (core / "name").write_text("core\n")
    (core / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (core / "energy_uj").write_text("5\n")


def test_rapl_counts_across_a_wrap(tmp_path):
    _rapl_tree(tmp_path, package_uj=999_000, dram_uj=10_000)
    meter = RaplMeter(tmp_path, poll_s=None)
    meter.start()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("500000\n")  # wrapped: +1000 + 500000 uJ
    (tmp_path / "intel-rapl:0:1" / "energy_uj").write_text("260000\n")  # +250000 uJ
    reading = meter.stop()
    zones = reading.detail["zone_joules"]
    assert zones["intel-rapl:0:package-0"] == pytest.approx(0.501)
    assert zones["intel-rapl:0:1:dram"] == pytest.approx(0.25)
    assert reading.joules == pytest.approx(0.751)  # package + dram; core lies inside the package


def test_rapl_poller_catches_two_wraps(tmp_path):
    _rapl_tree(tmp_path, package_uj=0, dram_uj=0, max_uj=1000)
    meter = RaplMeter(tmp_path, poll_s=None)
    meter.start()
    path = tmp_path / "intel-rapl:0" / "energy_uj"
    for value in (800, 200, 900, 100):  # what a poller sees: two wraps, 800+400+700+200 uJ
        path.write_text(f"{value}\n")
        meter._read_all()
    assert meter.stop().detail["zone_joules"]["intel-rapl:0:package-0"] == pytest.approx(2100e-6)


def test_rapl_absent_and_unreadable_say_why(tmp_path, monkeypatch):
    with pytest.raises(MeterUnavailableError, match="does not exist"):
        RaplMeter(tmp_path / "nope").check()
    _rapl_tree(tmp_path, 1, 1)
    real_read_text = Path.read_text

    def deny(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(MeterUnavailableError, match="not readable by this user.*root-only since Linux 5.10"):
        RaplMeter(tmp_path).check()


def test_rpi5_parses_every_rail_and_sums_v_times_i():
    text = (FIXTURES / "pmic_read_adc.txt").read_text()
    rails = parse_pmic_adc(text)
    assert len(rails) == 14  # 12 current/volt pairs + EXT5V and BATT (voltage only)
    assert rails["EXT5V"] == {"volt_v": pytest.approx(5.12112)}
    watts = rail_watts(rails)
    assert len(watts) == 12 and watts["VDD_CORE"] == pytest.approx(1.2)
    expected = sum(v["current_a"] * v["volt_v"] for v in rails.values() if len(v) == 2)
    meter = Rpi5PmicMeter(runner=lambda: text, period_s=0.01)
    total, per_rail = meter.read_watts()
    assert total == pytest.approx(expected) and 2.50 < total < 2.51  # hand sum of the fixture: 2.504 W
    calls, reading = meter.measure(lambda: time.sleep(0.005), min_seconds=0.1)
    assert reading.joules == pytest.approx(total * reading.seconds, rel=1e-6)
    assert reading.samples >= 3 and reading.sampling_period_s == 0.01
    assert reading.detail["rail_joules"]["VDD_CORE"] == pytest.approx(1.2 * reading.seconds, rel=1e-6)


def test_rpi5_bad_output_is_a_clear_error():
    meter = Rpi5PmicMeter(runner=lambda: 'error=1 error_msg="Command not registered"\n')
    with pytest.raises(MeterUnavailableError, match="cannot parse.*Command not registered"):
        meter.check()


def _jetson_hwmon(root: Path, mv_ma: dict[str, tuple[int, int]]) -> Path:
    hw = root / "ina3221" / "1-0040" / "hwmon" / "hwmon1"
    hw.mkdir(parents=True)
    for n, (label, (mv, ma)) in enumerate(mv_ma.items(), start=1):
        (hw / f"in{n}_label").write_text(label + "\n")
        (hw / f"in{n}_input").write_text(f"{mv}\n")
        (hw / f"curr{n}_input").write_text(f"{ma}\n")
    return hw


def test_jetson_hwmon_uses_the_input_rail(tmp_path):
    _jetson_hwmon(tmp_path, {"VDD_IN": (5000, 1200), "VDD_CPU_GPU_CV": (5000, 400), "VDD_SOC": (5000, 300)})
    meter = JetsonMeter(tmp_path, period_s=0.01)
    total, rails = meter.read_watts()
    assert total == pytest.approx(6.0) and rails["VDD_SOC"] == pytest.approx(1.5)
    _, reading = meter.measure(lambda: time.sleep(0.005), min_seconds=0.05)
    assert reading.watts == pytest.approx(6.0)


def test_jetson_iio_layout(tmp_path):
    iio = tmp_path / "ina3221x" / "6-0040" / "iio:device0"
    iio.mkdir(parents=True)
    for n, (name, mw) in enumerate([("GPU", 1500), ("CPU", 800), ("SOC", 700)]):
        (iio / f"rail_name_{n}").write_text(name + "\n")
        (iio / f"in_power{n}_input").write_text(f"{mw}\n")
    total, rails = JetsonMeter(tmp_path).read_watts()
    assert total == pytest.approx(3.0) and set(rails) == {"GPU", "CPU", "SOC"}  # no input rail: summed


def test_jetson_absent(tmp_path):
    with pytest.raises(MeterUnavailableError, match="no INA3221 rails"):
        JetsonMeter(tmp_path).check()


def test_csv_watts_and_joules_logs_aligned_to_the_window(tmp_path):
    watts = tmp_path / "fnb58.csv"
    watts.write_text("timestamp,watts\n" + "".join(f"{1000 + 0.5 * i},{4.0 + (i % 2)}\n" for i in range(21)))
    t, v, kind = read_meter_csv(watts)
    assert kind == "watts" and len(t) == 21
    r = CsvLogMeter(watts).reading(1002.0, 1006.0)  # 4 s of a 4/5 W square wave, trapezoid: 4.5 W
    assert r.joules == pytest.approx(18.0) and r.sampling_period_s == pytest.approx(0.5)
    joules = tmp_path / "plug.csv"
    joules.write_text("time,energy_j\n2026-11-28T12:00:00,100\n2026-11-28T12:00:10,150\n")
    t0 = read_meter_csv(joules)[0][0]
    assert CsvLogMeter(joules).reading(t0 + 2, t0 + 6).joules == pytest.approx(20.0)
    shifted = CsvLogMeter(joules, clock_offset_s=-100.0)
    with pytest.raises(BadInputError, match="covers .* but the window"):
        shifted.reading(t0 + 2, t0 + 6)


def test_csv_malformed_logs_name_the_fault(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,volts\n1,5\n2,5\n")
    with pytest.raises(BadInputError, match="no power .* or energy"):
        read_meter_csv(bad)
    bad.write_text("timestamp,watts\n1,5\n2,oops\n")
    with pytest.raises(BadInputError, match="line 3"):
        read_meter_csv(bad)
    bad.write_text("timestamp,watts\n2,5\n1,5\n")
    with pytest.raises(BadInputError, match="strictly increase"):
        read_meter_csv(bad)
    with pytest.raises(MeterUnavailableError, match="does not exist"):
        open_meter(f"csv:{tmp_path / 'missing.csv'}").check()


class FakeNvml:
    """The pynvml functions the meter calls, with an energy counter in mJ and power in mW."""

    def __init__(self, capability=(9, 0), energy=True, power_mw=250_000):
        self.capability, self.energy, self.power_mw = capability, energy, power_mw
        self.energy_mj = 1_000_000
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return SimpleNamespace(index=i)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self.capability

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise RuntimeError("NVMLError_NotSupported")
        self.energy_mj += 5000  # 5 J per read
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, h):
        return self.power_mw


def test_nvml_energy_counter_on_volta_and_newer():
    fake = FakeNvml()
    meter = NvmlMeter(nvml=fake)
    meter.start()
    reading = meter.stop()
    assert reading.joules == pytest.approx(5.0) and "total energy counter" in reading.detail["method"]
    assert fake.shutdowns == 1


def test_nvml_power_sampling_before_volta():
    fake = FakeNvml(capability=(6, 1), power_mw=100_000)
    meter = NvmlMeter(nvml=fake, period_s=0.01)
    _, reading = meter.measure(lambda: time.sleep(0.005), min_seconds=0.05)
    assert reading.watts == pytest.approx(100.0) and "power samples" in reading.detail["method"]
    assert reading.sampling_period_s == 0.01


def test_nvml_index_out_of_range():
    with pytest.raises(MeterUnavailableError, match="index 3"):
        NvmlMeter(index=3, nvml=FakeNvml()).check()


def test_energy_per_inference_keeps_idle_beside_it():
    fake = FakeNvml()
    meter = NvmlMeter(nvml=fake)
    meter.start()
    out = energy_per_inference(meter.stop(), inferences=10, idle_power_w=0.0)
    assert out["joules_per_inference"] == pytest.approx(0.5) and out["idle_power_w"] == 0.0
    assert out["source"] == "measured"


def test_auto_meter_says_why_each_was_not_used(tmp_path):
    meter, tried = auto_meter(["csv", "jetson"])
    assert meter is None
    assert [t["meter"] for t in tried] == ["csv", "jetson"] and "csv:FILE" in tried[0]["reason"]
