"""Facts about the host this process runs on: CPU model, cores, OS, library versions."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity mask), not the machine's total.

    ``backend_tvm.configure_threads`` puts the affinity back after TVM pins the calling thread, so this
    stays right after a TVM engine is made.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def last_level_cache_mb() -> float | None:
    """The largest CPU cache the kernel reports (Linux sysfs, cpu0), in MB; ``None`` when not readable."""
    from pathlib import Path

    sizes = []
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (d / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1:])
        try:
            sizes.append(float(text[:-1]) * scale if scale else float(text) / 2**20)
        except ValueError:
            continue
    return max(sizes) if sizes else None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def host_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "last_level_cache_mb": last_level_cache_mb(),
    }
