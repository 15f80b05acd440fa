"""What hardware is attached: the host CPU, NVIDIA GPUs (NVML), a Raspberry Pi, a Jetson.

- NVIDIA GPUs through NVML (``pynvml``, from the ``nvidia-ml-py`` package) when it is installed; when it
  is not, ``nvidia-smi`` is not consulted and no GPU is reported (the ``reason`` says why).
- A Raspberry Pi from the device-tree model string (``/proc/device-tree/model``, e.g.
  ``Raspberry Pi 5 Model B Rev 1.0``, NUL-terminated).
- A Jetson from ``/etc/nv_tegra_release`` (e.g. ``# R36 (release), REVISION: 3.0, ...``) plus the
  device-tree model for the module name.

Every path and the NVML module are parameters, so tests run against files in a temporary folder.

>>> [d.profile for d in detect_devices()]  # doctest: +SKIP
['host']
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

from edgecompress.devices.host import cpu_model, usable_cores

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


@dataclass(frozen=True)
class DetectedDevice:
    """An attached device and the profile it maps to (``None`` when no profile matches)."""

    kind: str  # cpu | gpu | board
    name: str
    profile: str | None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def detect_raspberry_pi(model_path: Path = DEVICE_TREE_MODEL) -> DetectedDevice | None:
    """A Raspberry Pi 4 or 5 from the device-tree model string."""
    model = _read_text(model_path)
    if not model or not model.startswith("Raspberry Pi"):
        return None
    profile = "rpi5" if model.startswith("Raspberry Pi 5") else "rpi4" if model.startswith("Raspberry Pi 4") else None
    return DetectedDevice("board", model, profile, {"model_path": str(model_path)})


def detect_jetson(release_path: Path = TEGRA_RELEASE, model_path: Path = DEVICE_TREE_MODEL) -> DetectedDevice | None:
    """A Jetson from its L4T release file; the Orin Nano maps to the ``jetson-orin-nano`` profile."""
    release = _read_text(release_path)
    if release is None:
        return None
    model = _read_text(model_path) or "NVIDIA Jetson (model unknown)"
    profile = "jetson-orin-nano" if "orin nano" in model.lower() else None
    return DetectedDevice("board", model, profile, {"l4t_release": release.splitlines()[0] if release else ""})


def load_nvml() -> ModuleType | None:
    """The ``pynvml`` module if installed, else ``None`` (no GPU reported)."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _gpu_profile(name: str) -> str | None:
    return "h200" if "H200" in name.upper() else None


def detect_nvidia(nvml: ModuleType | None = None) -> tuple[list[DetectedDevice], str]:
    """GPUs through NVML; returns (devices, reason) where ``reason`` says why none were found."""
    if nvml is None:
        return [], "NVML (pip install nvidia-ml-py) is not installed; no NVIDIA GPU detection"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return [], f"NVML could not start: {exc}"
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            details: dict = {"index": i}
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                details["compute_capability"] = f"{major}.{minor}"
            except Exception:  # noqa: BLE001 - older drivers lack the call; the name is enough
                pass
            gpus.append(DetectedDevice("gpu", name, _gpu_profile(name), details))
        return gpus, "" if gpus else "NVML reports no GPU"
    finally:
        nvml.nvmlShutdown()


def detect_devices(*, model_path: Path = DEVICE_TREE_MODEL, release_path: Path = TEGRA_RELEASE,
                   nvml: ModuleType | None | str = "auto") -> list[DetectedDevice]:
    """Every attached device: the host CPU first, then boards and GPUs."""
    found = [DetectedDevice("cpu", cpu_model(), "host", {"cores": usable_cores()})]
    for board in (detect_raspberry_pi(model_path), detect_jetson(release_path, model_path)):
        if board is not None:
            found.append(board)
    gpus, _ = detect_nvidia(load_nvml() if nvml == "auto" else nvml)
    return found + gpus


def attached_profiles(**kwargs) -> set[str]:
    """Names of the profiles whose device is attached here (always includes ``host``)."""
    return {d.profile for d in detect_devices(**kwargs) if d.profile}
