"""Device profiles: one YAML per device in ``edgecompress.profiles``, each figure with its source.

A profile lists the processor, cores, clock, peak FP32 and INT8 throughput, memory bandwidth, idle
and load power, a TVM target (a JSON-dict target, as ``tvm.target.Target`` accepts) and the energy
meters the device offers. Every figure is a mapping ``{value, source, ref}`` where ``source`` is one
of ``SOURCES``: ``datasheet``, ``derived`` (computed from datasheet figures by the formula in
``ref``), ``published measurement``, ``measured`` (here), ``unverified`` or ``unknown``.

The host's own peak FP32 GFLOP/s and copy bandwidth are measured on first use (a float32 numpy matmul
and a large array copy, a few seconds) and cached in ``~/.cache/edgecompress/host.json`` (override the
folder with ``EDGECOMPRESS_CACHE``), keyed by CPU model and usable cores.

>>> p = load_profile("rpi4")
>>> p.value("cores"), p.figure("memory_bandwidth_gbs").source
(4, 'published measurement')
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgecompress.devices.host import cpu_model, usable_cores
from edgecompress.errors import BadInputError
from edgecompress.registry import Registry

SOURCES = ("datasheet", "derived", "published measurement", "measured", "unverified", "unknown")
FIGURES = ("processor", "cores", "clock_ghz", "peak_fp32_gflops", "peak_int8_gops", "memory_bandwidth_gbs",
           "idle_power_w", "load_power_w")
KINDS = ("cpu", "gpu")


@dataclass(frozen=True)
class Figure:
    """One figure of a profile and where it comes from."""

    value: Any
    source: str
    ref: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}: choose one of {', '.join(SOURCES)}")

    def as_dict(self) -> dict:
        return {"value": self.value, "source": self.source, "ref": self.ref}


@dataclass(frozen=True)
class DeviceProfile:
    """A device's figures (``figures[name] -> Figure``), TVM target and energy meters."""

    name: str
    description: str
    kind: str
    figures: Mapping[str, Figure]
    tvm_target: Mapping[str, Any]
    energy_meters: tuple[str, ...] = ()
    calibration: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: choose one of {', '.join(KINDS)}")
        if not isinstance(self.tvm_target, Mapping) or "kind" not in self.tvm_target:
            raise ValueError(f"tvm_target of {self.name!r} must be a JSON-dict target with a 'kind'")

    def figure(self, name: str) -> Figure:
        try:
            return self.figures[name]
        except KeyError:
            raise BadInputError(f"device {self.name!r} has no figure {name!r} "
                                f"(has: {', '.join(sorted(self.figures))})") from None

    def value(self, name: str) -> Any:
        return self.figure(name).value

    def require(self, name: str) -> float:
        """A numeric figure that must be known; raises naming the device and the figure otherwise."""
        v = self.value(name)
        if v is None:
            f = self.figure(name)
            raise BadInputError(f"device {self.name!r}: {name} is not known ({f.source}: {f.ref})")
        return float(v)

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "kind": self.kind,
                "figures": {k: f.as_dict() for k, f in self.figures.items()},
                "tvm_target": dict(self.tvm_target), "energy_meters": list(self.energy_meters),
                "calibration": dict(self.calibration)}


def parse_profile(data: Mapping[str, Any], origin: str = "<profile>") -> DeviceProfile:
    """A ``DeviceProfile`` from a YAML mapping; errors name ``origin`` and the field at fault."""
    if not isinstance(data, Mapping):
        raise BadInputError(f"{origin}: a profile must be a mapping")
    for key in ("name", "kind", "tvm_target"):
        if key not in data:
            raise BadInputError(f"{origin}: missing field {key!r}")
    figures = {}
    for key, raw in data.items():
        if key in ("name", "description", "kind", "tvm_target", "energy_meters", "calibration"):
            continue
        if not isinstance(raw, Mapping) or "source" not in raw or "value" not in raw:
            raise BadInputError(f"{origin}: figure {key!r} must be a mapping with 'value' and 'source'")
        try:
            figures[key] = Figure(raw["value"], raw["source"], str(raw.get("ref", "")))
        except ValueError as exc:
            raise BadInputError(f"{origin}: figure {key!r}: {exc}") from None
    derivable = {"load_power_w"} if "load_power_w_per_core" in figures else set()
    missing = [f for f in FIGURES if f not in figures and f not in derivable]
    if missing:
        raise BadInputError(f"{origin}: missing figure(s) {', '.join(missing)}")
    try:
        return DeviceProfile(str(data["name"]), str(data.get("description", "")), str(data["kind"]), figures,
                             dict(data["tvm_target"]), tuple(data.get("energy_meters") or ()),
                             dict(data.get("calibration") or {}))
    except ValueError as exc:
        raise BadInputError(f"{origin}: {exc}") from None


def _load_builtin() -> Registry[DeviceProfile]:
    registry: Registry[DeviceProfile] = Registry("device")
    for entry in sorted(resources.files("edgecompress.profiles").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            profile = parse_profile(yaml.safe_load(entry.read_text()), f"profiles/{entry.name}")
            registry.add(profile.name, profile)
    return registry


PROFILES: Registry[DeviceProfile] = _load_builtin()


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE") or Path.home() / ".cache" / "edgecompress")


def measure_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 matmul rate: ``2 n^3 / t`` over ``repeats`` runs of an ``n x n`` numpy matmul."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS threads start
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


def measure_copy_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Best copy bandwidth: bytes read + written (``2 x size``) / best time of ``np.copyto``."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up: pages faulted in
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2.0 * src.nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def host_measurements(refresh: bool = False, cache: Path | None = None, *, matmul_n: int = 1024,
                      copy_mib: int = 256) -> dict:
    """The host's measured peak and bandwidth, from the cache when it matches this CPU and core count."""
    path = (cache or cache_dir()) / "host.json"
    key = {"cpu": cpu_model(), "cores": usable_cores()}
    if not refresh and path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key and "peak_method" in cached:
                return cached
        except (OSError, json.JSONDecodeError):
            pass  # a corrupt cache is measured again
    data = {"key": key, "peak_fp32_gflops": measure_peak_gflops(matmul_n),
            "memory_bandwidth_gbs": measure_copy_gbs(copy_mib),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "peak_method": f"numpy {np.__version__} float32 matmul {matmul_n}^3, best of 5, 2n^3/t",
            "copy_method": f"numpy {np.__version__} np.copyto of {copy_mib} MiB, best of 5, 2 x bytes / t"}
    from edgecompress.fileio import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
    return data


def _clock_ghz() -> float | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return round(float(line.split(":", 1)[1]) / 1000.0, 3)
    except (OSError, ValueError):
        pass
    return None


def _complete_host(base: DeviceProfile, measured: dict | None) -> DeviceProfile:
    """The host profile with what this machine says; peak and bandwidth only when ``measured`` is given."""
    figures = dict(base.figures)
    cores = usable_cores()

    def set_(name: str, value: Any, ref: str | None = None) -> None:
        f = figures[name]
        figures[name] = replace(f, value=value, ref=ref or f.ref)

    set_("processor", cpu_model())
    set_("cores", cores)
    set_("clock_ghz", _clock_ghz())
    per_core = figures.get("load_power_w_per_core")
    if "load_power_w" not in figures and per_core is not None and per_core.value is not None:
        figures["load_power_w"] = Figure(round(per_core.value * cores, 3), "derived",
                                         f"{cores} usable cores x {per_core.value} W/core ({per_core.ref})")
    if measured is None:
        return replace(base, figures=figures)
    set_("peak_fp32_gflops", round(measured["peak_fp32_gflops"], 2),
         f"{measured['peak_method']} ({measured['measured_at']})")
    set_("memory_bandwidth_gbs", round(measured["memory_bandwidth_gbs"], 2),
         f"{measured['copy_method']} ({measured['measured_at']})")
    if figures["peak_int8_gops"].value is None:
        set_("peak_int8_gops", round(2 * measured["peak_fp32_gflops"], 2))
    return replace(base, figures=figures)


def load_profile(name: str, *, measure_host: bool = True, cache: Path | None = None) -> DeviceProfile:
    """The named profile (``BadInputError`` listing the known ones otherwise).

    ``host`` is completed with this machine's CPU, cores, clock and load power; with ``measure_host``
    also its peak GFLOP/s and copy bandwidth (measured on first use, then cached).
    """
    base = PROFILES.get(name)
    if name == "host":
        return _complete_host(base, host_measurements(cache=cache) if measure_host else None)
    return base


def profile_names() -> list[str]:
    return PROFILES.names()
